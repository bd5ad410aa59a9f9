"""Loading real-format checkpoints, against transformers on the same random weights.

Every folder here is written by the tests themselves: Hugging Face folders by transformers'
own `save_pretrained` (plus a rewrite of config.json in the style of the released Llama 3.x
checkpoints), Meta folders by hand from the same weights (names mapped and q/k rows reordered
with code written here, not the package's). The reference is always transformers'
LlamaForCausalLM: logits, greedy generation, and loading what `save_pretrained` writes.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

import llama_course as lc
from llama_course import checkpoint

import transformers  # the independent reference: a test extra, never skipped
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Models this small run fastest on one thread (and don't stall on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# ---------------------------------------------------------------------------- configs
# dim 64, head_dim 16, vocab 97. intermediate_size 192 is what Meta's rule gives for dim 64
# with multiple_of 32 and no multiplier, so these can also be written as Meta folders.
BASE = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=97, rms_norm_eps=1e-5, rope_theta=10000.0,
            max_position_embeddings=512, bos_token_id=None, eos_token_id=None,
            pad_token_id=None)
LLAMA3_SCALING = dict(rope_type="llama3", low_freq_factor=1.0, high_freq_factor=4.0)
META_BASE = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=32,
                 ffn_dim_multiplier=None, norm_eps=1e-5, rope_theta=10000.0)

# name -> (transformers kwargs, Meta params.json overrides or None when Meta can't express it)
CONFIGS = {
    "mha": (dict(num_key_value_heads=4), dict(n_kv_heads=4)),
    "gqa": (dict(num_attention_heads=8, num_key_value_heads=2), dict(n_heads=8, n_kv_heads=2)),
    "mqa": (dict(num_key_value_heads=1), dict(n_kv_heads=1)),
    "tied": (dict(tie_word_embeddings=True), dict()),
    # Llama 3.1 RoPE scaling with a short original context, so that it matters within 64 tokens
    "llama31_rope": (dict(rope_theta=500000.0, rope_scaling=dict(
        LLAMA3_SCALING, factor=8.0, original_max_position_embeddings=32)), None),
    # Meta's fixed 8192-token scaling, factor given explicitly in params.json
    "llama31_meta": (dict(rope_theta=500000.0, rope_scaling=dict(
        LLAMA3_SCALING, factor=8.0, original_max_position_embeddings=8192)),
        dict(rope_theta=500000.0, use_scaled_rope=True, rope_scaling_factor=8.0)),
    # Llama 3.2 1B's shape in miniature: GQA, tied head, scaling factor 32 (which params.json
    # leaves implicit: the loader must infer it for a narrow model)
    "llama32": (dict(num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True,
                     rope_theta=500000.0, rope_scaling=dict(
                         LLAMA3_SCALING, factor=32.0, original_max_position_embeddings=8192)),
                dict(n_heads=8, n_kv_heads=2, rope_theta=500000.0, use_scaled_rope=True)),
    # an FFN width Meta's rule would not produce, and an odd number of layers
    "odd_ffn": (dict(intermediate_size=100, num_hidden_layers=3), None),
}
LAYOUTS = ["hf", "hf_legacy_config", "hf_sharded", "meta"]
CASES = [(c, l) for c in CONFIGS for l in LAYOUTS if not (l == "meta" and CONFIGS[c][1] is None)]


def make_hf(name: str, seed: int = 0):
    """transformers' Llama on random weights: matrices N(0, 0.1), norm weights 1 + N(0, 0.1),
    large enough that attention is far from uniform and every mistake shows in the logits."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**{**BASE, **CONFIGS[name][0]},
                                      attn_implementation="eager")
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)
            if p.dim() == 1:
                p += 1.0
    return model


