"""Checkpoints: the front door for loading and saving real Llama 3 weights (notebook 08).

`load_pretrained` (behind `Transformer.from_pretrained`) reads four kinds of checkpoint, each
handled by one unit of `llama_course.formats`:

* Hugging Face: `config.json` + `model.safetensors`, or shards listed in
  `model.safetensors.index.json` (`formats.hf`);
* Meta: `params.json` + `consolidated.00.pth` (`formats.meta`);
* this course's own folders, a Hugging Face folder plus `llama_course.json` (`formats.course`);
* a llama.cpp / Ollama `.gguf` file of the llama architecture, dequantised (`formats.gguf`).

A unit hands back the `ModelArgs` and a lazy tensor source that already speaks Meta's names and
layout; the pure conversions it uses (names, the q/k permutation, config.json and params.json)
live in `llama_course.convert`, and file handling in `llama_course.tensor_io`.

Memory: the model is first built on PyTorch's "meta" device (shapes, no storage), then each
tensor is read from a memory-mapped file, converted to the target dtype and device, and
assigned into place. Peak memory is about one copy of the model in the target dtype plus one
tensor, so Llama 3.2 1B in bfloat16 (2.5 GB) loads on a 12 GB Colab CPU runtime.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import formats
from .config import ModelArgs
from .convert import (args_from_hf_config, args_from_meta_params, args_to_hf_config,  # noqa: F401
                      args_to_meta_params, hf_to_meta_name, hf_to_meta_state_dict,
                      meta_rope_scaling, meta_to_hf_name, meta_to_hf_state_dict)
from .formats import detect_format
from .tensor_io import PLAIN_FLOATS, TensorSource, write_safetensors  # noqa: F401

__all__ = ["load_pretrained", "save_pretrained", "save_meta", "detect_format",
           "read_model_args", "checkpoint_files", "meta_to_hf_name", "hf_to_meta_name",
           "meta_to_hf_state_dict", "hf_to_meta_state_dict", "args_to_hf_config",
           "args_from_hf_config", "args_from_meta_params", "args_to_meta_params",
           "meta_rope_scaling", "write_safetensors"]


def load_pretrained(cls, path: str | Path, device: torch.device | str | None = None,
                    dtype: torch.dtype | None = None):
    """Build `cls` (a Transformer) from a Hugging Face, Meta or llama_course folder, or a GGUF file.

    `dtype` None keeps the checkpoint's own dtype (that of its embedding matrix; float32 for
    a quantised one); `device` None keeps the weights on the CPU. Every tensor is checked
    against the shape the config implies before it is used, and converted to `dtype`/`device`
    as it is read. The model comes back in eval mode (dropout off); call `.train()` to train it.
    """
    args, source = formats.get_format(path).read(Path(path))
    try:
        return build(cls, args, source, device, dtype)
    finally:
        source.close()


def read_model_args(path: str | Path) -> ModelArgs:
    """The ModelArgs a checkpoint describes, without loading its weights (for sizing memory
    before a load). Meta folders need a peek at the embedding matrix (vocabulary size, tied
    head), which the memory map makes cheap."""
    args, source = formats.get_format(path).read(Path(path))
    source.close()
    return args


def checkpoint_files(path: str | Path) -> list[str]:
    """The files of a checkpoint that loading reads (for display)."""
    return formats.get_format(path).files(Path(path))


def _check_plan(args: ModelArgs, source: TensorSource, expected: dict) -> list[str]:
    """The names to load, after checking every tensor's name, shape and dtype against `args`."""
    plan = []
    for name in source.names():
        if name not in expected:
            raise ValueError(f"tensor {source.where(name)} does not belong to a Llama with "
                             f"n_layers={args.n_layers}: the weights do not match the config")
        shape = source.shape(name)
        if shape != expected[name]:
            raise ValueError(
                f"tensor {name} ({source.where(name)}) has shape {list(shape)}, but the config "
                f"implies {list(expected[name])}: the weights do not match the config")
        if source.dtype(name) not in PLAIN_FLOATS:
            raise ValueError(f"tensor {source.where(name)} has dtype {source.dtype(name)}: "
                             "quantized checkpoints are only read from GGUF files")
        if not (name == "output.weight" and args.tie_word_embeddings):
            plan.append(name)  # a tied head is the embedding matrix (as transformers does)
    needed = set(expected) - ({"output.weight"} if args.tie_word_embeddings else set())
    missing = sorted(needed - set(plan))
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        hint = ""
        if missing == ["output.weight"]:
            hint = " (tie_word_embeddings is false, so the output head must be stored)"
        raise ValueError(f"the checkpoint lacks {len(missing)} tensor(s) the config needs: "
                         f"{shown}{hint}")
    return plan


def build(cls, args: ModelArgs, source: TensorSource, device=None, dtype=None):
    """`cls(args)` with its weights from `source` (Meta's names and layout), one tensor at a time."""
    with torch.device("meta"):  # shapes only: no memory until the real tensors arrive
        model = cls(args)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    plan = _check_plan(args, source, expected)
    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype or source.dtype("tok_embeddings.weight")
    if dtype not in PLAIN_FLOATS:
        raise ValueError(f"dtype {dtype} is not one of float16, bfloat16, float32, float64")

    state: dict[str, torch.Tensor] = {}
    for name in plan:
        t = source.get(name)
        # copy=True: never keep a view into a memory-mapped file as a parameter
        state[name] = t.to(device=device, dtype=dtype, copy=True).contiguous()
        del t
    if args.tie_word_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    model.load_state_dict(state, assign=True, strict=True)
    if args.tie_word_embeddings:
        model.output.weight = model.tok_embeddings.weight
    return model.eval()  # ready to predict, as transformers' from_pretrained: dropout off


def save_pretrained(model, path: str | Path, dtype: torch.dtype | None = None,
                    max_shard_size: int | str | None = None) -> Path:
    """Write a Hugging Face Llama folder (config.json + model.safetensors) for `model`.

    `transformers.LlamaForCausalLM.from_pretrained(path)` loads it with identical logits; the
    exact ModelArgs go to llama_course.json, which fills in what config.json cannot say
    (config.json wins where both speak: see `formats.course`). `dtype` (default: the model's)
    is what the weights are stored in. With `max_shard_size` (bytes, or "2GB"), weights are
    split into model-0000k-of-0000n.safetensors files plus model.safetensors.index.json, as
    transformers does for large models. Tensors are converted and written one at a time.
    """
    return formats.FORMATS["llama_course"].save(model, path, dtype=dtype,
                                                max_shard_size=max_shard_size)


def save_meta(model, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write a Meta-format folder: params.json + consolidated.00.pth (the state dict as is).

    The model's state dict already has Meta's names and Meta's RoPE layout, so nothing is
    renamed or permuted. A tied output head is stored too, as Meta's checkpoints do.
    """
    return formats.FORMATS["meta"].save(model, path, dtype=dtype)
