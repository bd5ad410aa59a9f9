"""RoPE at its edges: Llama 3's defaults, Llama 3.1 scaling with non-default band factors
(against transformers), the shape error. Public API only."""

import math

import pytest
import torch

import llama_course as lc


def hf_llama3_inv_freq(head_dim, theta, scaling):
    """transformers' Llama 3.1 frequencies: the independent reference."""
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    config = transformers.LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2,
                                      rope_theta=theta,
                                      rope_scaling={"rope_type": "llama3", **scaling},
                                      max_position_embeddings=4 * scaling[
                                          "original_max_position_embeddings"])
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    return inv_freq


def test_defaults_are_llama3s():
    """theta 500,000; scaling factor 8, band 1..4, original context 8192 (Llama 3.1)."""
    dim, end = 16, 5
    freqs = 1.0 / 500000.0 ** (torch.arange(0, dim, 2).float() / dim)
    angles = torch.outer(torch.arange(end).float(), freqs)
    torch.testing.assert_close(lc.precompute_freqs_cis(dim, end), torch.polar(
        torch.ones_like(angles), angles))
    cos, sin = lc.precompute_cos_sin(dim, end)
    torch.testing.assert_close(cos, torch.cat([angles, angles], -1).cos())
    torch.testing.assert_close(sin, torch.cat([angles, angles], -1).sin())
    wide = 1.0 / 500000.0 ** (torch.arange(0, 128, 2).float() / 128)
    torch.testing.assert_close(lc.apply_scaling(wide), lc.apply_scaling(
        wide, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=8192), atol=0, rtol=0)
    ref = hf_llama3_inv_freq(128, 500000.0, dict(factor=8.0, low_freq_factor=1.0,
                                                 high_freq_factor=4.0,
                                                 original_max_position_embeddings=8192))
    torch.testing.assert_close(lc.apply_scaling(wide), ref.float())


@pytest.mark.parametrize("scaling", [
    dict(factor=4.0, low_freq_factor=2.0, high_freq_factor=8.0,
         original_max_position_embeddings=1024),
    dict(factor=32.0, low_freq_factor=0.5, high_freq_factor=3.0,
         original_max_position_embeddings=4096),
])
def test_scaling_bands_match_transformers(scaling):
    base = 1.0 / 500000.0 ** (torch.arange(0, 128, 2).float() / 128)
    ref = hf_llama3_inv_freq(128, 500000.0, scaling)
    torch.testing.assert_close(lc.apply_scaling(base, **scaling), ref.float())
    wavelen = 2 * math.pi / base
    old = scaling["original_max_position_embeddings"]
    band = (wavelen > old / scaling["high_freq_factor"]) & (wavelen < old / scaling[
        "low_freq_factor"])
    assert band.sum() >= 3  # the blend is exercised, not just the two plateaus


def test_wrong_table_length_is_named():
    xq, xk = torch.randn(2, 6, 3, 8), torch.randn(2, 6, 1, 8)
    freqs = lc.precompute_freqs_cis(8, 5)
    with pytest.raises(ValueError, match=r"^freqs_cis has shape \(5, 4\), expected \(6, 4\) "
                                         r"for x of shape \(2, 6, 3, 4\)$"):
        lc.apply_rotary_emb(xq, xk, freqs)


def test_theta_defaults_to_500000_everywhere():
    """Llama 3's base: the default of every table builder is exactly theta=500,000."""
    from llama_course.rope import rope_frequencies
    torch.testing.assert_close(rope_frequencies(64), rope_frequencies(64, 500000.0),
                               atol=0, rtol=0)
    torch.testing.assert_close(lc.precompute_freqs_cis(64, 9),
                               lc.precompute_freqs_cis(64, 9, 500000.0), atol=0, rtol=0)
    for got, want in zip(lc.precompute_cos_sin(64, 9), lc.precompute_cos_sin(64, 9, 500000.0)):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def meta_apply_scaling(freqs, factor, low_freq_factor, high_freq_factor, old_context_len):
    """llama/model.py's apply_scaling (Llama 3.1), one frequency at a time: the reference."""
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    new_freqs = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            new_freqs.append(freq)
        elif wavelen > low_freq_wavelen:
            new_freqs.append(freq / factor)
        else:
            smooth = (old_context_len / wavelen - low_freq_factor) / (
                high_freq_factor - low_freq_factor)
            new_freqs.append((1 - smooth) * freq / factor + smooth * freq)
    return torch.tensor(new_freqs, dtype=freqs.dtype)


@pytest.mark.parametrize("low, high", [(3.0, 7.0), (7.0, 8.0)])
def test_scaling_at_the_exact_band_edges_follows_metas_rule(low, high):
    """A wavelength exactly at a band edge belongs to the blend (Meta's and transformers'
    strict `<` and `>`); in float32 the blend there is not exactly a plateau's value."""
    edge = torch.tensor([0.04398229718208313, 0.04398229345679283])  # wavelength 1000 / 7
    wavelen = 2 * math.pi / edge
    assert (wavelen == torch.tensor(1000 / 7, dtype=torch.float32)).any()  # on the edge
    freqs = torch.cat([edge, 1.0 / 10000.0 ** (torch.arange(0, 64, 2).float() / 64)])
    got = lc.apply_scaling(freqs, factor=8.0, low_freq_factor=low, high_freq_factor=high,
                           original_max_position_embeddings=1000)
    want = meta_apply_scaling(freqs, 8.0, low, high, 1000)
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_reshape_for_broadcast_gives_metas_shape():
    """(T, D/2) -> (1, T, 1, D/2), as in llama/model.py, for x (B, T, heads, D/2)."""
    from llama_course.rope import reshape_for_broadcast
    freqs = lc.precompute_freqs_cis(8, 5)
    out = reshape_for_broadcast(freqs, torch.zeros(2, 5, 3, 4, dtype=torch.complex64))
    assert out.shape == (1, 5, 1, 4) and torch.equal(out[0, :, 0], freqs)