# ---------------------------------------------------------------------------- folder writers
def legacy_config(folder) -> None:
    """Rewrite config.json the way the released Llama 3.x checkpoints spell it: top-level
    rope_theta / rope_scaling, torch_dtype, no rope_parameters."""
    file = folder / "config.json"
    cfg = json.loads(file.read_text())
    rope = cfg.pop("rope_parameters")
    cfg.pop("dtype", None)
    cfg["rope_theta"] = rope["rope_theta"]
    cfg["rope_scaling"] = (None if rope["rope_type"] == "default"
                           else {k: v for k, v in rope.items() if k != "rope_theta"})
    cfg["torch_dtype"] = "float32"
    cfg["transformers_version"] = "4.45.0.dev0"
    file.write_text(json.dumps(cfg, indent=2))


_META_NAMES = {"model.embed_tokens.weight": "tok_embeddings.weight",
               "model.norm.weight": "norm.weight", "lm_head.weight": "output.weight"}
_META_LAYER = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
               "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
               "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
               "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
               "post_attention_layernorm": "ffn_norm"}


def interleave_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF's rotate-half row order -> Meta's interleaved one: in each head, Meta row 2i + c
    is HF row c * head_dim/2 + i (c = 0 for the first of a rotated pair, 1 for the second)."""
    head_dim = w.shape[0] // n_heads
    order = [h * head_dim + c * (head_dim // 2) + i
             for h in range(n_heads) for i in range(head_dim // 2) for c in range(2)]
    return w[order]


def hf_state_to_meta(hf) -> dict[str, torch.Tensor]:
    cfg = hf.config
    out = {}
    for name, t in hf.state_dict().items():
        t = t.detach().clone()
        if name in _META_NAMES:
            out[_META_NAMES[name]] = t
            continue
        m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", name)
        meta = f"layers.{m.group(1)}.{_META_LAYER[m.group(2)]}.weight"
        if m.group(2) == "self_attn.q_proj":
            t = interleave_rows(t, cfg.num_attention_heads)
        elif m.group(2) == "self_attn.k_proj":
            t = interleave_rows(t, cfg.num_key_value_heads)
        out[meta] = t
    out.setdefault("output.weight", out["tok_embeddings.weight"].clone())  # Meta stores it
    return out


def write_meta(hf, folder, params: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(hf_state_to_meta(hf), folder / "consolidated.00.pth")
    (folder / "params.json").write_text(json.dumps(params))


def write_folder(name: str, layout: str, folder):
    """Write `name`'s model in `layout`; return the transformers model that is the reference."""
    hf = make_hf(name)
    if layout == "meta":
        write_meta(hf, folder, {**META_BASE, **CONFIGS[name][1]})
        return hf
    hf.save_pretrained(folder, max_shard_size="20KB" if layout == "hf_sharded" else "5GB")
    if layout == "hf_legacy_config":
        legacy_config(folder)
        # the reference is what transformers itself makes of the legacy spelling
        hf = transformers.LlamaForCausalLM.from_pretrained(folder, attn_implementation="eager")
    return hf.eval()


def logits(model, tokens):
    with torch.no_grad():
        out = model(tokens)
    return out if isinstance(out, torch.Tensor) else out.logits


def hf_greedy(hf, prompt: list[int], n: int) -> list[int]:
    out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                      dtype=torch.long), do_sample=False, max_new_tokens=n, pad_token_id=0)
    return out[0, len(prompt):].tolist()


# 320 positions: with Meta's 8192-token original context, RoPE scaling changes the angles of
# the slow dimensions by tenths of a radian only that far out
TOKENS = torch.randint(0, 97, (2, 320), generator=torch.Generator().manual_seed(1))
PROMPTS = [[5, 17, 42, 8, 2], [1]]


