"""Files and tensors on disk: atomic writes, lazy tensor sources, safetensors writing and sharding.

A checkpoint written in place and interrupted (Ctrl-C, a killed job, a full disk) leaves half a
file where the previous good one was. Writing to a temporary name in the same folder and then
renaming it with `os.replace` (atomic on POSIX and Windows) means a reader sees the old file or
the new one, never a mix; a failed write removes its temporary file. Every file this package
writes goes through `atomic_write`.

Reading is lazy: a `TensorSource` announces names, shapes and dtypes first and hands out one
tensor at a time, from memory-mapped files, so loading holds one copy of the model plus one
tensor in flight. `safe_torch_load` reads `.pth` files without executing pickled code.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import struct
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

__all__ = ["atomic_write", "atomic_write_bytes", "read_json", "TensorSource", "SafetensorsSource",
           "DictSource", "MappedSource", "safe_torch_load", "safetensors_names",
           "write_safetensors", "write_safetensors_folder",
           "PLAIN_FLOATS", "MODEL_FILE", "INDEX_FILE"]

MODEL_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARD_RE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors$")
PLAIN_FLOATS = {torch.float16, torch.bfloat16, torch.float32, torch.float64}


# ---------------------------------------------------------------------------- writing files
@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """`with atomic_write(path) as tmp:` write to `tmp`; on success it replaces `path`, on any
    exception (KeyboardInterrupt included) the temporary file is removed and `path` untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)


def read_json(file: Path) -> Any:
    try:
        return json.loads(Path(file).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file} is not valid JSON ({e}): truncated or corrupt?") from None


# ---------------------------------------------------------------------------- tensor sources
class TensorSource:
    """Tensors of one checkpoint, read lazily: names, shapes and dtypes first, data on demand."""

    def names(self) -> list[str]: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def dtype(self, name: str) -> torch.dtype: ...
    def get(self, name: str) -> torch.Tensor: ...
    def where(self, name: str) -> str: ...  # "name in file", for error messages
    def close(self) -> None: ...


_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
              "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
              "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
              "F8_E4M3": getattr(torch, "float8_e4m3fn", None),
              "F8_E5M2": getattr(torch, "float8_e5m2", None)}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items() if v is not None}


def _unreadable(file: Path, e: Exception) -> ValueError:
    return ValueError(f"{file} is not a readable safetensors file (truncated or corrupt?): {e}")


class SafetensorsSource(TensorSource):
    """One or several .safetensors files, memory-mapped by the safetensors library."""

    def __init__(self, files: dict[str, Path]):  # tensor name -> file
        from safetensors import safe_open

        self._file_of = files
        self._handles: dict[Path, Any] = {}
        self._meta: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        try:
            for file in dict.fromkeys(files.values()):
                try:
                    handle = safe_open(str(file), framework="pt", device="cpu")
                    self._handles[file] = handle
                    keys = set(handle.keys())
                except Exception as e:  # SafetensorError is not importable in every version
                    raise _unreadable(file, e) from None
                for name in [n for n, f in files.items() if f == file]:
                    if name not in keys:
                        raise ValueError(f"{file.name} does not hold tensor {name}, which "
                                         f"{INDEX_FILE} says it does")
                    sl = handle.get_slice(name)
                    dtype = _ST_DTYPES.get(sl.get_dtype())
                    if dtype is None:
                        raise ValueError(f"tensor {name} in {file.name} has dtype "
                                         f"{sl.get_dtype()}, which is not supported")
                    self._meta[name] = (tuple(sl.get_shape()), dtype)
        except BaseException:
            self.close()
            raise

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
        return f"{name} in {self._file_of[name].name}"

    def close(self):
        for handle in self._handles.values():
            with contextlib.suppress(Exception):
                getattr(handle, "__exit__", lambda *a: None)(None, None, None)
        self._handles = {}


class DictSource(TensorSource):
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
        return f"{name} in {self._file.name}"

    def close(self):
        self._tensors = {}


