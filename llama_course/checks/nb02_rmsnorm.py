"""Checkers for the exercises of notebook 02 (RMSNorm)."""

from __future__ import annotations

from typing import Callable

import torch

from .common import close, ok


def check_rmsnorm(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> bool:
    """fn(x, weight, eps) -> normalised x; compared with torch.nn.RMSNorm."""
    x = torch.randn(4, 10, 32) * 3 + 0.5
    ref = torch.nn.RMSNorm(32, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(torch.rand(32) + 0.5)
        close("rmsnorm", fn(x, ref.weight.detach(), 1e-5), ref(x))
    return ok("RMSNorm")


def check_layernorm(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float],
                                 torch.Tensor]) -> bool:
    """fn(x, weight, bias, eps) -> LayerNorm over the last dimension; compared with
    torch.nn.LayerNorm (biased variance, eps inside the square root)."""
    x = torch.randn(4, 10, 32) * 3 + 2.0
    ref = torch.nn.LayerNorm(32, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(torch.rand(32) + 0.5)
        ref.bias.copy_(torch.randn(32))
        close("layernorm", fn(x, ref.weight.detach(), ref.bias.detach(), 1e-5), ref(x))
        # a row of identical values has zero variance: eps must keep the output finite
        flat = torch.full((2, 32), 7.0)
        close("layernorm of a constant row", fn(flat, ref.weight.detach(), ref.bias.detach(), 1e-5),
               ref(flat))
    return ok("LayerNorm")
