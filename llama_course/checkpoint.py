"""Checkpoints: Meta's and Hugging Face's layouts, loading real Llama 3 weights, exporting.

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

`load_pretrained` (behind `Transformer.from_pretrained`) reads three kinds of folder:

* Hugging Face: `config.json` + `model.safetensors`, or shards listed in
  `model.safetensors.index.json`. Both spellings of the RoPE settings are understood: top-level
  `rope_theta`/`rope_scaling` (every released Llama 3.x config.json) and `rope_parameters`
  (what transformers 5 writes).
* Meta: `params.json` + `consolidated.00.pth` (one file; merging model-parallel shards is not
  supported).
* This course's own folders (`save_pretrained`): a Hugging Face folder plus `llama_course.json`
  holding the exact `ModelArgs`. Other files in the folder (tokenizer, training state, metrics)
  are ignored.

Memory: the model is first built on PyTorch's "meta" device (shapes, no storage), then each
tensor is read from a memory-mapped file, converted to the target dtype and device, and
assigned into place. Peak memory is about one copy of the model in the target dtype plus one
tensor, so Llama 3.2 1B in bfloat16 (2.5 GB) loads on a 12 GB Colab CPU runtime.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from .config import ModelArgs
from .ffn import ffn_hidden_dim
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
_HF_LAYER_KEYS = {hf: meta for meta, hf in _LAYER_KEYS.items()}

# Buffers some checkpoints carry that the model recomputes from rope_theta: skipped on load.
_SKIPPED_HF = re.compile(r"(.*\.)?rotary_emb\.inv_freq$")
_SKIPPED_META = {"rope.freqs"}  # Llama 2's consolidated.*.pth carry the RoPE table


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
        if _SKIPPED_HF.match(name):
            continue  # a buffer some old checkpoints carry; recomputed from rope_theta
        meta = hf_to_meta_name(name)
        out[meta] = _hf_to_meta_tensor(meta, t, args)
    if "output.weight" not in out and args.tie_word_embeddings:
        out["output.weight"] = out["tok_embeddings.weight"]
    return out


def _hf_to_meta_tensor(meta_name: str, t: torch.Tensor, args: ModelArgs) -> torch.Tensor:
    if meta_name.endswith("attention.wq.weight"):
        return permute_qk_hf_to_meta(t, args.n_heads)
    if meta_name.endswith("attention.wk.weight"):
        return permute_qk_hf_to_meta(t, args.kv_heads)
    return t


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


# ---------------------------------------------------------------------------- file names
MODEL_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
ARGS_FILE = "llama_course.json"  # the exact ModelArgs, next to the HF config
META_PARAMS_FILE = "params.json"
META_WEIGHTS_GLOB = "consolidated.*.pth"
_SHARD_RE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors$")


def detect_format(path: str | Path) -> str:
    """Which kind of checkpoint folder `path` is: "llama_course", "hf" or "meta".

    Raises FileNotFoundError for a missing or empty folder, or one holding neither
    config.json nor params.json.
    """
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is a file: give the folder that holds the checkpoint")
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        raise FileNotFoundError(
            f"checkpoint folder {folder} is empty: expected config.json + model.safetensors "
            "(Hugging Face) or params.json + consolidated.00.pth (Meta)")
    if CONFIG_FILE in names:
        return "llama_course" if ARGS_FILE in names else "hf"
    if META_PARAMS_FILE in names:
        return "meta"
    hint = ""
    if (folder / "original" / META_PARAMS_FILE).is_file():
        hint = f"; Meta's files are in {folder / 'original'}"
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    raise FileNotFoundError(f"{folder} holds neither {CONFIG_FILE} (Hugging Face) nor "
                            f"{META_PARAMS_FILE} (Meta): found {shown}{hint}")


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON ({e}): truncated or corrupt?") from None


# ---------------------------------------------------------------------------- tensor sources
class _Source:
    """Tensors of one checkpoint, read lazily: names, shapes and dtypes first, data on demand."""

    def names(self) -> list[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def dtype(self, name: str) -> torch.dtype: ...
    def get(self, name: str) -> torch.Tensor: ...
    def where(self, name: str) -> str: ...
    def close(self) -> None: ...


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
              "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
              "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
              "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
              "F8_E5M2": getattr(torch, "float8_e5m2", None)}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items() if v is not None}
_PLAIN_FLOATS = {torch.float16, torch.bfloat16, torch.float32, torch.float64}


class _SafetensorsSource(_Source):
    """One or several .safetensors files, memory-mapped by the safetensors library."""

    def __init__(self, files: dict[str, Path]):  # tensor name -> file
        from safetensors import safe_open

        self._file_of = files
        self._handles: dict[Path, Any] = {}
        self._meta: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        for file in dict.fromkeys(files.values()):
            try:
                handle = safe_open(str(file), framework="pt", device="cpu")
                self._handles[file] = handle
                keys = set(handle.keys())
            except Exception as e:  # SafetensorError is not importable in every version
                self.close()
                raise ValueError(f"{file} is not a readable safetensors file "
                                 f"(truncated or corrupt?): {e}") from None
            for name in [n for n, f in files.items() if f == file]:
                if name not in keys:
                    self.close()
                    raise ValueError(f"{file.name} does not hold tensor {name}, which "
                                     f"{INDEX_FILE} says it does")
                sl = handle.get_slice(name)
                dtype = _ST_DTYPES.get(sl.get_dtype())
                if dtype is None:
                    self.close()
                    raise ValueError(f"tensor {name} in {file.name} has dtype "
                                     f"{sl.get_dtype()}, which is not supported")
                self._meta[name] = (tuple(sl.get_shape()), dtype)

    def names(self):
        return list(self._file_of)

    def shape(self, name):
        return self._meta[name][0]

    def dtype(self, name):
        return self._meta[name][1]

    def get(self, name):
        file = self._file_of[name]
        try:
            return self._handles[file].get_tensor(name)
        except Exception as e:
            raise ValueError(f"could not read tensor {name} from {file} "
                             f"(truncated or corrupt?): {e}") from None

    def where(self, name):
        return self._file_of[name].name

    def close(self):
        for handle in self._handles.values():
            exit_ = getattr(handle, "__exit__", None)
            if exit_ is not None:
                try:
                    exit_(None, None, None)
                except Exception:
                    pass
        self._handles = {}


class _DictSource(_Source):
    """A state dict already in memory (or memory-mapped by torch.load)."""

    def __init__(self, tensors: dict[str, torch.Tensor], file: Path):
        self._tensors = tensors
        self._file = file

    def names(self):
        return list(self._tensors)

    def shape(self, name):
        return tuple(self._tensors[name].shape)

    def dtype(self, name):
        return self._tensors[name].dtype

    def get(self, name):
        return self._tensors[name]

    def where(self, name):
        return self._file.name

    def close(self):
        self._tensors = {}


def _safe_torch_load(file: Path) -> dict[str, torch.Tensor]:
    """torch.load with weights_only=True (never arbitrary pickles), memory-mapped when possible.

    Turns the ways this goes wrong into ValueErrors that name the file.
    """
    if file.stat().st_size == 0:
        raise ValueError(f"{file} is empty (0 bytes): the download or copy was cut short")
    try:
        try:
            obj = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(file, map_location="cpu", weights_only=True)  # old pickle format
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        raise ValueError(
            f"{file} holds Python objects other than tensors, which torch.load(weights_only=True) "
            f"refuses to unpickle (a checkpoint must be plain tensors; unpickling arbitrary "
            f"objects can run code). Detail: {first}") from None
    except (RuntimeError, OSError, EOFError) as e:
        raise ValueError(f"{file} could not be read by torch.load: it looks truncated or "
                         f"corrupt ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{file} holds a {type(obj).__name__}, not a dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{file} holds entries that are not tensors: {bad[0]!r} "
                         f"({type(obj[bad[0]]).__name__}); expected a flat dict of tensors")
    return obj


# ---------------------------------------------------------------------------- opening folders
def _open_hf(folder: Path, course: bool) -> tuple[ModelArgs, _Source]:
    config = _read_json(folder / CONFIG_FILE)
    if course:
        data = _read_json(folder / ARGS_FILE)
        if not isinstance(data, dict) or "model_args" not in data:
            raise ValueError(f"{folder / ARGS_FILE} has no 'model_args'")
        args = ModelArgs.from_dict(data["model_args"])
    else:
        args = args_from_hf_config(config)
    if (folder / MODEL_FILE).is_file():
        files = {name: folder / MODEL_FILE for name in _safetensors_names(folder / MODEL_FILE)}
    elif (folder / INDEX_FILE).is_file():
        index = _read_json(folder / INDEX_FILE)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{folder / INDEX_FILE} has no 'weight_map'")
        files = {}
        for name, shard in weight_map.items():
            file = folder / shard
            if not file.is_file():
                raise FileNotFoundError(f"shard {shard} listed in {INDEX_FILE} is missing from "
                                        f"{folder}: the download is incomplete")
            files[name] = file
    else:
        others = sorted(p.name for p in folder.glob("*.bin")) + sorted(
            p.name for p in folder.glob("*.safetensors"))
        extra = f" (found {', '.join(others[:4])}; only safetensors are read)" if others else ""
        raise FileNotFoundError(f"{folder} has {CONFIG_FILE} but neither {MODEL_FILE} nor "
                                f"{INDEX_FILE}{extra}")
    return args, _SafetensorsSource(files)


def _safetensors_names(file: Path) -> list[str]:
    """The tensor names of one safetensors file (a clear error if it cannot be read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            return list(f.keys())
    except Exception as e:  # SafetensorError is not importable in every version
        raise ValueError(f"{file} is not a readable safetensors file "
                         f"(truncated or corrupt?): {e}") from None


def _open_meta(folder: Path) -> tuple[ModelArgs, _Source]:
    shards = sorted(folder.glob(META_WEIGHTS_GLOB))
    if not shards:
        raise FileNotFoundError(f"{folder} has {META_PARAMS_FILE} but no consolidated.00.pth")
    if len(shards) > 1:
        raise ValueError(
            f"{folder} holds {len(shards)} model-parallel shards ({shards[0].name} ... "
            f"{shards[-1].name}): merging model-parallel shards is not supported. Use the "
            "Hugging Face version of this model (config.json + safetensors) instead")
    params = _read_json(folder / META_PARAMS_FILE)
    tensors = _safe_torch_load(shards[0])
    for name in _SKIPPED_META & set(tensors):
        del tensors[name]
    if "tok_embeddings.weight" not in tensors:
        raise ValueError(f"{shards[0]} has no tok_embeddings.weight: not a Llama checkpoint")
    emb = tensors["tok_embeddings.weight"]
    out = tensors.get("output.weight")
    # Meta stores the output head even when it is tied (Llama 3.2 1B/3B): tie it back when it
    # is the very same matrix, so the model holds it once (as Hugging Face's config says).
    tied = out is None or (out.shape == emb.shape and torch.equal(out, emb))
    if tied and out is not None:
        del tensors["output.weight"]
    args = args_from_meta_params(params, vocab_size=emb.shape[0], tie_word_embeddings=tied)
    return args, _DictSource(tensors, shards[0])


# ---------------------------------------------------------------------------- loading
def _meta_name_and_transform(fmt: str, name: str
                             ) -> Optional[tuple[str, Callable[[torch.Tensor, ModelArgs], torch.Tensor]]]:
    if fmt == "meta":
        return name, lambda t, args: t
    if _SKIPPED_HF.match(name):
        return None
    meta = hf_to_meta_name(name)
    return meta, lambda t, args: _hf_to_meta_tensor(meta, t, args)


def load_pretrained(cls, path: str | Path, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None):
    """Build `cls` (a Transformer) from a Hugging Face, Meta, or llama_course folder.

    `dtype` None keeps the checkpoint's own dtype (that of its embedding matrix); `device`
    None keeps the weights on the CPU. Every tensor is checked against the shape the config
    implies before it is used, and converted to `dtype`/`device` as it is read. The model comes
    back in eval mode (dropout off); call `.train()` to train it further.
    """
    folder = Path(path)
    fmt = detect_format(folder)
    if fmt == "meta":
        args, source = _open_meta(folder)
    else:
        args, source = _open_hf(folder, course=(fmt == "llama_course"))
    try:
        return _build(cls, args, source, fmt, device, dtype)
    finally:
        source.close()


def read_model_args(path: str | Path) -> ModelArgs:
    """The ModelArgs a checkpoint folder describes, without loading its weights (for sizing
    memory before a load). Meta folders need a peek at the embedding matrix (vocabulary size,
    tied head), which the memory map makes cheap."""
    folder = Path(path)
    fmt = detect_format(folder)
    args, source = _open_meta(folder) if fmt == "meta" else _open_hf(folder, fmt == "llama_course")
    source.close()
    return args


def _build(cls, args: ModelArgs, source: _Source, fmt: str, device, dtype):
    with torch.device("meta"):  # shapes only: no memory until the real tensors arrive
        model = cls(args)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    device = torch.device(device) if device is not None else torch.device("cpu")

    names = source.names()
    plan = []  # (name in the checkpoint, Meta name, transform)
    for name in names:
        mapped = _meta_name_and_transform(fmt, name)
        if mapped is None:
            continue
        meta, transform = mapped
        if meta not in expected:
            raise ValueError(f"tensor {name} in {source.where(name)} does not belong to a Llama "
                             f"with n_layers={args.n_layers}: the weights do not match the config")
        shape = source.shape(name)
        if shape != expected[meta]:
            raise ValueError(
                f"tensor {name} in {source.where(name)} has shape {list(shape)}, but the config "
                f"implies {list(expected[meta])}: the weights do not match the config")
        if source.dtype(name) not in _PLAIN_FLOATS:
            raise ValueError(f"tensor {name} in {source.where(name)} has dtype "
                             f"{source.dtype(name)}: quantized checkpoints are not supported")
        if meta == "output.weight" and args.tie_word_embeddings:
            continue  # tied: the head is the embedding matrix (as transformers does)
        plan.append((name, meta, transform))
    needed = set(expected) - ({"output.weight"} if args.tie_word_embeddings else set())
    missing = sorted(needed - {meta for _, meta, _ in plan})
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        hint = ""
        if missing == ["output.weight"]:
            hint = " (tie_word_embeddings is false, so the output head must be stored)"
        raise ValueError(f"the checkpoint lacks {len(missing)} tensor(s) the config needs: "
                         f"{shown}{hint}")

    if dtype is None:
        emb = next(n for n, m, _ in plan if m == "tok_embeddings.weight")
        dtype = source.dtype(emb)
    if dtype not in _PLAIN_FLOATS:
        raise ValueError(f"dtype {dtype} is not one of float16, bfloat16, float32, float64 "
                         "(quantized checkpoints are not supported)")

    state: dict[str, torch.Tensor] = {}
    for name, meta, transform in plan:
        t = transform(source.get(name), args)
        # copy=True: never keep a view into a memory-mapped file as a parameter
        state[meta] = t.to(device=device, dtype=dtype, copy=True).contiguous()
        del t
    if args.tie_word_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    model.load_state_dict(state, assign=True, strict=True)
    if args.tie_word_embeddings:
        model.output.weight = model.tok_embeddings.weight
    return model.eval()  # ready to predict, as transformers' from_pretrained: dropout off


# ---------------------------------------------------------------------------- saving
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a CPU tensor, without a copy (bf16 included)."""
    flat = t.contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def write_safetensors(path: str | Path, tensors: dict[str, tuple[tuple[int, ...], torch.dtype,
                                                                  Callable[[], torch.Tensor]]],
                      metadata: Optional[dict[str, str]] = None) -> Path:
    """Write a .safetensors file one tensor at a time (atomically: temp file + os.replace).

    `tensors` maps each name to (shape, dtype, make), where `make()` returns the CPU tensor
    only when its turn comes, so memory holds one converted tensor at a time. The format is
    an 8-byte little-endian header length, a JSON header (dtype, shape, byte offsets of each
    tensor), then the raw bytes.
    """
    path = Path(path)
    header: dict[str, Any] = {}
    offset = 0
    for name, (shape, dtype, _) in tensors.items():
        if dtype not in _ST_NAMES:
            raise ValueError(f"cannot write dtype {dtype} to safetensors")
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": _ST_NAMES[dtype], "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as the reference writer does
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for name, (shape, dtype, make) in tensors.items():
                t = make()
                if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                    raise ValueError(f"tensor {name}: got {tuple(t.shape)} {t.dtype}, "
                                     f"announced {tuple(shape)} {dtype}")
                f.write(_tensor_bytes(t))
                del t
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(size), flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"max_shard_size {size!r} is not a size such as 2GB or 500MB")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(m.group(1)) * scale)


def save_pretrained(model, path: str | Path, dtype: torch.dtype | None = None,
                    max_shard_size: int | str | None = None) -> Path:
    """Write a Hugging Face Llama folder (config.json + model.safetensors) for `model`.

    `transformers.LlamaForCausalLM.from_pretrained(path)` loads it with identical logits; the
    exact ModelArgs go to llama_course.json so that this package restores them unchanged.
    `dtype` (default: the model's) is what the weights are stored in. With `max_shard_size`
    (bytes, or "2GB"), weights are split into model-0000k-of-0000n.safetensors files plus
    model.safetensors.index.json, as transformers does for large models. Tensors are converted
    and written one at a time, so saving needs little memory beyond the model itself.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    args = model.params
    dtype = dtype or model.tok_embeddings.weight.dtype
    state = model.state_dict()

    def maker(meta: str) -> Callable[[], torch.Tensor]:
        def make() -> torch.Tensor:
            t = state[meta].detach()
            if meta.endswith("attention.wq.weight"):
                t = permute_qk_meta_to_hf(t, args.n_heads)
            elif meta.endswith("attention.wk.weight"):
                t = permute_qk_meta_to_hf(t, args.kv_heads)
            return t.to(device="cpu", dtype=dtype).contiguous()
        return make

    entries = {}
    for meta, t in state.items():
        if meta == "output.weight" and args.tie_word_embeddings:
            continue  # stored once, as HF does for tied checkpoints
        entries[meta_to_hf_name(meta)] = (tuple(t.shape), dtype, maker(meta))
    metadata = {"format": "pt"}

    limit = None if max_shard_size is None else _parse_size(max_shard_size)
    itemsize = torch.empty((), dtype=dtype).element_size()
    shards: list[dict] = [{}]
    size = 0
    for name, entry in entries.items():
        nbytes = torch.Size(entry[0]).numel() * itemsize
        if limit is not None and shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = entry
        size += nbytes

    if len(shards) == 1:
        write_safetensors(path / MODEL_FILE, shards[0], metadata)
        stale = [path / INDEX_FILE] + [p for p in path.iterdir() if _SHARD_RE.match(p.name)]
    else:
        n = len(shards)
        weight_map, written = {}, set()
        total = sum(torch.Size(e[0]).numel() * itemsize for e in entries.values())
        for k, shard in enumerate(shards, start=1):
            fname = f"model-{k:05d}-of-{n:05d}.safetensors"
            write_safetensors(path / fname, shard, metadata)
            weight_map.update({name: fname for name in shard})
            written.add(fname)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        _atomic_write_bytes(path / INDEX_FILE, json.dumps(index, indent=2).encode())
        stale = [path / MODEL_FILE] + [p for p in path.iterdir()
                                       if _SHARD_RE.match(p.name) and p.name not in written]
    for p in stale:  # weights of an earlier save in the other layout would shadow these
        if p.is_file():
            p.unlink()
    config = args_to_hf_config(args, dtype=dtype)
    _atomic_write_bytes(path / CONFIG_FILE, json.dumps(config, indent=2).encode())
    _atomic_write_bytes(path / ARGS_FILE,
                        json.dumps({"model_args": args.to_dict()}, indent=2).encode())
    return path


def save_meta(model, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write a Meta-format folder: params.json + consolidated.00.pth (the state dict as is).

    The model's state dict already has Meta's names and Meta's RoPE layout, so nothing is
    renamed or permuted. A tied output head is stored too, as Meta's checkpoints do.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    params = args_to_meta_params(model.params)
    dtype = dtype or model.tok_embeddings.weight.dtype
    state = {k: v.detach().to(device="cpu", dtype=dtype) for k, v in model.state_dict().items()}
    if model.params.tie_word_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]  # one storage, saved once
    file = path / "consolidated.00.pth"
    tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, file)
    _atomic_write_bytes(path / META_PARAMS_FILE, json.dumps(params, indent=2).encode())
    return path


def checkpoint_files(path: str | Path) -> list[str]:
    """The files of a checkpoint folder that loading reads (for display)."""
    folder = Path(path)
    fmt = detect_format(folder)
    if fmt == "meta":
        return [META_PARAMS_FILE] + [p.name for p in sorted(folder.glob(META_WEIGHTS_GLOB))]
    files = [CONFIG_FILE] + ([ARGS_FILE] if fmt == "llama_course" else [])
    if (folder / MODEL_FILE).is_file():
        return files + [MODEL_FILE]
    index = _read_json(folder / INDEX_FILE)
    return files + [INDEX_FILE] + sorted(set(index["weight_map"].values()))
