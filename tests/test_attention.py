"""Attention: repeat_kv, SDPA vs explicit path, MHA/GQA vs torch.nn.MultiheadAttention, masks."""

import math

import pytest
import torch

import llama_course as lc

from references import small_args


def test_repeat_kv_equals_repeat_interleave():
    x = torch.randn(2, 3, 5, 8)  # (B, n_kv_heads, S, D)
    for n_rep in (1, 2, 4):
        torch.testing.assert_close(lc.repeat_kv(x, n_rep), torch.repeat_interleave(x, n_rep, dim=1),
                                   atol=0, rtol=0)


def test_causal_mask_with_and_without_prefix():
    assert torch.equal(lc.causal_mask(3), torch.tril(torch.ones(3, 3, dtype=torch.bool)))
    m = lc.causal_mask(2, start_pos=3)  # queries at positions 3, 4; keys 0..4
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


@pytest.mark.parametrize("T, S", [(7, 7), (3, 10), (1, 6)])
def test_explicit_path_equals_sdpa(T, S):
    q, k, v = torch.randn(2, 4, T, 16), torch.randn(2, 4, S, 16), torch.randn(2, 4, S, 16)
    mask = lc.causal_mask(T, S - T) if T > 1 else None
    out, weights = lc.explicit_attention(q, k, v, mask)
    torch.testing.assert_close(out, lc.sdpa_attention(q, k, v, mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, T))
    if mask is not None:
        assert (weights[..., ~mask] == 0).all()  # no weight on the future


def identity_rope(T, head_dim):
    return torch.ones(T, head_dim // 2, dtype=torch.complex64)  # angle 0 everywhere


def reference_mha(attn: lc.Attention, x: torch.Tensor) -> torch.Tensor:
    """torch.nn.MultiheadAttention with the same weights; K/V heads repeated for GQA."""
    n_heads, head_dim, dim = attn.n_heads, attn.head_dim, x.shape[-1]
    wk = attn.wk.weight.view(attn.n_kv_heads, head_dim, dim)
    wv = attn.wv.weight.view(attn.n_kv_heads, head_dim, dim)
    wk = torch.repeat_interleave(wk, attn.n_rep, dim=0).reshape(n_heads * head_dim, dim)
    wv = torch.repeat_interleave(wv, attn.n_rep, dim=0).reshape(n_heads * head_dim, dim)
    mha = torch.nn.MultiheadAttention(dim, n_heads, bias=False, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([attn.wq.weight, wk, wv]))
        mha.out_proj.weight.copy_(attn.wo.weight)
    T = x.shape[1]
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)  # True = blocked
    out, _ = mha(x, x, x, attn_mask=future, need_weights=False)
    return out


@pytest.mark.parametrize("n_heads, n_kv_heads", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_attention_equals_torch_multihead_attention(n_heads, n_kv_heads):
    args = small_args(n_heads=n_heads, n_kv_heads=n_kv_heads)
    attn = lc.Attention(args)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(2, 9, args.dim)
    out = attn(x, 0, identity_rope(9, args.head_dim), lc.causal_mask(9))
    torch.testing.assert_close(out, reference_mha(attn, x), atol=1e-5, rtol=1e-4)


def test_attention_without_mask_sees_the_future():
    """Forgetting the causal mask when a prompt is processed at once changes early positions."""
    args = small_args()
    attn = lc.Attention(args)
    x = torch.randn(1, 6, args.dim)
    rope = lc.precompute_freqs_cis(args.head_dim, 6, args.rope_theta)
    with_mask = attn(x, 0, rope, lc.causal_mask(6))
    without = attn(x, 0, rope, None)
    assert not torch.allclose(with_mask[:, 0], without[:, 0], atol=1e-4)
    torch.testing.assert_close(with_mask[:, -1], without[:, -1])  # the last token sees all anyway


def test_kv_cache_update_and_overflow():
    cache = lc.KVCache(batch_size=2, max_seq_len=5, n_kv_heads=1, head_dim=4)
    k1, v1 = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4)
    keys, values = cache.update(0, k1, v1)
    assert keys.shape == (2, 1, 3, 4) and torch.equal(keys, k1) and torch.equal(values, v1)
    k2 = torch.randn(2, 1, 1, 4)
    keys, _ = cache.update(3, k2, k2)
    assert keys.shape == (2, 1, 4, 4) and torch.equal(keys[:, :, 3:], k2)
    with pytest.raises(ValueError, match=r"KV cache overflow: positions up to 6 .* max_seq_len \(5\)"):
        cache.update(4, k1[:, :, :2], k1[:, :, :2])


def test_explicit_scores_formula():
    q, k, v = torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4)
    _, w = lc.explicit_attention(q, k, v, None)
    s = (q[0, 0] @ k[0, 0].T) / math.sqrt(4)
    torch.testing.assert_close(w[0, 0], torch.softmax(s, -1))


def test_a_given_mask_is_honoured_at_equal_lengths():
    """A padding mask with as many queries as keys is applied as given, never replaced by
    the causal triangle (is_causal is used only for mask="causal")."""
    T = 6
    q, k, v = torch.randn(2, 4, T, 16), torch.randn(2, 4, T, 16), torch.randn(2, 4, T, 16)
    padding = torch.ones(T, T, dtype=torch.bool)
    padding[:, :2] = False  # the first two keys are padding: nobody looks at them
    padding[:2, 0] = True  # ...except the padding queries, so that no row is empty
    want, _ = lc.explicit_attention(q, k, v, padding)
    torch.testing.assert_close(lc.sdpa_attention(q, k, v, padding), want, atol=1e-5, rtol=1e-5)
    causal, _ = lc.explicit_attention(q, k, v, lc.causal_mask(T))
    torch.testing.assert_close(lc.sdpa_attention(q, k, v, "causal"), causal, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(want, causal, atol=1e-3)


def test_causal_request_is_checked():
    q, k = torch.randn(1, 1, 2, 8), torch.randn(1, 1, 5, 8)
    with pytest.raises(ValueError, match=r'needs as many queries as keys \(got 2 and 5\)'):
        lc.sdpa_attention(q, k, k, "causal")
    with pytest.raises(ValueError, match="got 'triangle'"):
        lc.sdpa_attention(q, k, k, "triangle")
