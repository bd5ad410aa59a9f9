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
