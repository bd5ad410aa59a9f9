"""RoPE: both layouts, the q/k permutation, transformers' rotary embedding, relative positions."""

import pytest
import torch

import llama_course as lc

SCALING = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
               original_max_position_embeddings=64)


def hf_cos_sin(head_dim, T, theta, scaling):
    import transformers  # the independent reference: a test extra, never skipped
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
    rope_scaling = None if scaling is None else {"rope_type": "llama3", **scaling}
    config = transformers.LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2,
                                      rope_theta=theta, rope_scaling=rope_scaling,
                                      max_position_embeddings=4 * T)
    rope = LlamaRotaryEmbedding(config)
    x = torch.zeros(1, T, head_dim)
    cos, sin = rope(x, torch.arange(T)[None])  # (1, T, head_dim)
    return cos[0], sin[0]


@pytest.mark.parametrize("scaling", [None, SCALING], ids=["llama3", "llama3.1-scaled"])
def test_tables_match_transformers(scaling):
    cos, sin = lc.precompute_cos_sin(32, 200, 500000.0, scaling)
    hf_cos, hf_sin = hf_cos_sin(32, 200, 500000.0, scaling)
    torch.testing.assert_close(cos, hf_cos, atol=1e-6, rtol=0)
    torch.testing.assert_close(sin, hf_sin, atol=1e-6, rtol=0)


def test_scaling_changes_only_low_frequencies():
    freqs = lc.rope.rope_frequencies(128, 500000.0)
    scaled = lc.apply_scaling(freqs, **{**SCALING, "original_max_position_embeddings": 8192})
    wavelen = 2 * torch.pi / freqs
    assert torch.equal(scaled[wavelen < 8192 / 4], freqs[wavelen < 8192 / 4])  # kept
    torch.testing.assert_close(scaled[wavelen > 8192], freqs[wavelen > 8192] / 8)  # slowed 8x
    mid = (wavelen >= 8192 / 4) & (wavelen <= 8192)
    assert mid.any() and (scaled[mid] < freqs[mid]).all() and (scaled[mid] > freqs[mid] / 8).all()


def test_rotate_half_matches_transformers_apply():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    q, k = torch.randn(2, 9, 4, 16), torch.randn(2, 9, 2, 16)  # (B, T, H, D)
    cos, sin = lc.precompute_cos_sin(16, 9, 10000.0)
    ours_q, ours_k = lc.apply_rotary_emb_rotate_half(q, k, cos, sin)
    hf_q, hf_k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos[None], sin[None])
    torch.testing.assert_close(ours_q, hf_q.transpose(1, 2))
    torch.testing.assert_close(ours_k, hf_k.transpose(1, 2))


@pytest.mark.parametrize("scaling", [None, SCALING])
def test_meta_and_hf_layouts_agree_after_permutation(scaling):
    n_heads, head_dim, dim, T = 4, 16, 32, 11
    x = torch.randn(2, T, dim)
    wq = torch.randn(n_heads * head_dim, dim)
    wk = torch.randn(n_heads * head_dim, dim)
    freqs_cis = lc.precompute_freqs_cis(head_dim, T, 10000.0, scaling)
    cos, sin = lc.precompute_cos_sin(head_dim, T, 10000.0, scaling)

    def project(w):
        return (x @ w.T).view(2, T, n_heads, head_dim)

    q_meta, k_meta = lc.apply_rotary_emb(project(wq), project(wk), freqs_cis)
    q_hf, k_hf = lc.apply_rotary_emb_rotate_half(
        project(lc.permute_qk_meta_to_hf(wq, n_heads)),
        project(lc.permute_qk_meta_to_hf(wk, n_heads)), cos, sin)
    # same vectors, dimensions reordered: (0,1),(2,3).. -> (0,D/2),(1,D/2+1)..
    order = torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))
    torch.testing.assert_close(q_hf, q_meta[..., order], atol=1e-5, rtol=1e-5)
    # and attention scores do not depend on the order at all
    scores_meta = torch.einsum("bthd,bshd->bhts", q_meta, k_meta)
    scores_hf = torch.einsum("bthd,bshd->bhts", q_hf, k_hf)
    torch.testing.assert_close(scores_hf, scores_meta, atol=1e-4, rtol=1e-5)


def test_permutations_are_inverse_and_not_identity():
    w = torch.randn(8 * 16, 40)
    p = lc.permute_qk_meta_to_hf(w, 8)
    assert not torch.equal(p, w)
    assert torch.equal(lc.permute_qk_hf_to_meta(p, 8), w)


def test_wrong_layout_gives_wrong_scores():
    """Loading HF weights without undoing the permutation: the classic silent bug."""
    head_dim, T = 16, 8
    x = torch.randn(1, T, 1, head_dim)
    freqs_cis = lc.precompute_freqs_cis(head_dim, T, 10000.0)
    cos, sin = lc.precompute_cos_sin(head_dim, T, 10000.0)
    meta, _ = lc.apply_rotary_emb(x, x, freqs_cis)
    confused, _ = lc.apply_rotary_emb_rotate_half(x, x, cos, sin)
    assert (meta - confused).abs().max() > 0.1


def test_score_depends_only_on_distance():
    head_dim, T = 32, 40
    q, k = torch.randn(head_dim), torch.randn(head_dim)
    freqs_cis = lc.precompute_freqs_cis(head_dim, T, 10000.0)

    def rotated(v, pos):
        v = v.view(1, 1, 1, head_dim)
        out, _ = lc.apply_rotary_emb(v, v, freqs_cis[pos:pos + 1])
        return out.flatten()

    for distance in (0, 3, 17):
        scores = torch.stack([rotated(q, m) @ rotated(k, m - distance)
                              for m in range(distance, T)])
        torch.testing.assert_close(scores, scores[:1].expand_as(scores), atol=1e-4, rtol=1e-4)
    assert not torch.isclose(rotated(q, 5) @ rotated(k, 5), rotated(q, 5) @ rotated(k, 2))


def test_rotation_preserves_norm():
    x = torch.randn(2, 10, 3, 8)
    out, _ = lc.apply_rotary_emb(x, x, lc.precompute_freqs_cis(8, 10, 10000.0))
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1))
