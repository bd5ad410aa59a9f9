"""Pure conversions between the three ways a Llama 3 checkpoint describes itself (notebook 08).

No files here: names, tensors and config dicts in, names, tensors and ModelArgs out.

==========================================  ===============================================
Meta (`consolidated.00.pth`, this course)    Hugging Face (`model.safetensors`)
==========================================  ===============================================
tok_embeddings.weight                       model.embed_tokens.weight
layers.{i}.attention.wq/wk/wv/wo.weight     model.layers.{i}.self_attn.q/k/v/o_proj.weight
layers.{i}.feed_forward.w1/w3/w2.weight     model.layers.{i}.mlp.gate/up/down_proj.weight
layers.{i}.attention_norm.weight            model.layers.{i}.input_layernorm.weight
layers.{i}.ffn_norm.weight                  model.layers.{i}.post_attention_layernorm.weight
norm.weight                                 model.norm.weight
output.weight                               lm_head.weight
==========================================  ===============================================

Renaming is not enough: HF applies RoPE in rotate-half layout, so the rows of q_proj and
k_proj are permuted relative to Meta's wq and wk (see `rope.permute_qk_meta_to_hf`). The one
place that decides which tensors are permuted, and by how many heads, is `qk_heads`.

The settings come as Hugging Face's `config.json` (both spellings of the RoPE settings: the
top-level `rope_theta`/`rope_scaling` of every released Llama 3.x checkpoint, and the
`rope_parameters` transformers 5 writes) or Meta's `params.json`; both map to `ModelArgs`.
"""

from __future__ import annotations

import re
from typing import Any, Optional

import torch

from .config import ModelArgs
from .ffn import ffn_hidden_dim
from .rope import permute_qk_hf_to_meta, permute_qk_meta_to_hf

__all__ = ["meta_to_hf_name", "hf_to_meta_name", "qk_heads", "to_hf_layout", "to_meta_layout",
           "meta_to_hf_state_dict", "hf_to_meta_state_dict", "args_to_hf_config",
           "args_from_hf_config", "meta_rope_scaling", "args_from_meta_params",
           "args_to_meta_params", "SKIPPED_HF", "SKIPPED_META"]

