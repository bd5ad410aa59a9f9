"""GGUF files (llama.cpp, Ollama, LM Studio) of the Llama architecture, dequantised on load.

A GGUF file is one file: a header of typed key/value metadata (`llama.embedding_length`,
`llama.attention.head_count_kv`, the tokenizer, ...), a table of tensors (name, shape, type,
offset) and the tensor data, often quantised in blocks of 32 or 256 weights that share a
scale. Reading it needs the `gguf` package (llama.cpp's own Python reader; an optional extra):
the file is memory-mapped, and each tensor is dequantised with `gguf.quants.dequantize` only when
the loader asks for it, so memory holds the model in the requested dtype plus one tensor.

Where llama.cpp keeps q and k. Hugging Face's checkpoints store wq and wk with their rows
reordered for rotate-half RoPE (pairs i and i + d/2, notebook 03). llama.cpp's converter
(`convert_hf_to_gguf.py`, `LlamaModel.permute`) reorders them back, because ggml runs the llama
architecture with its "normal" RoPE (`LLAMA_ROPE_TYPE_NORM`), which rotates neighbouring
pairs (2i, 2i+1) exactly like Meta's complex multiplication. A GGUF file therefore holds wq and
wk in Meta's interleaved layout, the one this course's model uses, and loading it only renames
tensors: no permutation. It is transformers, running rotate-half, that must permute again when
it reads a GGUF (its loader's `_reverse_permute_weights`); tests/test_gguf.py shows both.

Llama 3.1's RoPE scaling is not in the metadata: the converter stores the per-frequency
divisors it implies as a tensor, `rope_freqs.weight`, which is read back into `rope_scaling`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..config import LLAMA31_ROPE_SCALING, ModelArgs
from ..rope import rope_frequencies
from ..tensor_io import TensorSource

NAME = "gguf"
MAGIC = b"GGUF"
ROPE_FREQS = "rope_freqs.weight"
SUPPORTED = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
             "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS")
_NATIVE = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_GLOBAL = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight",
           "output.weight": "output.weight"}
_LAYER = {"attn_q": "attention.wq", "attn_k": "attention.wk", "attn_v": "attention.wv",
          "attn_output": "attention.wo", "ffn_gate": "feed_forward.w1",
          "ffn_down": "feed_forward.w2", "ffn_up": "feed_forward.w3",
          "attn_norm": "attention_norm", "ffn_norm": "ffn_norm"}


def gguf_to_meta_name(name: str) -> str:
    """llama.cpp's tensor name -> Meta's (`blk.3.attn_q.weight` -> `layers.3.attention.wq.weight`)."""
    if name in _GLOBAL:
        return _GLOBAL[name]
    parts = name.split(".")  # "blk", i, what, "weight"
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER \
            and parts[3] == "weight":
        return f"layers.{parts[1]}.{_LAYER[parts[2]]}.weight"
    raise ValueError(f"tensor {name} is not part of a plain Llama model (no biases, experts "
                     "or extra norms are supported)")


def _import_gguf():
    try:
        import gguf
    except ImportError:
        raise ImportError('reading GGUF files needs the `gguf` package: pip install gguf '
                          '(or pip install "llama-course[gguf]")') from None
    return gguf


def detect(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return path.suffix.lower() == ".gguf" or f.read(4) == MAGIC


def read(path: Path) -> tuple[ModelArgs, TensorSource]:
    gguf = _import_gguf()
    reader = _open_reader(path, gguf)
    meta = metadata(reader, gguf)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"{path.name} holds a model of architecture {arch!r} "
                         "(general.architecture): only 'llama' is supported")
    source = GGUFSource(reader, path, gguf)
    rope_freqs = source.rope_freqs()
    vocab_size = source.shape("tok_embeddings.weight")[0]
    tied = "output.weight" not in source.names()
    return args_from_gguf_metadata(meta, vocab_size, tied, rope_freqs), source


def files(path: Path) -> list[str]:
    return [path.name]


def _open_reader(path: Path, gguf) -> Any:
    with open(path, "rb") as f:
        head = f.read(4)
    if head != MAGIC:
        raise ValueError(f"{path} is not a GGUF file: it starts with {head!r}, not {MAGIC!r}")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # the reader's own errors are about numpy shapes
        raise ValueError(f"{path} could not be parsed as GGUF: the file looks truncated or "
                         f"corrupt ({type(e).__name__}: {e})") from None
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise ValueError(f"{path} is truncated: tensor {t.name} ends at byte "
                             f"{t.data_offset + t.n_bytes}, the file has {size}")
    return reader


def metadata(reader, gguf) -> dict[str, Any]:
    """The scalar and string metadata (arrays, such as the tokenizer's, are left out)."""
    out = {}
    for key, field in reader.fields.items():
        kind = field.types[0] if field.types else None
        if kind is None or kind == gguf.GGUFValueType.ARRAY:
            continue
        part = field.parts[field.data[0]]
        if kind == gguf.GGUFValueType.STRING:
            out[key] = bytes(part).decode("utf-8", errors="replace")
        elif kind == gguf.GGUFValueType.FLOAT32:
            out[key] = float(str(np.float32(part[0])))  # 1e-05, not 9.999999747378752e-06
        else:
            out[key] = part[0].item()
    return out


def args_from_gguf_metadata(meta: dict[str, Any], vocab_size: int, tied: bool,
                            rope_freqs: Optional[torch.Tensor] = None) -> ModelArgs:
    """ModelArgs from a llama GGUF's metadata; the vocabulary size comes from the embedding
    matrix and the tied head from the absence of `output.weight`."""
    def need(key: str) -> Any:
        if f"llama.{key}" not in meta:
            raise ValueError(f"the GGUF metadata lacks llama.{key}")
        return meta[f"llama.{key}"]

    dim, n_heads = need("embedding_length"), need("attention.head_count")
    head_dim = dim // n_heads
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        if meta.get(f"llama.{key}", head_dim) != head_dim:
            raise ValueError(f"llama.{key} is {meta[f'llama.{key}']}, not embedding_length / "
                             f"head_count = {head_dim}: not supported")
    if meta.get("llama.expert_count", 0):
        raise ValueError("llama.expert_count is set: mixture-of-experts models are not supported")
    if meta.get("llama.rope.scaling.type", "none") != "none":
        raise ValueError(f"llama.rope.scaling.type {meta['llama.rope.scaling.type']!r} is not "
                         "supported (Llama 3.1's scaling comes as rope_freqs.weight)")
    if meta.get("llama.vocab_size", vocab_size) != vocab_size:
        raise ValueError(f"llama.vocab_size is {meta['llama.vocab_size']} but token_embd.weight "
                         f"has {vocab_size} rows")
    theta = float(meta.get("llama.rope.freq_base", 10000.0))
    return ModelArgs(
        dim=dim, n_layers=need("block_count"), n_heads=n_heads,
        n_kv_heads=meta.get("llama.attention.head_count_kv", n_heads), vocab_size=vocab_size,
        hidden_dim=need("feed_forward_length"),
        norm_eps=meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5), rope_theta=theta,
        rope_scaling=None if rope_freqs is None else rope_scaling_from_factors(
            rope_freqs, head_dim, theta),
        max_seq_len=meta.get("llama.context_length", 2048), tie_word_embeddings=tied)


