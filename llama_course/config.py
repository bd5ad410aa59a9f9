"""Model configuration: `ModelArgs`, presets, and size/memory arithmetic.

`ModelArgs` keeps the field names of Meta's `llama/model.py` (meta-llama/llama3) so that a
`params.json` from a real checkpoint maps onto it one to one, and its defaults are Llama 3 8B,
so `ModelArgs()` *is* the 8B model. Three fields are added because real checkpoints need them:
an explicit FFN width (`hidden_dim`, Hugging Face's `intermediate_size`), Llama 3.1's RoPE
frequency scaling (`rope_scaling`) and tied input/output embeddings (Llama 3.2 1B and 3B).

The arithmetic at the bottom (parameters, weight bytes, KV-cache bytes) works from the config
alone, so it answers "how big is Llama 3 8B?" without allocating eight billion parameters.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .ffn import ffn_hidden_dim

# Llama 3.1's RoPE scaling as it appears in Hugging Face's config.json (`rope_type` "llama3").
LLAMA31_ROPE_SCALING = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
# Llama 3.2 1B/3B use the same scheme with a larger factor.
LLAMA32_ROPE_SCALING = {**LLAMA31_ROPE_SCALING, "factor": 32.0}

_ROPE_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                      "original_max_position_embeddings")


@dataclass
class ModelArgs:
    """Every number that fixes a Llama 3 model's shape. Defaults: Llama 3 8B."""

    dim: int = 4096                   # width of the residual stream (HF: hidden_size)
    n_layers: int = 32                # number of TransformerBlocks stacked
    n_heads: int = 32                 # query heads; head_dim = dim // n_heads = 128
    n_kv_heads: Optional[int] = 8     # key/value heads (grouped-query attention); None = n_heads
    vocab_size: int = 128256          # Llama 3's tokenizer: 128,000 BPE tokens + 256 special
    multiple_of: int = 1024           # the FFN width is rounded up to a multiple of this
    ffn_dim_multiplier: Optional[float] = 1.3  # widens the SwiGLU FFN beyond 8/3 * dim
    norm_eps: float = 1e-5            # keeps RMSNorm finite for an all-zero vector
    rope_theta: float = 500000.0      # RoPE base; Llama 2 used 10,000, Llama 3 raised it for 8K context
    max_batch_size: int = 32          # largest batch the KV cache is sized for by default
    max_seq_len: int = 8192           # the context the model was trained on
    # --- beyond Meta's ModelArgs: what real checkpoints need ---
    hidden_dim: Optional[int] = None  # explicit FFN width (HF: intermediate_size); overrides the rule
    rope_scaling: Optional[dict] = None  # Llama 3.1 frequency scaling (see LLAMA31_ROPE_SCALING)
    tie_word_embeddings: bool = False    # output head shares the embedding matrix (Llama 3.2 1B/3B)
    dropout: float = 0.0  # training-only regularisation for small data sets; not in Llama 3

    def __post_init__(self) -> None:
        self._check()

    # ------------------------------------------------------------------ validation
    def _check(self) -> None:
        if self.vocab_size is None or self.vocab_size == -1:
            raise ValueError(
                f"vocab_size ({self.vocab_size}) is not set: Meta's -1 means 'take it from the "
                "tokenizer', so pass vocab_size=tokenizer.vocab_size")
        for name in ("dim", "n_layers", "n_heads", "vocab_size", "multiple_of",
                     "max_batch_size", "max_seq_len"):
            _check_positive_int(name, getattr(self, name))
        for name in ("n_kv_heads", "hidden_dim"):
            if getattr(self, name) is not None:
                _check_positive_int(name, getattr(self, name))
        for name in ("norm_eps", "rope_theta"):
            _check_positive_float(name, getattr(self, name))
        if self.ffn_dim_multiplier is not None:
            _check_positive_float("ffn_dim_multiplier", self.ffn_dim_multiplier)
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) \
                or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout ({self.dropout!r}) must be in [0, 1)")
        if self.dim % self.n_heads != 0:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.n_heads % self.kv_heads != 0:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.kv_heads})")
        if self.head_dim % 2 != 0:
            raise ValueError(
                f"head_dim (dim // n_heads = {self.dim} // {self.n_heads} = {self.head_dim}) "
                "must be even: RoPE rotates pairs of dimensions")
        if not isinstance(self.tie_word_embeddings, bool):
            raise ValueError(
                f"tie_word_embeddings ({self.tie_word_embeddings!r}) must be True or False")
        if self.rope_scaling is not None:
            self.rope_scaling = _check_rope_scaling(self.rope_scaling)

    # ------------------------------------------------------------------ derived sizes
    @property
    def kv_heads(self) -> int:
        """n_kv_heads with Meta's None resolved (None means one K/V head per query head)."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def n_rep(self) -> int:
        """How many query heads share one key/value head."""
        return self.n_heads // self.kv_heads

    @property
    def ffn_hidden_dim(self) -> int:
        """The SwiGLU width: the explicit override if given, else Meta's rounding rule."""
        if self.hidden_dim is not None:
            return self.hidden_dim
        return ffn_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelArgs":
        """Build from a dict, refusing unknown keys (a typo must not be silently ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelArgs field(s): {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> "ModelArgs":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} ({value!r}) must be an integer")
    if value <= 0:
        raise ValueError(f"{name} ({value}) must be positive")


def _check_positive_float(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} ({value!r}) must be a number")
    if not value > 0:
        raise ValueError(f"{name} ({value}) must be positive")


def _check_rope_scaling(scaling: Any) -> dict:
    """Keep the four numbers Llama 3.1 scaling needs; accept HF's extra `rope_type` key."""
    if not isinstance(scaling, dict):
        raise ValueError(f"rope_scaling ({scaling!r}) must be a dict or None")
    rope_type = scaling.get("rope_type", scaling.get("type", "llama3"))
    if rope_type != "llama3":
        raise ValueError(f"rope_scaling type {rope_type!r} is not supported (only 'llama3')")
    missing = [k for k in _ROPE_SCALING_KEYS if k not in scaling]
    if missing:
        raise ValueError(f"rope_scaling is missing {', '.join(missing)}")
    out = {k: scaling[k] for k in _ROPE_SCALING_KEYS}
    for k in _ROPE_SCALING_KEYS:
        _check_positive_float(f"rope_scaling['{k}']", out[k])
    if out["high_freq_factor"] <= out["low_freq_factor"]:
        raise ValueError(
            f"rope_scaling['high_freq_factor'] ({out['high_freq_factor']}) must be larger than "
            f"rope_scaling['low_freq_factor'] ({out['low_freq_factor']})")
    return out