class MappedSource(TensorSource):
    """Another source seen through a renaming and a per-tensor transform (same shape), so that
    a format's tensors reach the loader under Meta's names and in Meta's layout.

    `rename(name)` gives the new name, or None to leave the tensor out.
    """

    def __init__(self, inner: TensorSource, rename: Callable[[str], Optional[str]],
                 transform: Callable[[str, torch.Tensor], torch.Tensor] = lambda n, t: t):
        self._inner, self._transform = inner, transform
        self._original = {}
        for name in inner.names():
            new = rename(name)
            if new is not None:
                self._original[new] = name

    def names(self):
        return list(self._original)

    def shape(self, name):
        return self._inner.shape(self._original[name])

    def dtype(self, name):
        return self._inner.dtype(self._original[name])

    def get(self, name):
        return self._transform(name, self._inner.get(self._original[name]))

    def where(self, name):
        return self._inner.where(self._original[name])

    def close(self):
        self._inner.close()


def safe_torch_load(file: Path) -> dict[str, torch.Tensor]:
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


# ---------------------------------------------------------------------------- safetensors folders
def safetensors_names(file: Path) -> list[str]:
    """The tensor names of one safetensors file (a clear error if it cannot be read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            return list(f.keys())
    except Exception as e:  # SafetensorError is not importable in every version
        raise _unreadable(file, e) from None


# An entry: (shape, dtype, make), where make() returns the CPU tensor only when its turn comes.
Entry = tuple[tuple[int, ...], torch.dtype, Callable[[], torch.Tensor]]


def _nbytes(entry: Entry) -> int:
    return torch.Size(entry[0]).numel() * torch.empty((), dtype=entry[1]).element_size()


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a CPU tensor, without a copy (bf16 included)."""
    flat = t.contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def write_safetensors(path: str | Path, tensors: dict[str, Entry],
                      metadata: Optional[dict[str, str]] = None) -> Path:
    """Write a .safetensors file one tensor at a time, atomically.

    `tensors` maps each name to (shape, dtype, make), so memory holds one converted tensor at
    a time. The format is an 8-byte little-endian header length, a JSON header (dtype, shape,
    byte offsets of each tensor), then the raw bytes.
    """
    path = Path(path)
    header: dict[str, Any] = {}
    offset = 0
    for name, entry in tensors.items():
        if entry[1] not in _ST_NAMES:
            raise ValueError(f"cannot write dtype {entry[1]} to safetensors")
        header[name] = {"dtype": _ST_NAMES[entry[1]], "shape": list(entry[0]),
                        "data_offsets": [offset, offset + _nbytes(entry)]}
        offset += _nbytes(entry)
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned, as the reference writer does
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, (shape, dtype, make) in tensors.items():
            t = make()
            if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                raise ValueError(f"tensor {name}: got {tuple(t.shape)} {t.dtype}, "
                                 f"announced {tuple(shape)} {dtype}")
            f.write(_tensor_bytes(t))
            del t
    return path


def parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", str(size), flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"max_shard_size {size!r} is not a size such as 2GB or 500MB")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(m.group(1)) * scale)


def write_safetensors_folder(path: Path, entries: dict[str, Entry],
                             max_shard_size: int | str | None = None) -> None:
    """`model.safetensors`, or with `max_shard_size` shards model-0000k-of-0000n.safetensors and
    model.safetensors.index.json, as transformers writes large models. Weights of an earlier
    save in the other layout are removed: they would shadow or confuse the new ones."""
    limit = None if max_shard_size is None else parse_size(max_shard_size)
    shards: list[dict[str, Entry]] = [{}]
    size = 0
    for name, entry in entries.items():
        if limit is not None and shards[-1] and size + _nbytes(entry) > limit:
            shards.append({})
            size = 0
        shards[-1][name] = entry
        size += _nbytes(entry)
    metadata = {"format": "pt"}
    if len(shards) == 1:
        write_safetensors(path / MODEL_FILE, shards[0], metadata)
        stale = [path / INDEX_FILE] + [p for p in path.iterdir() if SHARD_RE.match(p.name)]
    else:
        n, weight_map = len(shards), {}
        for k, shard in enumerate(shards, start=1):
            fname = f"model-{k:05d}-of-{n:05d}.safetensors"
            write_safetensors(path / fname, shard, metadata)
            weight_map.update({name: fname for name in shard})
        index = {"metadata": {"total_size": sum(_nbytes(e) for e in entries.values())},
                 "weight_map": weight_map}
        atomic_write_bytes(path / INDEX_FILE, json.dumps(index, indent=2).encode())
        stale = [path / MODEL_FILE] + [p for p in path.iterdir() if SHARD_RE.match(p.name)
                                       and p.name not in set(weight_map.values())]
    for p in stale:
        if p.is_file():
            p.unlink()