# ---------------------------------------------------------------------------- equality
@pytest.mark.parametrize("name,layout", CASES)
def test_logits_and_greedy_text_equal_transformers(name, layout, tmp_path):
    hf = write_folder(name, layout, tmp_path)
    if layout == "hf_sharded":
        assert (tmp_path / "model.safetensors.index.json").is_file()
        assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 2
    model = lc.Transformer.from_pretrained(tmp_path)
    assert model.tok_embeddings.weight.dtype == torch.float32
    tied = bool(CONFIGS[name][0].get("tie_word_embeddings"))
    assert model.params.tie_word_embeddings is tied
    assert (model.output.weight is model.tok_embeddings.weight) is tied

    ours, ref = logits(model, TOKENS), logits(hf, TOKENS)
    assert ours.dtype == torch.float32 and ours.shape == (2, 320, 97)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)

    for prompt in PROMPTS:
        assert lc.generate(model, [prompt], 12, temperature=0)[0] == hf_greedy(hf, prompt, 12)


@pytest.mark.parametrize("name", ["llama31_rope", "llama31_meta", "llama32"])
def test_the_rope_scaling_cases_would_catch_a_loader_that_ignores_it(name, tmp_path):
    """Without its scaling, each of these models gives logits far outside the tolerance."""
    hf = write_folder(name, "hf", tmp_path)
    model = lc.Transformer.from_pretrained(tmp_path)
    unscaled = lc.Transformer(model.params.replace(rope_scaling=None))
    unscaled.load_state_dict(model.state_dict())
    assert (logits(unscaled, TOKENS) - logits(hf, TOKENS)).abs().max() > 1e-3


def test_meta_folder_infers_llama32_scaling_factor(tmp_path):
    write_folder("llama32", "meta", tmp_path)
    model = lc.Transformer.from_pretrained(tmp_path)
    assert model.params.rope_scaling["factor"] == 32.0
    assert model.params.max_seq_len == 131072  # scaled RoPE: Llama 3.1+ context


# ---------------------------------------------------------------------------- save_pretrained
@pytest.mark.parametrize("name", list(CONFIGS))
def test_save_pretrained_round_trips_through_transformers(name, tmp_path):
    hf = write_folder(name, "hf", tmp_path / "src")
    model = lc.Transformer.from_pretrained(tmp_path / "src")
    model.save_pretrained(tmp_path / "out")
    assert {"config.json", "model.safetensors"} <= {p.name for p in (tmp_path / "out").iterdir()}
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out",
                                                          attn_implementation="eager")
    torch.testing.assert_close(logits(again, TOKENS), logits(hf, TOKENS), atol=0, rtol=0)
    assert again.config.tie_word_embeddings == hf.config.tie_word_embeddings
    # and this package reads back exactly the same model
    back = lc.Transformer.from_pretrained(tmp_path / "out")
    assert back.params == model.params
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_sharded_save_loads_in_transformers_and_here(tmp_path):
    hf = write_folder("gqa", "hf", tmp_path / "src")
    model = lc.Transformer.from_pretrained(tmp_path / "src")
    checkpoint.save_pretrained(model, tmp_path / "out", max_shard_size="30KB")
    shards = sorted(p.name for p in (tmp_path / "out").glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and not (tmp_path / "out" / "model.safetensors").exists()
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out",
                                                          attn_implementation="eager")
    torch.testing.assert_close(logits(again, TOKENS), logits(hf, TOKENS), atol=0, rtol=0)
    torch.testing.assert_close(logits(lc.Transformer.from_pretrained(tmp_path / "out"), TOKENS),
                               logits(model, TOKENS), atol=0, rtol=0)
    # saving again unsharded removes the shards, which would otherwise shadow nothing but
    # confuse readers; the folder then holds one weights file
    model.save_pretrained(tmp_path / "out")
    assert not list((tmp_path / "out").glob("model-*-of-*.safetensors"))
    assert not (tmp_path / "out" / "model.safetensors.index.json").exists()


