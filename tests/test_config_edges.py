"""ModelArgs and the size arithmetic at their edges: every dtype name, every error message in
full, the breakdown's keys, RoPE scaling's accepted spellings. Public API only."""

import pytest
import torch

import llama_course as lc

from references import small_args

TINY = lc.get_preset("tiny")


@pytest.mark.parametrize("name, size", [
    ("fp32", 4), ("float32", 4), ("fp16", 2), ("float16", 2), ("bf16", 2), ("bfloat16", 2),
    ("int8", 1), ("fp8", 1), ("int4", 0.5),
    (torch.float32, 4), (torch.bfloat16, 2), (torch.float16, 2), (torch.int8, 1),
])
def test_every_dtype_name(name, size):
    n = lc.num_parameters(TINY)
    assert lc.weight_bytes(TINY, name) == n * size
    per_token = 2 * TINY.n_layers * TINY.kv_heads * TINY.head_dim * size
    assert lc.kv_cache_bytes_per_token(TINY, name) == per_token
    assert lc.kv_cache_bytes(TINY, dtype=name) == per_token * TINY.max_seq_len
    assert lc.kv_cache_bytes(TINY, 10, 3, name) == per_token * 30


def test_unknown_dtype_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown dtype 'fp64'; use a torch.dtype or one of "
                                         r"\['bf16', 'bfloat16', 'float16'"):
        lc.weight_bytes(TINY, "fp64")


def test_breakdown_keys_and_sum():
    b = lc.parameter_breakdown(small_args())
    assert list(b) == ["tok_embeddings", "attention", "feed_forward", "norms", "output", "total"]
    model = lc.Transformer(small_args())
    assert b["tok_embeddings"] == model.tok_embeddings.weight.numel()
    assert b["output"] == model.output.weight.numel()
    assert b["norms"] == sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    tied = lc.parameter_breakdown(small_args(tie_word_embeddings=True))
    assert tied["output"] == 0 and tied["total"] == b["total"] - b["output"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(vocab_size=-1), r"vocab_size \(-1\) is not set: Meta's -1 means 'take it from the "
                          r"tokenizer', so pass vocab_size=tokenizer.vocab_size$"),
    (dict(dim=1), r"^dim \(1\) must be divisible"),
    (dict(n_layers=1.0), r"^n_layers \(1.0\) must be an integer$"),
    (dict(n_layers=0), r"^n_layers \(0\) must be positive$"),
    (dict(norm_eps="1e-5"), r"^norm_eps \('1e-5'\) must be a number$"),
    (dict(norm_eps=True), r"^norm_eps \(True\) must be a number$"),
    (dict(rope_theta=0.0), r"^rope_theta \(0.0\) must be positive$"),
    (dict(dropout=True), r"^dropout \(True\) must be in \[0, 1\)$"),
    (dict(dropout="0.1"), r"^dropout \('0.1'\) must be in \[0, 1\)$"),
    (dict(dim=40, n_heads=8), r"must be even: RoPE rotates pairs of dimensions$"),
    (dict(rope_scaling=[8.0]), r"^rope_scaling \(\[8.0\]\) must be a dict or None$"),
    (dict(rope_scaling={"type": "yarn", "factor": 8.0}), r"rope_scaling type 'yarn'"),
    (dict(rope_scaling={"factor": 8.0, "low_freq_factor": 1.0}),
     r"^rope_scaling is missing high_freq_factor, original_max_position_embeddings$"),
    (dict(rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 0}),
     r"^rope_scaling\['original_max_position_embeddings'\] \(0\) must be positive$"),
    (dict(rope_scaling={"factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 64}),
     r"^rope_scaling\['high_freq_factor'\] \(4.0\) must be larger than "
     r"rope_scaling\['low_freq_factor'\] \(4.0\)$"),
])
def test_error_messages_in_full(kwargs, message):
    with pytest.raises(ValueError, match=message):
        small_args(**kwargs)


def test_smallest_valid_values():
    a = small_args(n_layers=1, max_batch_size=1, norm_eps=1e-12, multiple_of=1, dropout=0.0)
    assert a.n_layers == 1 and a.norm_eps == 1e-12
    assert small_args(ffn_dim_multiplier=0.5).ffn_dim_multiplier == 0.5
    assert small_args(rope_theta=1).rope_theta == 1


def test_rope_scaling_spellings():
    base = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}
    for extra in ({}, {"rope_type": "llama3"}, {"type": "llama3"}):
        assert small_args(rope_scaling={**base, **extra}).rope_scaling == base
    with pytest.raises(ValueError, match="rope_scaling type 'dynamic'"):
        small_args(rope_scaling={**base, "type": "dynamic"})


def test_unknown_fields_and_presets_are_listed():
    with pytest.raises(ValueError, match=r"^unknown ModelArgs field\(s\): dimm, n_layer$"):
        lc.ModelArgs.from_dict({**small_args().to_dict(), "dimm": 1, "n_layer": 2})
    with pytest.raises(ValueError, match=r"unknown preset 'x'; choose one of: llama3-8b, "
                                         r"llama3.1-8b, "):
        lc.get_preset("x")