def rope_scaling_from_factors(factors: torch.Tensor, head_dim: int, theta: float) -> dict:
    """Llama 3.1's `rope_scaling` from llama.cpp's `rope_freqs.weight` (what each frequency is
    divided by): every Llama 3.x uses low_freq_factor 1, high_freq_factor 4 and an original
    context of 8192, so only `factor` (the largest divisor) is free; the others are checked."""
    scaling = {**LLAMA31_ROPE_SCALING, "factor": float(factors.max())}
    implied = rope_frequencies(head_dim, theta) / rope_frequencies(head_dim, theta, scaling)
    if factors.shape != implied.shape or not torch.allclose(factors.float(), implied, rtol=1e-4):
        raise ValueError(f"{ROPE_FREQS} is not Llama 3.1's RoPE scaling (factor "
                         f"{scaling['factor']}, low 1, high 4, original context 8192): "
                         "not supported")
    return scaling


class GGUFSource(TensorSource):
    """A GGUF file's tensors under Meta's names, each dequantised when it is asked for."""

    def __init__(self, reader, path: Path, gguf):
        self._reader, self._path, self._gguf = reader, path, gguf
        self._tensors: dict[str, Any] = {}
        self._rope_freqs = None
        for t in reader.tensors:
            kind = t.tensor_type.name
            if t.name == ROPE_FREQS:
                self._rope_freqs = torch.from_numpy(np.array(t.data, dtype=np.float32))
                continue
            name = gguf_to_meta_name(t.name)
            if kind not in SUPPORTED:
                raise ValueError(f"tensor {t.name} in {path.name} has type {kind}, which is not "
                                 f"supported (supported: {', '.join(SUPPORTED)})")
            self._tensors[name] = t
        if "tok_embeddings.weight" not in self._tensors:
            raise ValueError(f"{path.name} has no token_embd.weight: not a Llama model")

    def rope_freqs(self) -> Optional[torch.Tensor]:
        return self._rope_freqs

    def names(self):
        return list(self._tensors)

    def shape(self, name):
        return tuple(int(d) for d in reversed(self._tensors[name].shape.tolist()))  # ne0 last

    def dtype(self, name):
        return _NATIVE.get(self._tensors[name].tensor_type.name, torch.float32)

    def get(self, name):
        t = self._tensors[name]
        kind = t.tensor_type.name
        if kind == "BF16":  # raw bytes: reinterpret, no float32 round trip
            out = torch.from_numpy(np.array(t.data)).view(torch.bfloat16)
        elif kind in _NATIVE:
            out = torch.from_numpy(np.array(t.data))
        else:
            out = torch.from_numpy(self._gguf.quants.dequantize(t.data, t.tensor_type))
        return out.reshape(self.shape(name))

    def where(self, name):
        t = self._tensors[name]
        return f"{t.name} ({t.tensor_type.name}) in {self._path.name}"

    def close(self):
        self._tensors, self._reader = {}, None
