"""This course's own folders: a Hugging Face folder plus `llama_course.json`.

`save` writes a complete Hugging Face folder (transformers loads it as is) and, next to it,
the exact `ModelArgs` in `llama_course.json`: the fields `config.json` cannot hold
(`max_batch_size`, `dropout`, Meta's `multiple_of`/`ffn_dim_multiplier` spelling of the FFN
width) come back unchanged. Other files in a training run's folder (tokenizer, optimizer state,
metrics) are ignored.

One source of truth: `config.json` wins for every field it has. Editing `config.json` is what
Hugging Face users do, and transformers reads only that file, so one folder must give one model
whichever library opens it: a changed `rope_theta` is used, and a `hidden_size` that no longer
fits the weights fails with the tensor and both shapes named. `llama_course.json` only fills in
what `config.json` does not say.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import ModelArgs
from ..convert import args_from_hf_config
from ..tensor_io import TensorSource, atomic_write_bytes, read_json
from . import hf

NAME = "llama_course"
ARGS_FILE = "llama_course.json"

# ModelArgs fields config.json states (the FFN width too, compared as `ffn_hidden_dim`)
_CONFIG_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "norm_eps",
                  "rope_theta", "rope_scaling", "max_seq_len", "tie_word_embeddings")


def detect(path: Path) -> bool:
    return hf.detect(path) and (path / ARGS_FILE).is_file()


def read(path: Path) -> tuple[ModelArgs, TensorSource]:
    data = read_json(path / ARGS_FILE)
    if not isinstance(data, dict) or "model_args" not in data:
        raise ValueError(f"{path / ARGS_FILE} has no 'model_args'")
    saved = ModelArgs.from_dict(data["model_args"])
    args = merge_args(saved, args_from_hf_config(read_json(path / hf.CONFIG_FILE)))
    return args, hf.read_weights(path, args)


def merge_args(saved: ModelArgs, config: ModelArgs) -> ModelArgs:
    """`saved` (llama_course.json) with every field config.json states taken from `config`.

    Where the two agree, `saved` comes back unchanged (its exact spelling of the FFN width
    included)."""
    changes = {f: getattr(config, f) for f in _CONFIG_FIELDS
               if getattr(config, f) != getattr(saved, f)}
    if changes.get("n_kv_heads") == saved.kv_heads:  # None and n_heads say the same
        del changes["n_kv_heads"]
    if config.ffn_hidden_dim != saved.ffn_hidden_dim:
        changes["hidden_dim"] = config.ffn_hidden_dim
    return saved.replace(**changes) if changes else saved


def files(path: Path) -> list[str]:
    return [hf.CONFIG_FILE, ARGS_FILE] + hf.files(path)[1:]


def save(model, path: str | Path, dtype: torch.dtype | None = None,
         max_shard_size: int | str | None = None) -> Path:
    """A Hugging Face folder (`hf.save`) plus the exact ModelArgs in llama_course.json."""
    path = hf.save(model, path, dtype=dtype, max_shard_size=max_shard_size)
    atomic_write_bytes(path / ARGS_FILE,
                       json.dumps({"model_args": model.params.to_dict()}, indent=2).encode())
    return path
