"""Checkers for the exercises of notebook 05 (SwiGLU feed-forward)."""

from __future__ import annotations

from typing import Callable

import torch

from .. import ffn
from .common import close, ok


def check_ffn_hidden_dim(fn: Callable[[int, int, float | None], int]) -> bool:
    """fn(dim, multiple_of, ffn_dim_multiplier) -> the SwiGLU width (14336 for Llama 3 8B)."""
    for case in ((4096, 1024, 1.3), (2048, 256, 1.5), (3072, 256, 1.0), (4096, 256, None),
                 (128, 32, None), (100, 7, 1.1)):
        got, want = fn(*case), ffn.ffn_hidden_dim(*case)
        if got != want:
            raise AssertionError(f"dim, multiple_of, ffn_dim_multiplier = {case}: "
                                 f"got {got}, expected {want}")
    return ok("FFN hidden size")


def check_swiglu(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                              torch.Tensor]) -> bool:
    """fn(x, w1, w2, w3) -> SwiGLU output, with weights in nn.Linear's (out, in) layout."""
    module = ffn.FeedForward(16, 40)
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        close("swiglu", fn(x, module.w1.weight, module.w2.weight, module.w3.weight), module(x))
    return ok("SwiGLU")