# ---------------------------------------------------------------------------- presets
# Real models: numbers from each checkpoint's params.json / config.json.
# Course models: sized for a laptop CPU (minutes) or one GPU (a couple of minutes).
_SHAKESPEARE_VOCAB = 68  # 65 characters of Tiny Shakespeare + 3 special tokens

PRESETS: dict[str, dict] = {
    "llama3-8b": dict(),  # the defaults
    "llama3.1-8b": dict(rope_scaling=LLAMA31_ROPE_SCALING, max_seq_len=131072),
    "llama3.2-1b": dict(dim=2048, n_layers=16, n_heads=32, n_kv_heads=8, multiple_of=256,
                        ffn_dim_multiplier=1.5, rope_scaling=LLAMA32_ROPE_SCALING,
                        max_seq_len=131072, tie_word_embeddings=True),
    "llama3.2-3b": dict(dim=3072, n_layers=28, n_heads=24, n_kv_heads=8, multiple_of=256,
                        ffn_dim_multiplier=1.0, rope_scaling=LLAMA32_ROPE_SCALING,
                        max_seq_len=131072, tie_word_embeddings=True),
    # a few thousand parameters: unit tests and quick demos
    "tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=_SHAKESPEARE_VOCAB,
                 multiple_of=32, ffn_dim_multiplier=None, rope_theta=10000.0,
                 max_batch_size=8, max_seq_len=128),
    # nanoGPT's CPU size: after the search in benchmarks/tune_cpu.py, still the best model for
    # 120 s on 2 CPU cores (wider or deeper ones see too few tokens in that time)
    "shakespeare-cpu": dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2,
                            vocab_size=_SHAKESPEARE_VOCAB, multiple_of=32,
                            ffn_dim_multiplier=None, rope_theta=10000.0,
                            max_batch_size=32, max_seq_len=64),
    # ~10M parameters for one GPU: nanoGPT's shakespeare_char size (6 x 384, context 256,
    # dropout 0.2: at this size one megabyte of text is memorised within minutes)
    "shakespeare-gpu": dict(dim=384, n_layers=6, n_heads=6, n_kv_heads=2,
                            vocab_size=_SHAKESPEARE_VOCAB, multiple_of=64,
                            ffn_dim_multiplier=None, rope_theta=10000.0,
                            max_batch_size=64, max_seq_len=256, dropout=0.2),
}


def get_preset(name: str, **overrides: Any) -> ModelArgs:
    """ModelArgs for a named preset, with optional field overrides."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return ModelArgs(**{**PRESETS[name], **overrides})


# ---------------------------------------------------------------------------- arithmetic
def parameter_breakdown(args: ModelArgs) -> dict[str, int]:
    """Parameters per part of the model, computed from the shapes alone."""
    d, hd, L = args.dim, args.head_dim, args.n_layers
    attention = d * args.n_heads * hd + 2 * d * args.kv_heads * hd + args.n_heads * hd * d
    feed_forward = 3 * d * args.ffn_hidden_dim
    norms = 2 * d  # attention_norm + ffn_norm
    out = {
        "tok_embeddings": args.vocab_size * d,
        "attention": L * attention,
        "feed_forward": L * feed_forward,
        "norms": L * norms + d,  # + the final norm
        "output": 0 if args.tie_word_embeddings else args.vocab_size * d,
    }
    out["total"] = sum(out.values())
    return out


def num_parameters(args: ModelArgs) -> int:
    """Total parameter count (a tied output head is counted once)."""
    return parameter_breakdown(args)["total"]


def dtype_bytes(dtype: torch.dtype | str) -> float:
    """Bytes per element: accepts torch dtypes and the short names people say out loud."""
    names = {"fp32": 4, "float32": 4, "fp16": 2, "float16": 2, "bf16": 2, "bfloat16": 2,
             "int8": 1, "fp8": 1, "int4": 0.5}
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size()
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use a torch.dtype or one of {sorted(names)}")
    return names[dtype]


def weight_bytes(args: ModelArgs, dtype: torch.dtype | str = torch.bfloat16) -> float:
    """Memory the weights take in `dtype`."""
    return num_parameters(args) * dtype_bytes(dtype)


def kv_cache_bytes_per_token(args: ModelArgs, dtype: torch.dtype | str = torch.bfloat16) -> float:
    """One K and one V vector per layer and per KV head, for each token in the context."""
    return 2 * args.n_layers * args.kv_heads * args.head_dim * dtype_bytes(dtype)


def kv_cache_bytes(args: ModelArgs, seq_len: Optional[int] = None, batch_size: int = 1,
                   dtype: torch.dtype | str = torch.bfloat16) -> float:
    """KV-cache memory for `batch_size` sequences of `seq_len` tokens (default: full context)."""
    seq_len = args.max_seq_len if seq_len is None else seq_len
    return kv_cache_bytes_per_token(args, dtype) * seq_len * batch_size
