"""Checkpoint conversion at its edges: the params.json written for a model read from a Hugging
Face config (every FFN width, the simplest multiple_of/ffn_dim_multiplier, every field back),
params.json's own settings read back, a config.json whose head count does not divide the width,
an old-style unsupported RoPE type, and state dicts whose order or tied head is unusual.

Meta's FFN rule is written out here (from llama/model.py's FeedForward) independently of the
package's `ffn_hidden_dim`, so a params.json is judged by what Meta's code would build from it.
"""

from __future__ import annotations

import re

import pytest
import torch

import llama_course as lc
from llama_course.convert import args_to_meta_params  # not in lc's top level

from references import small_args

POWERS_OF_TWO = [2 ** k for k in range(11)]  # 1 .. 1024


def meta_rule(dim: int, multiple_of: int, ffn_dim_multiplier) -> int:
    """Meta's FeedForward width: 4*dim, 2/3 of it, times the multiplier, round up."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def hf_args(dim: int, hidden_dim: int, **extra) -> lc.ModelArgs:
    """A model as read from a config.json: it knows its FFN width, not Meta's two fields."""
    return lc.ModelArgs(dim=dim, n_layers=1, n_heads=dim // 16, n_kv_heads=dim // 16,
                        vocab_size=97, hidden_dim=hidden_dim, **extra)


# widths Meta's rule gives with and without a multiplier, odd widths (only multiple_of=1
# reaches them), and widths whose multiplier needs 4 decimals (10923) or more (10929)
WIDTHS = sorted({(dim, meta_rule(dim, m, mult)) for dim in (64, 4096)
                 for m in (1, 8, 256, 1024) for mult in (None, 0.75, 1.3, 1.5)}
                | {(64, 171), (64, 173), (4096, 10923), (4096, 10929), (4096, 10931)})


@pytest.mark.parametrize("dim, width", WIDTHS)
def test_params_json_reproduces_every_ffn_width(dim, width):
    params = args_to_meta_params(hf_args(dim, width))
    assert meta_rule(dim, params["multiple_of"], params["ffn_dim_multiplier"]) == width
    assert lc.args_from_meta_params(params).ffn_hidden_dim == width


def test_params_json_picks_the_simplest_pair():
    # no multiplier when the rule reaches the width without one, and the largest multiple_of
    for dim in (64, 96, 2048, 3072, 4096):
        for m in POWERS_OF_TWO:
            width = meta_rule(dim, m, None)
            params = args_to_meta_params(hf_args(dim, width))
            largest = max(k for k in POWERS_OF_TWO if meta_rule(dim, k, None) == width)
            assert (params["multiple_of"], params["ffn_dim_multiplier"]) == (largest, None), \
                (dim, width)
    # Llama 3 8B / 70B and 3.2 1B (config.json's intermediate_size): a 2-decimal multiplier
    for dim, width in ((4096, 14336), (8192, 28672), (2048, 8192)):
        mult = args_to_meta_params(hf_args(dim, width))["ffn_dim_multiplier"]
        assert mult is not None and round(mult, 2) == mult
        assert abs(mult - width / int(8 * dim / 3)) < 0.01
    # 2 decimals are too coarse for 10923 = rule(4096, 1, m): 4 decimals, not more
    mult = args_to_meta_params(hf_args(4096, 10923))["ffn_dim_multiplier"]
    assert round(mult, 4) == mult and round(mult, 2) != mult


def test_params_json_carries_every_field_back():
    scaling = dict(factor=16.0, low_freq_factor=1.0, high_freq_factor=2.0,
                   original_max_position_embeddings=8192)
    args = small_args(norm_eps=1e-6, max_seq_len=1000, rope_theta=123.0, rope_scaling=scaling,
                      n_heads=4, n_kv_heads=2)
    params = args_to_meta_params(args)
    assert set(params) == {"dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size",
                           "multiple_of", "ffn_dim_multiplier", "norm_eps", "rope_theta",
                           "use_scaled_rope", "max_seq_len", "rope_scaling_factor",
                           "rope_high_freq_factor"}
    back = lc.args_from_meta_params(params)
    for field in ("dim", "n_layers", "n_heads", "kv_heads", "vocab_size", "norm_eps",
                  "rope_theta", "rope_scaling", "max_seq_len", "ffn_hidden_dim"):
        assert getattr(back, field) == getattr(args, field), field


def test_params_json_refuses_scaling_meta_cannot_express():
    s = dict(factor=8.0, low_freq_factor=2.0, high_freq_factor=4.0,
             original_max_position_embeddings=8192)
    message = (f"rope_scaling {s} cannot be written to params.json: Meta's code fixes "
               "low_freq_factor=1 and original_max_position_embeddings=8192")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        args_to_meta_params(small_args(rope_scaling=s))


def test_params_json_norm_eps_is_read():
    a = lc.args_from_meta_params({"dim": 64, "n_layers": 1, "n_heads": 4, "norm_eps": 1e-6},
                                 vocab_size=97)
    assert a.norm_eps == 1e-6


def test_hf_config_head_count_must_divide_the_width():
    config = {"model_type": "llama", "hidden_size": 66, "num_hidden_layers": 1,
              "num_attention_heads": 4, "vocab_size": 97, "intermediate_size": 96}
    with pytest.raises(ValueError, match=r"^head_dim \(16\) \* num_attention_heads \(4\) != "
                                         r"hidden_size \(66\) is not supported$"):
        lc.args_from_hf_config(config)


def test_hf_config_old_type_spelling_of_an_unsupported_rope_is_refused():
    config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 4, "vocab_size": 97, "intermediate_size": 96,
              "rope_scaling": {"type": "linear", "factor": 2.0}}
    with pytest.raises(ValueError, match=r"rope_scaling type 'linear' is not supported"):
        lc.args_from_hf_config(config)


def test_a_rope_buffer_in_the_middle_of_a_checkpoint_skips_only_itself():
    args = small_args(n_heads=4, n_kv_heads=2)
    sd = lc.Transformer(args).state_dict()
    hf = lc.meta_to_hf_state_dict(sd, args)
    # old checkpoints store the buffer inside each layer, between attention and MLP tensors
    names = list(hf)
    cut = names.index("model.layers.0.self_attn.o_proj.weight") + 1
    buffer = {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}
    mixed = {**{n: hf[n] for n in names[:cut]}, **buffer, **{n: hf[n] for n in names[cut:]}}
    back = lc.hf_to_meta_state_dict(mixed, args)
    assert set(back) == set(sd)


def test_a_tied_checkpoint_that_carries_its_head_keeps_it():
    args = small_args(tie_word_embeddings=True)
    hf = lc.meta_to_hf_state_dict(lc.Transformer(args).state_dict(), args)
    hf["lm_head.weight"] = torch.randn_like(hf["model.embed_tokens.weight"])
    back = lc.hf_to_meta_state_dict(hf, args)
    assert torch.equal(back["output.weight"], hf["lm_head.weight"])