def test_course_run_folder_keeps_exact_args_and_ignores_other_files(tmp_path):
    args = lc.ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=1, vocab_size=68,
                        multiple_of=32, ffn_dim_multiplier=None, rope_theta=10000.0,
                        max_batch_size=5, max_seq_len=40, tie_word_embeddings=True)
    model = lc.Transformer(args)
    model.save_pretrained(tmp_path)
    (tmp_path / "char_tokenizer.json").write_text("{}")
    (tmp_path / "metrics.csv").write_text("step,loss\n")
    torch.save({"step": 3, "optimizer": {}}, tmp_path / "train_state.pt")
    assert checkpoint.detect_format(tmp_path) == "llama_course"
    back = lc.Transformer.from_pretrained(tmp_path)
    assert back.params == args  # max_batch_size etc., which config.json does not hold
    assert back.output.weight is back.tok_embeddings.weight
    assert all(p.requires_grad for p in back.parameters())  # ready to train on
    tokens = torch.randint(0, 68, (2, 40))
    torch.testing.assert_close(logits(back, tokens), logits(model, tokens), atol=0, rtol=0)


def test_save_pretrained_in_bf16_and_atomic_files(tmp_path):
    hf = write_folder("tied", "hf", tmp_path / "src")
    model = lc.Transformer.from_pretrained(tmp_path / "src")
    model.save_pretrained(tmp_path / "out", dtype=torch.bfloat16)
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert not any(n.endswith(".tmp") for n in names)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["torch_dtype"] == "bfloat16"
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    expected = hf.model.embed_tokens.weight.detach().to(torch.bfloat16).float()
    assert torch.equal(again.model.embed_tokens.weight, expected)


def test_save_meta_round_trip(tmp_path):
    hf = write_folder("llama32", "hf", tmp_path / "src")
    model = lc.Transformer.from_pretrained(tmp_path / "src")
    checkpoint.save_meta(model, tmp_path / "meta")
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    assert params["use_scaled_rope"] is True and params["rope_scaling_factor"] == 32.0
    state = torch.load(tmp_path / "meta" / "consolidated.00.pth", weights_only=True)
    assert set(state) == set(model.state_dict())  # Meta's names, output head included
    back = lc.Transformer.from_pretrained(tmp_path / "meta")
    assert back.params.tie_word_embeddings
    torch.testing.assert_close(logits(back, TOKENS), logits(hf, TOKENS), atol=1e-5, rtol=1e-5)
    # an FFN width from config.json is written as multiple_of/ffn_dim_multiplier that give it
    hf = write_folder("odd_ffn", "hf", tmp_path / "odd")
    checkpoint.save_meta(lc.Transformer.from_pretrained(tmp_path / "odd"), tmp_path / "odd_meta")
    params = json.loads((tmp_path / "odd_meta" / "params.json").read_text())
    assert lc.ffn_hidden_dim(64, params["multiple_of"], params["ffn_dim_multiplier"]) == 100
    torch.testing.assert_close(logits(lc.Transformer.from_pretrained(tmp_path / "odd_meta"),
                                      TOKENS), logits(hf, TOKENS), atol=1e-5, rtol=1e-5)
    # Meta's code fixes the original context at 8192 tokens: anything else is refused
    write_folder("llama31_rope", "hf", tmp_path / "short")
    with pytest.raises(ValueError, match="original_max_position_embeddings"):
        checkpoint.save_meta(lc.Transformer.from_pretrained(tmp_path / "short"), tmp_path / "x")


# ---------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("layout", ["hf", "meta"])
def test_bf16_loading(layout, tmp_path):
    hf = write_folder("llama32", layout, tmp_path)
    model = lc.Transformer.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ours, ref = logits(model, TOKENS), logits(hf, TOKENS)
    assert ours.dtype == torch.float32
    assert (ours - ref).abs().max() < 0.05 * ref.abs().max()
    assert (ours - ref).abs().max() > 0  # it really computed in bf16


def test_dtype_none_keeps_the_checkpoints_dtype(tmp_path):
    hf = make_hf("gqa").to(torch.bfloat16)
    hf.save_pretrained(tmp_path)
    model = lc.Transformer.from_pretrained(tmp_path)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    up = lc.Transformer.from_pretrained(tmp_path, dtype=torch.float32)
    assert torch.equal(up.tok_embeddings.weight,
                       hf.model.embed_tokens.weight.detach().float())


