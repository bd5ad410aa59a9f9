"""Checkers for the exercises of notebook 01 (model config)."""

from __future__ import annotations

from typing import Callable

from .. import config
from .common import ok


def check_num_parameters(fn: Callable[[config.ModelArgs], int]) -> bool:
    """fn(args) -> total parameter count; checked on the real Llama 3 presets."""
    for name in ("llama3-8b", "llama3.2-1b", "llama3.2-3b", "tiny"):
        args = config.get_preset(name)
        got, want = fn(args), config.num_parameters(args)
        if got != want:
            raise AssertionError(f"{name}: got {got:,} parameters, expected {want:,}"
                                 + (" (tied embeddings?)" if args.tie_word_embeddings else ""))
    return ok("parameter count")


def check_kv_cache_bytes(fn: Callable[[config.ModelArgs, int, int, int], float]) -> bool:
    """fn(args, seq_len, batch_size, bytes_per_element) -> bytes of K and V for all layers."""
    for name in ("llama3-8b", "llama3.2-1b"):
        args = config.get_preset(name)
        for seq_len, batch, nbytes in ((1, 1, 2), (8192, 4, 2), (1000, 1, 4)):
            got = fn(args, seq_len, batch, nbytes)
            want = config.kv_cache_bytes_per_token(args, "fp32") / 4 * nbytes * seq_len * batch
            if got != want:
                raise AssertionError(f"{name}, seq_len={seq_len}, batch={batch}, "
                                     f"{nbytes} bytes: got {got:,}, expected {want:,}")
    return ok("KV-cache size")
