"""Checkpoint conversions in full: config.json and params.json <-> ModelArgs (every key, every
default, every refusal), and the state-dict renaming with the q/k permutation. Public API only
(lc.args_to_hf_config, lc.args_from_hf_config, lc.args_from_meta_params,
lc.meta_to_hf_state_dict, lc.hf_to_meta_state_dict, lc.permute_qk_*)."""

import pytest
import torch

import llama_course as lc

from references import small_args

SCALING = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
               original_max_position_embeddings=8192)


def test_hf_config_every_key():
    args = small_args(n_heads=4, n_kv_heads=2, rope_scaling=SCALING, tie_word_embeddings=True)
    got = lc.args_to_hf_config(args, dtype=torch.bfloat16, bos_token_id=1, eos_token_id=2)
    assert got == {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
        "intermediate_size": args.ffn_hidden_dim, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 97,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "rope_scaling": {**SCALING, "rope_type": "llama3"},
        "rope_parameters": {**SCALING, "rope_type": "llama3", "rope_theta": 10000.0},
        "max_position_embeddings": 64, "tie_word_embeddings": True, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "bos_token_id": 1, "eos_token_id": 2,
        "torch_dtype": "bfloat16", "dtype": "bfloat16"}
    plain = lc.args_to_hf_config(small_args())
    assert plain["rope_scaling"] is None and "dtype" not in plain and "torch_dtype" not in plain
    assert plain["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert plain["bos_token_id"] is None and plain["eos_token_id"] is None


def minimal_hf(**extra):
    return {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 4, "vocab_size": 97, "intermediate_size": 96, **extra}


def test_hf_config_defaults():
    a = lc.args_from_hf_config(minimal_hf())
    assert (a.n_kv_heads, a.norm_eps, a.rope_theta, a.rope_scaling, a.max_seq_len,
            a.tie_word_embeddings, a.hidden_dim) == (4, 1e-6, 10000.0, None, 2048, False, 96)
    assert lc.args_from_hf_config(minimal_hf(), max_seq_len=32).max_seq_len == 32


@pytest.mark.parametrize("rope, want_theta", [
    (dict(rope_theta=500000.0, rope_scaling={"rope_type": "llama3", **SCALING}), 500000.0),
    (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 250000.0, **SCALING}), 250000.0),
    (dict(rope_theta=123.0, rope_scaling={"type": "llama3", **SCALING}), 123.0),
])
def test_hf_rope_spellings(rope, want_theta):
    a = lc.args_from_hf_config(minimal_hf(**rope))
    assert a.rope_theta == want_theta and a.rope_scaling == SCALING


def test_hf_rope_fills_the_original_context():
    scaling = {k: v for k, v in SCALING.items() if k != "original_max_position_embeddings"}
    a = lc.args_from_hf_config(minimal_hf(max_position_embeddings=4096,
                                          rope_scaling={"rope_type": "llama3", **scaling}))
    assert a.rope_scaling["original_max_position_embeddings"] == 4096 and a.max_seq_len == 4096
    b = lc.args_from_hf_config(minimal_hf(rope_parameters={"rope_type": "default",
                                                           "rope_theta": 77.0}))
    assert b.rope_theta == 77.0 and b.rope_scaling is None


@pytest.mark.parametrize("config, message", [
    ([1], r"^config.json must hold a JSON object, got list$"),
    (minimal_hf(model_type="mistral"),
     r"^config.json has model_type 'mistral': this is not a Llama checkpoint \(expected 'llama'\)$"),
    (minimal_hf(hidden_act="gelu"), r"^hidden_act 'gelu' is not Llama's 'silu'$"),
    (minimal_hf(attention_bias=True), r"^attention_bias=true is not supported: Llama has no biases$"),
    (minimal_hf(mlp_bias=True), r"^mlp_bias=true is not supported: Llama has no biases$"),
    ({"model_type": "llama", "hidden_size": 64}, r"^config.json lacks num_hidden_layers, "
                                                 r"num_attention_heads, vocab_size, intermediate_size$"),
    (minimal_hf(head_dim=8), r"^head_dim \(8\) \* num_attention_heads \(4\) != hidden_size \(64\) "
                             r"is not supported$"),
    (minimal_hf(rope_scaling=[1]), r"^config.json: rope settings \[1\] are not a dict$"),
])
def test_hf_config_refusals(config, message):
    with pytest.raises(ValueError, match=message):
        lc.args_from_hf_config(config)


def minimal_meta(**extra):
    return {"dim": 64, "n_layers": 2, "n_heads": 4, **extra}


