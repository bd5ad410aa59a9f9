"""Checkers for the exercises of notebook 07 (training on Tiny Shakespeare)."""

from __future__ import annotations

from typing import Callable

import torch

from ..generate import filter_top_p
from .common import close, ok


def check_targets(fn: Callable[[torch.Tensor, torch.Tensor, int],
                               tuple[torch.Tensor, torch.Tensor]]) -> bool:
    """fn(data, ix, block_size) -> (x, y): windows starting at ix and the next tokens."""
    data = torch.arange(100)
    ix = torch.tensor([0, 7, 90])
    x, y = fn(data, ix, 8)
    want_x = torch.stack([data[i:i + 8] for i in ix])
    if not torch.equal(x, want_x):
        raise AssertionError(f"inputs are wrong: got\n{x}\nexpected\n{want_x}")
    if not torch.equal(y, want_x + 1):
        raise AssertionError(f"targets must be the inputs shifted by exactly one: got\n{y}\n"
                             f"expected\n{want_x + 1}")
    return ok("next-token targets")


def check_top_p(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> bool:
    """fn(probs, p) -> probabilities with everything outside the nucleus zeroed (not renormalised
    or renormalised: both accepted)."""
    probs = torch.softmax(torch.randn(4, 50) * 2, dim=-1)
    for p in (0.1, 0.5, 0.9, 1.0):
        got = fn(probs, p)
        want = filter_top_p(probs, p)
        got = got / got.sum(-1, keepdim=True)
        close(f"top_p(p={p})", got, want / want.sum(-1, keepdim=True))
    return ok("top-p filter")
