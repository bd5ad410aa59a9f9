"""Converting between Meta's and Hugging Face's checkpoint layouts.

The same Llama 3 weights are published in two forms:

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
k_proj are permuted relative to Meta's wq and wk (see `rope.permute_qk_meta_to_hf`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .config import ModelArgs
from .rope import permute_qk_hf_to_meta, permute_qk_meta_to_hf

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
    inverse = {hf: meta for meta, hf in _LAYER_KEYS.items()}
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in inverse:
        return f"layers.{parts[2]}.{inverse[parts[3]]}"
    raise ValueError(f"unexpected tensor name {name!r} in a Hugging Face Llama state dict")


def meta_to_hf_state_dict(state_dict: dict[str, torch.Tensor],
                          args: ModelArgs) -> dict[str, torch.Tensor]:
    """Meta names and interleaved RoPE rows -> HF names and rotate-half rows."""
    out = {}
    for name, t in state_dict.items():
        if name.endswith("attention.wq.weight"):
            t = permute_qk_meta_to_hf(t, args.n_heads)
        elif name.endswith("attention.wk.weight"):
            t = permute_qk_meta_to_hf(t, args.kv_heads)
        out[meta_to_hf_name(name)] = t
    return out


def hf_to_meta_state_dict(state_dict: dict[str, torch.Tensor],
                          args: ModelArgs) -> dict[str, torch.Tensor]:
    """HF names and rotate-half rows -> Meta names and interleaved rows.

    A checkpoint with tied embeddings has no `lm_head.weight`; the output head then reuses
    the embedding matrix.
    """
    out = {}
    for name, t in state_dict.items():
        if name == "model.rotary_emb.inv_freq" or name.endswith("rotary_emb.inv_freq"):
            continue  # a buffer some old checkpoints carry; recomputed from rope_theta
        meta = hf_to_meta_name(name)
        if meta.endswith("attention.wq.weight"):
            t = permute_qk_hf_to_meta(t, args.n_heads)
        elif meta.endswith("attention.wk.weight"):
            t = permute_qk_hf_to_meta(t, args.kv_heads)
        out[meta] = t
    if "output.weight" not in out and args.tie_word_embeddings:
        out["output.weight"] = out["tok_embeddings.weight"]
    return out


# ---------------------------------------------------------------------------- configs
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


def args_from_hf_config(config: dict[str, Any], **overrides: Any) -> ModelArgs:
    """ModelArgs from a Hugging Face Llama config.json (either RoPE spelling)."""
    model_type = config.get("model_type")
    if model_type != "llama":
        raise ValueError(f"config.json has model_type {model_type!r}, expected 'llama'")
    if config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act {config['hidden_act']!r} is not Llama's 'silu'")
    for flag in ("attention_bias", "mlp_bias"):
        if config.get(flag):
            raise ValueError(f"{flag}=true is not supported: Llama has no biases")
    rope = config.get("rope_parameters") or {}
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    scaling = config.get("rope_scaling")
    if rope.get("rope_type", "default") != "default":
        scaling = rope
    if scaling is not None and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
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
        rope_theta=float(theta),
        rope_scaling=scaling,
        max_seq_len=config.get("max_position_embeddings", 2048),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )
    kwargs.update(overrides)
    return ModelArgs(**kwargs)


# ---------------------------------------------------------------------------- folders
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
ARGS_FILE = "llama_course.json"  # the exact ModelArgs, next to the HF config


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one


def save_pretrained(model, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write a Hugging Face Llama folder (config.json + model.safetensors) for `model`.

    `transformers.LlamaForCausalLM.from_pretrained(path)` loads it with identical logits; the
    exact ModelArgs go to llama_course.json so that this package restores them unchanged.
    """
    from safetensors.torch import save as save_safetensors

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    args = model.params
    state = {k: v.detach() for k, v in model.state_dict().items()}
    tensors = meta_to_hf_state_dict(state, args)
    if args.tie_word_embeddings:
        del tensors["lm_head.weight"]  # stored once, as HF does for tied checkpoints
    dtype = dtype or model.tok_embeddings.weight.dtype
    tensors = {k: v.to(dtype).contiguous().cpu() for k, v in tensors.items()}
    _atomic_write_bytes(path / MODEL_FILE, save_safetensors(tensors, metadata={"format": "pt"}))
    config = args_to_hf_config(args, dtype=dtype)
    _atomic_write_bytes(path / CONFIG_FILE, json.dumps(config, indent=2).encode())
    _atomic_write_bytes(path / ARGS_FILE, json.dumps({"model_args": args.to_dict()}, indent=2).encode())
    return path


def load_pretrained(cls, path: str | Path, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None):
    """Build `cls` (a Transformer) from a folder written by `save_pretrained` or by HF."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    if not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} has no {CONFIG_FILE}: not a model folder")
    if (path / ARGS_FILE).is_file():
        args = ModelArgs.from_dict(json.loads((path / ARGS_FILE).read_text())["model_args"])
    else:
        args = args_from_hf_config(json.loads((path / CONFIG_FILE).read_text()))
    hf_state = load_file(path / MODEL_FILE)
    state = hf_to_meta_state_dict(hf_state, args)
    with torch.device("meta"):  # shapes only: no memory until the real tensors arrive
        model = cls(args)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    model.load_state_dict(state, assign=True, strict=True)
    if args.tie_word_embeddings:
        model.output.weight = model.tok_embeddings.weight
    return model.to(device) if device is not None else model