def test_meta_params_defaults_and_nesting():
    a = lc.args_from_meta_params(minimal_meta(), vocab_size=97)
    assert (a.n_kv_heads, a.vocab_size, a.multiple_of, a.ffn_dim_multiplier, a.norm_eps,
            a.rope_theta, a.rope_scaling, a.max_seq_len) == (4, 97, 256, None, 1e-5, 500000.0,
                                                            None, 8192)
    b = lc.args_from_meta_params({"model": minimal_meta(vocab_size=-1, use_scaled_rope=True)},
                                 vocab_size=50)
    assert b.vocab_size == 50 and b.max_seq_len == 131072
    assert b.rope_scaling == {**SCALING, "factor": 32.0}  # narrower than 4096: Llama 3.2
    wide = lc.args_from_meta_params(dict(dim=4096, n_layers=1, n_heads=32, vocab_size=10,
                                         use_scaled_rope=True))
    assert wide.rope_scaling == SCALING  # 3.1 8B and up: factor 8
    given = lc.args_from_meta_params(minimal_meta(vocab_size=9, use_scaled_rope=True,
                                                  rope_scaling_factor=16,
                                                  rope_high_freq_factor=2.0, max_seq_len=100))
    assert given.rope_scaling == {**SCALING, "factor": 16.0, "high_freq_factor": 2.0}
    assert given.max_seq_len == 100 and given.vocab_size == 9


@pytest.mark.parametrize("params, message", [
    ("x", r"^params.json must hold a JSON object, got str$"),
    (minimal_meta(vocab_size=9, use_qk_norm=True),
     r"^params.json sets use_qk_norm=True: only plain Llama 3 text models are supported "
     r"\(no vision, MoE, QK-norm or quantization\)$"),
    ({"dim": 64, "vocab_size": 9}, r"^params.json lacks n_layers, n_heads$"),
])
def test_meta_params_refusals(params, message):
    with pytest.raises(ValueError, match=message):
        lc.args_from_meta_params(params)


def test_state_dict_names_and_permutation_round_trip():
    args = small_args(n_heads=4, n_kv_heads=2)
    sd = lc.Transformer(args).state_dict()
    hf = lc.meta_to_hf_state_dict(sd, args)
    assert set(hf) == {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
                       *(f"model.layers.{i}.{n}" for i in range(2) for n in (
                           "self_attn.q_proj.weight", "self_attn.k_proj.weight",
                           "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                           "mlp.gate_proj.weight", "mlp.down_proj.weight", "mlp.up_proj.weight",
                           "input_layernorm.weight", "post_attention_layernorm.weight"))}
    assert torch.equal(hf["model.layers.1.self_attn.q_proj.weight"],
                       lc.permute_qk_meta_to_hf(sd["layers.1.attention.wq.weight"], 4))
    assert torch.equal(hf["model.layers.1.self_attn.k_proj.weight"],
                       lc.permute_qk_meta_to_hf(sd["layers.1.attention.wk.weight"], 2))
    assert torch.equal(hf["model.layers.0.mlp.gate_proj.weight"], sd["layers.0.feed_forward.w1.weight"])
    assert torch.equal(hf["model.layers.0.mlp.up_proj.weight"], sd["layers.0.feed_forward.w3.weight"])
    back = lc.hf_to_meta_state_dict({**hf, "model.layers.0.self_attn.rotary_emb.inv_freq":
                                      torch.ones(8)}, args)
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k


def test_tied_checkpoints_reuse_the_embedding():
    args = small_args(tie_word_embeddings=True)
    hf = lc.meta_to_hf_state_dict(lc.Transformer(args).state_dict(), args)
    del hf["lm_head.weight"]
    back = lc.hf_to_meta_state_dict(hf, args)
    assert back["output.weight"] is back["tok_embeddings.weight"]
    untied = small_args()
    assert "output.weight" not in lc.hf_to_meta_state_dict(hf, untied)


@pytest.mark.parametrize("fn, name, message", [
    (lc.meta_to_hf_state_dict, "layers.0.attention.wz.weight",
     r"^unexpected tensor name 'layers.0.attention.wz.weight' in a Meta-layout state dict$"),
    (lc.hf_to_meta_state_dict, "model.layers.0.mlp.act.weight",
     r"^unexpected tensor name 'model.layers.0.mlp.act.weight' in a Hugging Face Llama "
     r"state dict$"),
])
def test_unknown_names_are_refused(fn, name, message):
    with pytest.raises(ValueError, match=message):
        fn({name: torch.zeros(1)}, small_args())
