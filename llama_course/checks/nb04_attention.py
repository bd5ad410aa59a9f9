"""Checkers for the exercises of notebook 04 (attention and the KV cache)."""

from __future__ import annotations

from typing import Callable

import torch

from .. import attention
from .common import close, ok


def check_causal_mask(fn: Callable[[int, int], torch.Tensor]) -> bool:
    """fn(seqlen, start_pos) -> bool (seqlen, start_pos + seqlen), True where attending is allowed."""
    for T, start in ((1, 0), (5, 0), (3, 4)):
        got, want = fn(T, start), attention.causal_mask(T, start)
        if got.dtype != torch.bool or not torch.equal(got, want):
            raise AssertionError(f"seqlen={T}, start_pos={start}: got\n{got}\nexpected\n{want}")
    return ok("causal mask")


def check_repeat_kv(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> bool:
    """fn(x, n_rep) with x (B, n_kv_heads, S, D) -> (B, n_kv_heads * n_rep, S, D)."""
    x = torch.randn(2, 3, 5, 4)
    for n_rep in (1, 2, 4):
        close(f"repeat_kv(n_rep={n_rep})", fn(x, n_rep), torch.repeat_interleave(x, n_rep, dim=1))
    return ok("repeat_kv")
