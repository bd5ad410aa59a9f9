"""ModelArgs: Llama 3 8B defaults, validation, presets and size arithmetic vs published counts."""

import pytest
import torch

import llama_course as lc

from references import small_args


def test_defaults_are_llama3_8b():
    a = lc.ModelArgs()
    assert (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.vocab_size) == (4096, 32, 32, 8, 128256)
    assert (a.multiple_of, a.ffn_dim_multiplier, a.norm_eps, a.rope_theta) == (1024, 1.3, 1e-5, 500000.0)
    assert a.head_dim == 128 and a.n_rep == 4 and a.ffn_hidden_dim == 14336


def test_ffn_rule_matches_real_models():
    assert lc.ffn_hidden_dim(4096, 1024, 1.3) == 14336  # Llama 3 8B
    assert lc.ffn_hidden_dim(2048, 256, 1.5) == 8192  # Llama 3.2 1B
    assert lc.ffn_hidden_dim(3072, 256, 1.0) == 8192  # Llama 3.2 3B
    assert lc.ffn_hidden_dim(4096, 256, None) == 11008  # Llama 2 7B
    assert lc.get_preset("llama3.2-1b").ffn_hidden_dim == 8192
    assert small_args(hidden_dim=100).ffn_hidden_dim == 100  # explicit override wins


@pytest.mark.parametrize("name, published", [
    ("llama3-8b", 8_030_261_248),
    ("llama3.1-8b", 8_030_261_248),
    ("llama3.2-1b", 1_235_814_400),  # tied embeddings
    ("llama3.2-3b", 3_212_749_824),  # tied embeddings
])
def test_preset_parameter_counts(name, published):
    args = lc.get_preset(name)
    assert lc.num_parameters(args) == published
    # the module built on the meta device (no memory) holds exactly that many parameters
    with torch.device("meta"):
        model = lc.Transformer(args)
    assert model.num_parameters() == published


@pytest.mark.parametrize("name", ["llama3-8b", "llama3.2-1b"])
def test_parameter_count_matches_transformers(name):
    import transformers  # the independent reference: a test extra, never skipped
    a = lc.get_preset(name)
    config = transformers.LlamaConfig(
        hidden_size=a.dim, intermediate_size=a.ffn_hidden_dim, num_hidden_layers=a.n_layers,
        num_attention_heads=a.n_heads, num_key_value_heads=a.kv_heads, vocab_size=a.vocab_size,
        tie_word_embeddings=a.tie_word_embeddings)
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(config)
    n_hf = sum(p.numel() for p in hf.parameters())
    assert lc.num_parameters(a) == n_hf


@pytest.mark.parametrize("overrides", [{}, dict(tie_word_embeddings=True), dict(n_kv_heads=None),
                                       dict(hidden_dim=100)])
def test_breakdown_matches_module(overrides):
    args = small_args(**overrides)
    model = lc.Transformer(args)
    breakdown = lc.parameter_breakdown(args)
    assert breakdown["total"] == model.num_parameters()
    ffn = sum(p.numel() for n, p in model.named_parameters() if "feed_forward" in n)
    attn = sum(p.numel() for n, p in model.named_parameters() if ".attention." in n)
    assert (breakdown["feed_forward"], breakdown["attention"]) == (ffn, attn)


def test_memory_arithmetic():
    a = lc.ModelArgs()
    # 2 (K and V) * 32 layers * 8 KV heads * 128 dims * 2 bytes = 128 KiB per token in bf16
    assert lc.kv_cache_bytes_per_token(a, torch.bfloat16) == 131072
    assert lc.kv_cache_bytes(a, seq_len=8192, batch_size=1) == 8192 * 131072  # 1 GiB
    assert lc.kv_cache_bytes(a, 1000, 2, "fp32") == 2 * 1000 * 2 * 131072
    assert lc.weight_bytes(a, torch.bfloat16) == 2 * 8_030_261_248
    assert lc.weight_bytes(a, "fp32") == 4 * 8_030_261_248
    mha = a.replace(n_kv_heads=32)
    assert lc.kv_cache_bytes_per_token(mha) == 4 * lc.kv_cache_bytes_per_token(a)


@pytest.mark.parametrize("overrides, message", [
    (dict(dim=100, n_heads=3), r"dim \(100\) must be divisible by n_heads \(3\)"),
    (dict(n_heads=6, n_kv_heads=4, dim=96), r"n_heads \(6\) must be divisible by n_kv_heads \(4\)"),
    (dict(dim=60, n_heads=4), r"head_dim .*15.* must be even"),
    (dict(vocab_size=-1), r"vocab_size \(-1\) is not set"),
    (dict(vocab_size=None), r"vocab_size \(None\) is not set"),
    (dict(dim=0), r"dim \(0\) must be positive"),
    (dict(n_layers=-2), r"n_layers \(-2\) must be positive"),
    (dict(n_kv_heads=0), r"n_kv_heads \(0\) must be positive"),
    (dict(max_seq_len=0), r"max_seq_len \(0\) must be positive"),
    (dict(hidden_dim=0), r"hidden_dim \(0\) must be positive"),
    (dict(dim=64.0), r"dim \(64.0\) must be an integer"),
    (dict(norm_eps=0), r"norm_eps \(0\) must be positive"),
    (dict(rope_theta=-1.0), r"rope_theta \(-1.0\) must be positive"),
    (dict(ffn_dim_multiplier=0.0), r"ffn_dim_multiplier \(0.0\) must be positive"),
    (dict(rope_scaling={"factor": 8.0}), r"rope_scaling is missing low_freq_factor"),
    (dict(rope_scaling={"rope_type": "yarn"}), r"rope_scaling type 'yarn' is not supported"),
    (dict(tie_word_embeddings="yes"), r"tie_word_embeddings .* must be True or False"),
    (dict(dropout=1.0), r"dropout \(1.0\) must be in \[0, 1\)"),
])
def test_validation_errors_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        small_args(**overrides)


def test_from_dict_round_trip_and_unknown_keys():
    a = lc.get_preset("llama3.2-1b")
    assert lc.ModelArgs.from_dict(a.to_dict()) == a
    with pytest.raises(ValueError, match="unknown ModelArgs field.*n_layer"):
        lc.ModelArgs.from_dict({"n_layer": 2})
    with pytest.raises(ValueError, match="unknown preset 'gpt2'"):
        lc.get_preset("gpt2")
