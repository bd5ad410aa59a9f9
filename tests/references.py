"""Shared by the tests: small configs, and a Hugging Face reference model on the same weights.

(A module of its own, not conftest.py: notebooks/ has a conftest.py too, and two modules named
`conftest` cannot both be imported by name.)
"""

from __future__ import annotations

import llama_course as lc


def small_args(**overrides) -> lc.ModelArgs:
    """A model small enough to run in milliseconds, with every Llama feature switched on."""
    base = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=32,
                ffn_dim_multiplier=None, norm_eps=1e-5, rope_theta=10000.0, max_batch_size=8,
                max_seq_len=64)
    return lc.ModelArgs(**{**base, **overrides})


# multi-head, grouped-query, multi-query, tied embeddings, Llama 3.1 RoPE scaling, odd FFN size
CONFIGS = {
    "mha": dict(n_heads=4, n_kv_heads=4),
    "gqa": dict(n_heads=8, n_kv_heads=2),
    "mqa": dict(n_heads=4, n_kv_heads=1),
    "tied": dict(tie_word_embeddings=True),
    "rope_scaling": dict(rope_theta=500000.0, max_seq_len=64,
                         rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                           original_max_position_embeddings=32)),
    "odd_ffn": dict(hidden_dim=100, n_layers=3),
}


def hf_reference(model: lc.Transformer):
    """transformers' LlamaForCausalLM holding `model`'s weights (eager attention, fp32).

    The config is written out field by field here rather than through the package's own
    conversion, so that the reference stays independent of the code under test.
    """
    import transformers  # the independent reference: a test extra, never skipped
    a = model.params
    rope_scaling = None
    if a.rope_scaling is not None:
        rope_scaling = {"rope_type": "llama3", **a.rope_scaling}
    config = transformers.LlamaConfig(
        hidden_size=a.dim, intermediate_size=a.ffn_hidden_dim, num_hidden_layers=a.n_layers,
        num_attention_heads=a.n_heads, num_key_value_heads=a.kv_heads, vocab_size=a.vocab_size,
        rms_norm_eps=a.norm_eps, rope_theta=a.rope_theta, rope_scaling=rope_scaling,
        max_position_embeddings=max(a.max_seq_len, 64), tie_word_embeddings=a.tie_word_embeddings,
        attn_implementation="eager")
    hf = transformers.LlamaForCausalLM(config).eval()
    missing, unexpected = hf.load_state_dict(
        lc.meta_to_hf_state_dict(model.state_dict(), a), strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    return hf
