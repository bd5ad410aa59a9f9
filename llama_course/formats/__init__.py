"""Checkpoint formats, one small unit each, and the registry that picks one for a path.

Every unit is a module with the same four names:

    NAME              what `detect_format` returns ("hf", "meta", "llama_course", "gguf")
    detect(path)      True when `path` is a checkpoint of this format
    read(path)        (ModelArgs, TensorSource): the settings, and the tensors lazily, already
                      under Meta's names and in Meta's RoPE layout
    files(path)       the files loading reads (for display)

and, where writing the format makes sense, `save(model, path, dtype=None, ...)`. The common
loader (`checkpoint.load_pretrained`) never asks which format it has: adding a format is adding
a unit here and to `FORMATS`.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from . import course, gguf, hf, meta

__all__ = ["FORMATS", "detect_format", "get_format"]

FORMATS: dict[str, ModuleType] = {  # in the order they are tried: course before plain HF
    unit.NAME: unit for unit in (course, hf, meta, gguf)}


def get_format(path: str | Path) -> ModuleType:
    """The unit that reads `path`, or a FileNotFoundError saying what was expected."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    for unit in FORMATS.values():
        if unit.detect(path):
            return unit
    if path.is_file():
        raise FileNotFoundError(f"{path} is a file: give the folder that holds the checkpoint, "
                                "or a llama.cpp/Ollama .gguf file")
    names = sorted(p.name for p in path.iterdir())
    if not names:
        raise FileNotFoundError(
            f"checkpoint folder {path} is empty: expected config.json + model.safetensors "
            "(Hugging Face) or params.json + consolidated.00.pth (Meta)")
    hint = ""
    if (path / "original" / meta.PARAMS_FILE).is_file():
        hint = f"; Meta's files are in {path / 'original'}"
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    raise FileNotFoundError(f"{path} holds neither {hf.CONFIG_FILE} (Hugging Face) nor "
                            f"{meta.PARAMS_FILE} (Meta): found {shown}{hint}")


def detect_format(path: str | Path) -> str:
    """Which kind of checkpoint `path` is: "llama_course", "hf", "meta" or "gguf"."""
    return get_format(path).NAME