# ---------------------------------------------------------------------------- configs
LLAMA32_1B_CONFIG = {  # meta-llama/Llama-3.2-1B config.json as released (transformers 4.45)
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu",
    "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
    "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": 128256}


def test_real_llama32_config_json_both_spellings():
    preset = lc.get_preset("llama3.2-1b")
    legacy = checkpoint.args_from_hf_config(LLAMA32_1B_CONFIG)
    # transformers 5 reads the legacy spelling; its own spelling must give the same
    hf_config = transformers.LlamaConfig(**LLAMA32_1B_CONFIG)
    v5 = dict(json.loads(hf_config.to_json_string()))
    assert "rope_parameters" in v5 and "rope_scaling" not in v5
    modern = checkpoint.args_from_hf_config(v5)
    for args in (legacy, modern):
        assert args.rope_scaling == preset.rope_scaling
        assert args.rope_theta == preset.rope_theta == hf_config.rope_parameters["rope_theta"]
        assert args.ffn_hidden_dim == preset.ffn_hidden_dim == 8192
        assert (args.dim, args.n_layers, args.n_heads, args.kv_heads, args.vocab_size) == (
            preset.dim, preset.n_layers, preset.n_heads, preset.kv_heads, preset.vocab_size)
        assert args.tie_word_embeddings and args.max_seq_len == 131072
        assert lc.num_parameters(args) == lc.num_parameters(preset) == 1_235_814_400


META_PARAMS = {  # params.json as Meta ships them
    "llama3-8b": {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8,
                  "vocab_size": 128256, "multiple_of": 1024, "ffn_dim_multiplier": 1.3,
                  "norm_eps": 1e-05, "rope_theta": 500000.0},
    "llama3.1-8b": {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8,
                    "vocab_size": 128256, "ffn_dim_multiplier": 1.3, "multiple_of": 1024,
                    "norm_eps": 1e-05, "rope_theta": 500000.0, "use_scaled_rope": True},
    "llama3.2-1b": {"dim": 2048, "n_layers": 16, "n_heads": 32, "n_kv_heads": 8,
                    "vocab_size": 128256, "ffn_dim_multiplier": 1.5, "multiple_of": 256,
                    "norm_eps": 1e-05, "rope_theta": 500000.0, "use_scaled_rope": True},
    "llama3.2-3b": {"dim": 3072, "n_layers": 28, "n_heads": 24, "n_kv_heads": 8,
                    "vocab_size": 128256, "ffn_dim_multiplier": 1.0, "multiple_of": 256,
                    "norm_eps": 1e-05, "rope_theta": 500000.0, "use_scaled_rope": True},
}


@pytest.mark.parametrize("name", list(META_PARAMS))
def test_real_meta_params_give_the_presets(name):
    preset = lc.get_preset(name)
    args = checkpoint.args_from_meta_params(META_PARAMS[name],
                                            tie_word_embeddings=preset.tie_word_embeddings)
    assert args.rope_scaling == preset.rope_scaling
    assert args.max_seq_len == preset.max_seq_len
    assert args.ffn_hidden_dim == preset.ffn_hidden_dim
    assert lc.num_parameters(args) == lc.num_parameters(preset)


def test_meta_params_details():
    p = dict(META_PARAMS["llama3.2-1b"], vocab_size=-1, rope_scaling_factor=16.0)
    args = checkpoint.args_from_meta_params(p, vocab_size=1000)
    assert args.vocab_size == 1000 and args.rope_scaling["factor"] == 16.0
    nested = checkpoint.args_from_meta_params({"model": META_PARAMS["llama3-8b"]})
    assert nested.rope_scaling is None and nested.max_seq_len == 8192
    with pytest.raises(ValueError, match="moe_args"):
        checkpoint.args_from_meta_params(dict(META_PARAMS["llama3-8b"], moe_args={"n": 16}))


