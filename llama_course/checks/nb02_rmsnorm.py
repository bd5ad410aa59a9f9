"""Checkers for the exercises of notebook 02 (RMSNorm)."""

from __future__ import annotations

import math
from typing import Callable

import torch

from .common import close, ok


# ---------------------------------------------------------------------------- the backward pass
def _rmsnorm_backward_variants(x, w, eps, g):
    """The right gradients and the typical slips, computed in float64."""
    x, w, g = x.double(), w.double(), g.double()
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # 1 / RMS, (..., 1)
    gw = g * w  # gradient with respect to the normalised x
    dot = (gw * x).mean(-1, keepdim=True)  # (..., 1)
    grad_w = (g * x * r).reshape(-1, x.shape[-1]).sum(0)  # (dim,)
    return {
        "right": (gw * r - x * r.pow(3) * dot, grad_w),
        "constant": (gw * r, grad_w),
        "sum": (gw * r - x * r.pow(3) * dot * x.shape[-1], grad_w),
        "sign": (gw * r + x * r.pow(3) * dot, grad_w),
    }


_BACKWARD_SLIPS = {
    "constant": "looks like you treated 1/RMS(x) as a constant: x also sits inside the RMS, "
                "which adds the term - x * r**3 * mean(grad_out * weight * x)",
    "sum": "the second term is d times too large: the RMS averages over the last dimension "
           "(a mean, 1/d), not a sum",
    "sign": "the second term has the wrong sign: a larger |x_j| makes the RMS larger and every "
            "output smaller, so it is subtracted",
}


def check_rmsnorm_backward(fn: Callable) -> bool:
    """fn(x, weight, eps, grad_out) -> (grad_x, grad_weight); compared with autograd through
    torch.nn.RMSNorm, and the typical slips recognised."""
    g = torch.Generator().manual_seed(0)
    for shape, eps in (((4, 16), 1e-5), ((2, 3, 32), 1e-5), ((5, 8), 0.5)):
        x = torch.randn(*shape, generator=g) * 2 + 0.5
        grad_out = torch.randn(*shape, generator=g)
        ref = torch.nn.RMSNorm(shape[-1], eps=eps)
        with torch.no_grad():
            ref.weight.copy_(torch.rand(shape[-1], generator=g) + 0.5)
        xr = x.clone().requires_grad_(True)
        ref(xr).backward(grad_out)
        got = fn(x.clone(), ref.weight.detach().clone(), eps, grad_out.clone())
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            raise AssertionError("return a pair (grad_x, grad_weight)")
        grad_x, grad_w = got
        if isinstance(grad_w, torch.Tensor) and grad_w.shape == x.shape:
            raise AssertionError(f"grad_weight has x's shape {tuple(x.shape)}: the same weight "
                                 "serves every token, so sum over every dimension but the last")
        variants = _rmsnorm_backward_variants(x, ref.weight.detach(), eps, grad_out)
        if isinstance(grad_x, torch.Tensor) and grad_x.shape == x.shape:
            for slip, message in _BACKWARD_SLIPS.items():
                if torch.allclose(grad_x.double(), variants[slip][0], atol=1e-5) and \
                        not torch.allclose(variants[slip][0], variants["right"][0], atol=1e-5):
                    raise AssertionError(f"grad_x: {message}")
        close(f"grad_x, x of shape {shape}", grad_x, xr.grad, atol=1e-4, rtol=1e-4)
        if isinstance(grad_w, torch.Tensor) and grad_w.shape == ref.weight.shape and \
                torch.allclose(grad_w.double(), (grad_out * x).reshape(-1, shape[-1]).sum(0).double(),
                               atol=1e-4):
            raise AssertionError("grad_weight: each term is grad_out * (x / RMS(x)), the "
                                 "normalised x, not x itself")
        close(f"grad_weight, x of shape {shape}", grad_w, ref.weight.grad, atol=1e-4, rtol=1e-4)
    return ok("RMSNorm backward pass")


# ---------------------------------------------------------------------------- where eps takes over
def _output_rms(input_rms: float, eps: float) -> float:
    """Output RMS of torch.nn.RMSNorm (float64) for an input of the given RMS."""
    v = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64) * input_rms  # RMS = input_rms
    norm = torch.nn.RMSNorm(4, eps=eps).double()
    with torch.no_grad():
        return norm(v).pow(2).mean().sqrt().item()


def check_eps_threshold(fn: Callable[[float, float], float]) -> bool:
    """fn(eps, p) -> the input RMS at which RMSNorm's output has RMS p (0 < p < 1)."""
    for eps in (1e-5, 1e-6, 1e-2):
        for p in (0.5, 0.9, 0.99):
            got = fn(eps, p)
            if isinstance(got, torch.Tensor):
                got = got.item()
            if not isinstance(got, (int, float)) or not got > 0:
                raise AssertionError(f"eps={eps:g}, p={p}: expected a positive number, got {got!r}")
            want = p * math.sqrt(eps / (1 - p * p))
            if math.isclose(got, want, rel_tol=1e-4) and \
                    math.isclose(_output_rms(got, eps), p, rel_tol=1e-4):
                continue
            slips = {
                math.sqrt(eps): "sqrt(eps) is where the output RMS is 1/sqrt(2) = 0.707, "
                                "whatever p: solve r / sqrt(r**2 + eps) = p for r",
                want * want: "that is the mean of squares r**2 at the threshold: take its square "
                             "root to get the RMS",
                eps * p / (1 - p): "that solves r / (r + eps) = p: eps outside the square root. "
                                   "Llama's eps sits under it: r / sqrt(r**2 + eps) = p",
                p * math.sqrt(eps): "you dropped the 1 - p**2: r / sqrt(r**2 + eps) = p gives "
                                    "r**2 (1 - p**2) = p**2 eps",
            }
            why = next((m for v, m in slips.items() if math.isclose(got, v, rel_tol=1e-4)), None)
            raise AssertionError(
                f"eps={eps:g}, p={p}: got {got:.6g}, RMSNorm's output has RMS "
                f"{_output_rms(got, eps):.4f} there, not {p}" + (f": {why}" if why else ""))
    return ok("eps threshold")
