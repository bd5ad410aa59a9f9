"""Meta's own folders: `params.json` + `consolidated.00.pth`, as `llama model download` gives.

The state dict already has Meta's names and Meta's RoPE layout, so nothing is renamed or
permuted either way. The `.pth` file is a pickle: it is read with `torch.load(weights_only=True)`,
which accepts tensors and refuses to run any other pickled code. Model-parallel shards
(`consolidated.01.pth`, ... of the 70B and larger models) are not merged.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..config import ModelArgs
from ..convert import SKIPPED_META, args_from_meta_params, args_to_meta_params
from ..tensor_io import (DictSource, TensorSource, atomic_write, atomic_write_bytes, read_json,
                         safe_torch_load)

NAME = "meta"
PARAMS_FILE = "params.json"
WEIGHTS_GLOB = "consolidated.*.pth"
WEIGHTS_FILE = "consolidated.00.pth"


def detect(path: Path) -> bool:
    return path.is_dir() and (path / PARAMS_FILE).is_file()


def read(path: Path) -> tuple[ModelArgs, TensorSource]:
    shards = sorted(path.glob(WEIGHTS_GLOB))
    if not shards:
        raise FileNotFoundError(f"{path} has {PARAMS_FILE} but no {WEIGHTS_FILE}")
    if len(shards) > 1:
        raise ValueError(
            f"{path} holds {len(shards)} model-parallel shards ({shards[0].name} ... "
            f"{shards[-1].name}): merging model-parallel shards is not supported. Use the "
            "Hugging Face version of this model (config.json + safetensors) instead")
    params = read_json(path / PARAMS_FILE)
    tensors = safe_torch_load(shards[0])
    for name in SKIPPED_META & set(tensors):
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
    return args, DictSource(tensors, shards[0])


def files(path: Path) -> list[str]:
    return [PARAMS_FILE] + [p.name for p in sorted(path.glob(WEIGHTS_GLOB))]


def save(model, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write params.json + consolidated.00.pth (the state dict as is). A tied output head is
    stored too, as Meta's checkpoints do (one storage, so the file holds it once)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    params = args_to_meta_params(model.params)
    dtype = dtype or model.tok_embeddings.weight.dtype
    state = {k: v.detach().to(device="cpu", dtype=dtype) for k, v in model.state_dict().items()}
    if model.params.tie_word_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    with atomic_write(path / WEIGHTS_FILE) as tmp:
        torch.save(state, tmp)
    atomic_write_bytes(path / PARAMS_FILE, json.dumps(params, indent=2).encode())
    return path