# ---------------------------------------------------------------------------- errors
def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lc.Transformer.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="is empty"):
        lc.Transformer.from_pretrained(tmp_path)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(FileNotFoundError, match="neither config.json .* nor params.json"):
        lc.Transformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(make_hf("mha").config.to_dict()))
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor"):
        lc.Transformer.from_pretrained(tmp_path)


def test_not_a_llama(tmp_path):
    write_folder("mha", "hf", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, model_type="mistral")))
    with pytest.raises(ValueError, match="model_type 'mistral'"):
        lc.Transformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, rope_parameters={
        "rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0})))
    with pytest.raises(ValueError, match="'linear' is not supported"):
        lc.Transformer.from_pretrained(tmp_path)


def test_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path):
    write_folder("mha", "hf", tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps(dict(cfg, intermediate_size=96)))
    with pytest.raises(ValueError) as e:
        lc.Transformer.from_pretrained(tmp_path / "hf")
    msg = str(e.value)
    assert re.search(r"model\.layers\.0\.mlp\.(down|gate|up)_proj\.weight", msg), msg
    assert ("[192, 64]" in msg and "[96, 64]" in msg) or ("[64, 192]" in msg and "[64, 96]" in msg)

    write_folder("gqa", "meta", tmp_path / "meta")
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    (tmp_path / "meta" / "params.json").write_text(json.dumps(dict(params, n_kv_heads=1)))
    with pytest.raises(ValueError, match=r"layers\.0\.attention\.wk\.weight .*\[16, 64\].*\[8, 64\]"):
        lc.Transformer.from_pretrained(tmp_path / "meta")


def test_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file
    write_folder("mha", "hf", tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.1.post_attention_layernorm.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lacks 1 tensor.*layers\.1\.ffn_norm\.weight"):
        lc.Transformer.from_pretrained(tmp_path)


def test_truncated_files_are_named(tmp_path):
    write_folder("mha", "hf", tmp_path / "hf")
    f = tmp_path / "hf" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors .*truncated"):
        lc.Transformer.from_pretrained(tmp_path / "hf")

    write_folder("mha", "hf_sharded", tmp_path / "sharded")
    shard = sorted((tmp_path / "sharded").glob("model-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ValueError, match=re.escape(shard.name) + ".*truncated"):
        lc.Transformer.from_pretrained(tmp_path / "sharded")
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(shard.name) + ".*missing"):
        lc.Transformer.from_pretrained(tmp_path / "sharded")

    write_folder("mha", "meta", tmp_path / "meta")
    f = tmp_path / "meta" / "consolidated.00.pth"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"consolidated\.00\.pth .*truncated"):
        lc.Transformer.from_pretrained(tmp_path / "meta")


def test_several_meta_shards_are_refused(tmp_path):
    write_folder("mha", "meta", tmp_path)
    (tmp_path / "consolidated.01.pth").write_bytes(
        (tmp_path / "consolidated.00.pth").read_bytes())
    with pytest.raises(ValueError, match="merging model-parallel shards is not supported"):
        lc.Transformer.from_pretrained(tmp_path)


class NotATensor:  # a pickled object: weights_only must refuse it, never run its code
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_pickle_that_is_not_plain_tensors_is_refused(tmp_path, capsys):
    write_folder("mha", "meta", tmp_path)
    state = torch.load(tmp_path / "consolidated.00.pth", weights_only=True)
    torch.save({**state, "extra": NotATensor()}, tmp_path / "consolidated.00.pth")
    with pytest.raises(ValueError, match="other than tensors"):
        lc.Transformer.from_pretrained(tmp_path)
    assert "this must never run" not in capsys.readouterr().out
    torch.save({"model": state}, tmp_path / "consolidated.00.pth")  # allowed types, wrong shape
    with pytest.raises(ValueError, match="not tensors: 'model'"):
        lc.Transformer.from_pretrained(tmp_path)
