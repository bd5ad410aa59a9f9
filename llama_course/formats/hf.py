"""Hugging Face Llama folders: `config.json` + `model.safetensors` (or shards and their index).

Reading renames each tensor to Meta's name and undoes the q/k permutation as the tensor is
read (`convert.to_meta_layout`); writing does the reverse, one tensor at a time, so that
`transformers.LlamaForCausalLM.from_pretrained` loads the folder with identical logits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from ..config import ModelArgs
from ..convert import (SKIPPED_HF, args_from_hf_config, args_to_hf_config, hf_to_meta_name,
                       meta_to_hf_name, to_hf_layout, to_meta_layout)
from ..tensor_io import (INDEX_FILE, MODEL_FILE, MappedSource, SafetensorsSource, TensorSource,
                         atomic_write_bytes, read_json, safetensors_names,
                         write_safetensors_folder)

NAME = "hf"
CONFIG_FILE = "config.json"


def detect(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def read(path: Path) -> tuple[ModelArgs, TensorSource]:
    args = args_from_hf_config(read_json(path / CONFIG_FILE))
    return args, read_weights(path, args)


def read_weights(folder: Path, args: ModelArgs) -> TensorSource:
    """The folder's safetensors, seen under Meta's names and in Meta's q/k layout."""
    def rename(name: str):
        return None if SKIPPED_HF.match(name) else hf_to_meta_name(name)

    return MappedSource(_open_safetensors(folder), rename,
                        lambda meta, t: to_meta_layout(meta, t, args))


def _open_safetensors(folder: Path) -> SafetensorsSource:
    """`model.safetensors`, or the shards the index lists (each one must be there)."""
    if (folder / MODEL_FILE).is_file():
        return SafetensorsSource({n: folder / MODEL_FILE
                                  for n in safetensors_names(folder / MODEL_FILE)})
    if (folder / INDEX_FILE).is_file():
        index = read_json(folder / INDEX_FILE)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{folder / INDEX_FILE} has no 'weight_map'")
        files = {}
        for name, shard in weight_map.items():
            if not (folder / shard).is_file():
                raise FileNotFoundError(f"shard {shard} listed in {INDEX_FILE} is missing from "
                                        f"{folder}: the download is incomplete")
            files[name] = folder / shard
        return SafetensorsSource(files)
    others = sorted(p.name for p in folder.glob("*.bin")) + sorted(
        p.name for p in folder.glob("*.safetensors"))
    extra = f" (found {', '.join(others[:4])}; only safetensors are read)" if others else ""
    raise FileNotFoundError(f"{folder} has {CONFIG_FILE} but neither {MODEL_FILE} nor "
                            f"{INDEX_FILE}{extra}")


def files(path: Path) -> list[str]:
    if (path / MODEL_FILE).is_file():
        return [CONFIG_FILE, MODEL_FILE]
    index = read_json(path / INDEX_FILE)
    return [CONFIG_FILE, INDEX_FILE] + sorted(set(index["weight_map"].values()))


def save(model, path: str | Path, dtype: torch.dtype | None = None,
         max_shard_size: int | str | None = None) -> Path:
    """Write config.json and the weights (HF names, rotate-half q/k rows) in `dtype`
    (default: the model's), one tensor converted at a time; sharded with `max_shard_size`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    args = model.params
    dtype = dtype or model.tok_embeddings.weight.dtype
    state = model.state_dict()

    def maker(meta: str) -> Callable[[], torch.Tensor]:
        def make() -> torch.Tensor:
            t = to_hf_layout(meta, state[meta].detach(), args)
            return t.to(device="cpu", dtype=dtype).contiguous()
        return make

    entries = {meta_to_hf_name(meta): (tuple(t.shape), dtype, maker(meta))
               for meta, t in state.items()
               if not (meta == "output.weight" and args.tie_word_embeddings)}  # stored once
    write_safetensors_folder(path, entries, max_shard_size)
    config = args_to_hf_config(args, dtype=dtype)
    atomic_write_bytes(path / CONFIG_FILE, json.dumps(config, indent=2).encode())
    return path