_GLOBAL_KEYS = {  # Meta name -> HF name
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_KEYS = {  # Meta name (inside layers.{i}.) -> HF name (inside model.layers.{i}.)
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_HF_LAYER_KEYS = {hf: meta for meta, hf in _LAYER_KEYS.items()}

# Buffers some checkpoints carry that the model recomputes from rope_theta: skipped on load.
SKIPPED_HF = re.compile(r"(.*\.)?rotary_emb\.inv_freq$")
SKIPPED_META = {"rope.freqs"}  # Llama 2's consolidated.*.pth carry the RoPE table


def meta_to_hf_name(name: str) -> str:
    if name in _GLOBAL_KEYS:
        return _GLOBAL_KEYS[name]
    parts = name.split(".", 2)  # "layers", i, rest
    if len(parts) == 3 and parts[0] == "layers" and parts[2] in _LAYER_KEYS:
        return f"model.layers.{parts[1]}.{_LAYER_KEYS[parts[2]]}"
    raise ValueError(f"unexpected tensor name {name!r} in a Meta-layout state dict")


def hf_to_meta_name(name: str) -> str:
    for meta, hf in _GLOBAL_KEYS.items():
        if name == hf:
            return meta
    parts = name.split(".", 3)  # "model", "layers", i, rest
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _HF_LAYER_KEYS:
        return f"layers.{parts[2]}.{_HF_LAYER_KEYS[parts[3]]}"
    raise ValueError(f"unexpected tensor name {name!r} in a Hugging Face Llama state dict")


def qk_heads(meta_name: str, args: ModelArgs) -> Optional[int]:
    """How many heads the rows of this tensor hold if RoPE rotates its output (wq: n_heads,
    wk: n_kv_heads), else None: the tensors whose rows the two RoPE layouts order differently."""
    if meta_name.endswith("attention.wq.weight"):
        return args.n_heads
    if meta_name.endswith("attention.wk.weight"):
        return args.kv_heads
    return None


def to_hf_layout(meta_name: str, t: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """One tensor in Meta's interleaved RoPE layout -> Hugging Face's rotate-half rows."""
    heads = qk_heads(meta_name, args)
    return t if heads is None else permute_qk_meta_to_hf(t, heads)


def to_meta_layout(meta_name: str, t: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    """One tensor in Hugging Face's rotate-half layout -> Meta's interleaved rows."""
    heads = qk_heads(meta_name, args)
    return t if heads is None else permute_qk_hf_to_meta(t, heads)


def meta_to_hf_state_dict(state_dict: dict[str, torch.Tensor],
                          args: ModelArgs) -> dict[str, torch.Tensor]:
    """Meta names and interleaved RoPE rows -> HF names and rotate-half rows."""
    return {meta_to_hf_name(name): to_hf_layout(name, t, args) for name, t in state_dict.items()}


def hf_to_meta_state_dict(state_dict: dict[str, torch.Tensor],
                          args: ModelArgs) -> dict[str, torch.Tensor]:
    """HF names and rotate-half rows -> Meta names and interleaved rows.

    A checkpoint with tied embeddings has no `lm_head.weight`; the output head then reuses
    the embedding matrix.
    """
    out = {}
    for name, t in state_dict.items():
        if SKIPPED_HF.match(name):
            continue  # a buffer some old checkpoints carry; recomputed from rope_theta
        meta = hf_to_meta_name(name)
        out[meta] = to_meta_layout(meta, t, args)
    if "output.weight" not in out and args.tie_word_embeddings:
        out["output.weight"] = out["tok_embeddings.weight"]
    return out


# ---------------------------------------------------------------------------- HF configs
def args_to_hf_config(args: ModelArgs, dtype: torch.dtype | None = None,
                      bos_token_id: int | None = None,
                      eos_token_id: int | None = None) -> dict[str, Any]:
    """The config.json that `transformers.LlamaConfig` reads for this model.

    Written with both spellings of the RoPE settings: top-level `rope_theta`/`rope_scaling`
    (transformers 4.x, and every released Llama 3 checkpoint) and `rope_parameters`
    (transformers 5).
    """
    rope_scaling = None
    if args.rope_scaling is not None:
        rope_scaling = {**args.rope_scaling, "rope_type": "llama3"}
    rope_parameters = {"rope_type": "default", "rope_theta": args.rope_theta}
    if rope_scaling is not None:
        rope_parameters = {**rope_scaling, "rope_theta": args.rope_theta}
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.dim,
        "intermediate_size": args.ffn_hidden_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.head_dim,
        "vocab_size": args.vocab_size,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "rope_scaling": rope_scaling,
        "rope_parameters": rope_parameters,
        "max_position_embeddings": args.max_seq_len,
        "tie_word_embeddings": args.tie_word_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
    }
    if dtype is not None:
        config["torch_dtype"] = config["dtype"] = str(dtype).removeprefix("torch.")
    return config


def _hf_rope(config: dict[str, Any]) -> tuple[float, Optional[dict]]:
    """(rope_theta, llama3 scaling dict or None), read the way transformers 5 reads them.

    transformers gives a legacy top-level `rope_scaling` precedence over `rope_parameters`,
    and fills a missing `rope_theta` from the top level (default 10,000).
    """
    rope = config.get("rope_scaling") or config.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise ValueError(f"config.json: rope settings {rope!r} are not a dict")
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type == "default":
        return float(theta), None
    scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "type")}
    scaling["rope_type"] = rope_type
    if "original_max_position_embeddings" not in scaling and "max_position_embeddings" in config:
        scaling["original_max_position_embeddings"] = config["max_position_embeddings"]
    return float(theta), scaling


def args_from_hf_config(config: dict[str, Any], **overrides: Any) -> ModelArgs:
    """ModelArgs from a Hugging Face Llama config.json (either RoPE spelling)."""
    if not isinstance(config, dict):
        raise ValueError(f"config.json must hold a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type != "llama":
        raise ValueError(f"config.json has model_type {model_type!r}: this is not a Llama "
                         "checkpoint (expected 'llama')")
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {config['hidden_act']!r} is not Llama's 'silu'")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise ValueError(f"{flag}=true is not supported: Llama has no biases")
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                           "vocab_size", "intermediate_size") if config.get(k) is None]
    if missing:
        raise ValueError(f"config.json lacks {', '.join(missing)}")
    theta, scaling = _hf_rope(config)
    n_heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_heads
    if head_dim * n_heads != config["hidden_size"]:
        raise ValueError(f"head_dim ({head_dim}) * num_attention_heads ({n_heads}) != "
                         f"hidden_size ({config['hidden_size']}) is not supported")
    kwargs = dict(
        dim=config["hidden_size"],
        n_layers=config["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=config.get("num_key_value_heads") or n_heads,
        vocab_size=config["vocab_size"],
        hidden_dim=config["intermediate_size"],
        norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_theta=theta,
        rope_scaling=scaling,
        max_seq_len=config.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )
    kwargs.update(overrides)
    return ModelArgs(**kwargs)


# ---------------------------------------------------------------------------- Meta params.json
# Meta's reference code hard-codes Llama 3.1's scaling (factor 8, low 1, high 4, 8192 tokens)
# behind `use_scaled_rope`. Llama 3.2 1B and 3B were trained with factor 32 (their config.json
# says so, and Meta confirmed it in meta-llama/llama-models#166 and #241), but their
# params.json still only says `use_scaled_rope: true`. Later llama-models versions accept
# `rope_scaling_factor` (and `rope_high_freq_factor`); when absent, the factor is 32 for models
# narrower than 4096 (the 3.2 1B/3B) and 8 otherwise (3.1 8B/70B/405B, 3.2 Vision, 3.3 70B).
_META_SCALING = {"low_freq_factor": 1.0, "high_freq_factor": 4.0,
                 "original_max_position_embeddings": 8192}
_META_UNSUPPORTED = {  # key -> value that is harmless
    "moe_args": None, "use_qk_norm": False, "nope_layer_interval": None,
    "quantization_args": None, "vision_chunk_size": -1, "vision_num_cross_attention_layers": -1,
    "vision_model": None,
}


def meta_rope_scaling(params: dict[str, Any]) -> Optional[dict]:
    """The Llama 3.1-style RoPE scaling a Meta params.json asks for (None: no scaling)."""
    if not params.get("use_scaled_rope", False):
        return None
    factor = params.get("rope_scaling_factor")
    if factor is None:
        factor = 32.0 if params["dim"] < 4096 else 8.0
    out = {"factor": float(factor), **_META_SCALING}
    if params.get("rope_high_freq_factor") is not None:
        out["high_freq_factor"] = float(params["rope_high_freq_factor"])
    return out


def args_from_meta_params(params: dict[str, Any], vocab_size: Optional[int] = None,
                          **overrides: Any) -> ModelArgs:
    """ModelArgs from a Meta params.json (Llama 3, 3.1, 3.2, 3.3).

    `vocab_size` fills in params.json's -1 ("take it from the tokenizer"). `max_seq_len` is not
    in Meta's file: 131072 with scaled RoPE (3.1+), else 8192 (Llama 3), unless given.
    """
    if not isinstance(params, dict):
        raise ValueError(f"params.json must hold a JSON object, got {type(params).__name__}")
    params = params.get("model", params)  # some exports nest the arguments under "model"
    for key, harmless in _META_UNSUPPORTED.items():
        if params.get(key, harmless) != harmless:
            raise ValueError(f"params.json sets {key}={params[key]!r}: only plain Llama 3 text "
                             "models are supported (no vision, MoE, QK-norm or quantization)")
    missing = [k for k in ("dim", "n_layers", "n_heads") if params.get(k) is None]
    if missing:
        raise ValueError(f"params.json lacks {', '.join(missing)}")
    vocab = params.get("vocab_size", -1)
    if vocab in (None, -1):
        vocab = vocab_size
    scaling = meta_rope_scaling(params)
    kwargs = dict(
        dim=params["dim"],
        n_layers=params["n_layers"],
        n_heads=params["n_heads"],
        n_kv_heads=params.get("n_kv_heads") or params["n_heads"],
        vocab_size=vocab,
        multiple_of=params.get("multiple_of", 256),
        ffn_dim_multiplier=params.get("ffn_dim_multiplier"),
        norm_eps=params.get("norm_eps", 1e-5),
        rope_theta=float(params.get("rope_theta", 500000.0)),
        rope_scaling=scaling,
        max_seq_len=params.get("max_seq_len") or (131072 if scaling else 8192),
    )
    kwargs.update(overrides)
    return ModelArgs(**kwargs)


def _meta_ffn_fields(args: ModelArgs) -> tuple[int, Optional[float]]:
    """(multiple_of, ffn_dim_multiplier) that make Meta's rule give this model's FFN width.

    A model read from a Hugging Face config only knows the width (intermediate_size): look
    for the simplest pair that reproduces it (no multiplier first, then a rounded one).
    """
    if args.hidden_dim is None:
        return args.multiple_of, args.ffn_dim_multiplier
    base = int(2 * 4 * args.dim / 3)
    ratio = args.hidden_dim / base
    candidates = [None, round(ratio, 2), round(ratio, 4), (args.hidden_dim + 0.5) / base]
    for multiplier in dict.fromkeys(candidates):
        for multiple_of in (1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1):
            if ffn_hidden_dim(args.dim, multiple_of, multiplier) == args.hidden_dim:
                return multiple_of, multiplier
    raise ValueError(
        f"hidden_dim ({args.hidden_dim}) cannot be produced by Meta's rule for dim {args.dim} "
        "with any multiple_of/ffn_dim_multiplier: params.json cannot express it")


def args_to_meta_params(args: ModelArgs) -> dict[str, Any]:
    """The params.json Meta's code reads for this model (refuses what it cannot express)."""
    multiple_of, multiplier = _meta_ffn_fields(args)
    params: dict[str, Any] = {
        "dim": args.dim, "n_layers": args.n_layers, "n_heads": args.n_heads,
        "n_kv_heads": args.kv_heads, "vocab_size": args.vocab_size,
        "multiple_of": multiple_of, "ffn_dim_multiplier": multiplier,
        "norm_eps": args.norm_eps, "rope_theta": args.rope_theta,
        "use_scaled_rope": args.rope_scaling is not None, "max_seq_len": args.max_seq_len,
    }
    if args.rope_scaling is not None:
        s = args.rope_scaling
        fixed = {k: s[k] for k in ("low_freq_factor", "original_max_position_embeddings")}
        if fixed != {k: _META_SCALING[k] for k in fixed}:
            raise ValueError(f"rope_scaling {s} cannot be written to params.json: Meta's code "
                             "fixes low_freq_factor=1 and original_max_position_embeddings=8192")
        params["rope_scaling_factor"] = s["factor"]
        params["rope_high_freq_factor"] = s["high_freq_factor"]
    return params
