"""Checkers for the exercises of notebook 05 (SwiGLU feed-forward)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import ffn
from .common import close, ok


# ---------------------------------------------------------------------------- GeGLU / ReGLU
def check_glu_ffn(fn: Callable[[int, Callable], nn.Module]) -> bool:
    """fn(dim, activation) -> a gated FFN module with Meta's names (w1 gate, w3 up, w2 down, no
    biases), `activation` in place of SiLU (F.gelu: GeGLU, F.relu: ReGLU), and the hidden width
    that matches the parameters of a two-matrix 4 * dim FFN as closely as possible from below."""
    torch.manual_seed(0)
    for dim in (48, 64, 100):
        for act, name in ((F.gelu, "GeGLU"), (F.relu, "ReGLU")):
            where = f"{name}, dim={dim}"
            module = fn(dim, act)
            _check_layout(module, dim, where)
            hidden = module.w1.weight.shape[0]
            _check_width(hidden, dim, where)
            x = torch.randn(3, 5, dim)
            with torch.no_grad():
                for p in module.parameters():  # larger than nn.Linear's init: slips show clearly
                    p.normal_(std=0.5)
                got = module(x)
                w1, w2, w3 = (module.w1.weight, module.w2.weight, module.w3.weight)
                want = (act(x @ w1.T) * (x @ w3.T)) @ w2.T
                slips = {
                    "SiLU instead of the given activation (that is SwiGLU again)":
                        (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T,
                    "the activation on the up branch (w3): the gate is w1":
                        ((x @ w1.T) * act(x @ w3.T)) @ w2.T,
                    "the activation applied after the product: act(w1 x * w3 x)":
                        act((x @ w1.T) * (x @ w3.T)) @ w2.T,
                }
                if name == "GeGLU":
                    slips["GELU's tanh approximation (F.gelu(x, approximate='tanh')); use the "
                          "exact GELU, PyTorch's default"] = (
                        F.gelu(x @ w1.T, approximate="tanh") * (x @ w3.T)) @ w2.T
            if isinstance(got, torch.Tensor) and got.shape == want.shape:
                for what, value in slips.items():
                    if torch.allclose(got, value, atol=1e-5, rtol=1e-5) \
                            and not torch.allclose(value, want, atol=1e-5, rtol=1e-5):
                        raise AssertionError(f"{where}: your output matches {what}")
            close(f"{where} output", got, want, atol=1e-4, rtol=1e-4)
    return ok("gated FFN variants")


def _check_layout(module, dim, where) -> None:
    for n in ("w1", "w2", "w3"):
        layer = getattr(module, n, None)
        if not isinstance(layer, nn.Linear):
            raise AssertionError(f"{where}: expected an nn.Linear called {n} (Meta's names: w1 gate, "
                                 "w3 up, w2 down)")
        if layer.bias is not None:
            raise AssertionError(f"{where}: {n} has a bias; Llama's linear layers have none "
                                 "(bias=False)")
    h = module.w1.weight.shape[0]
    shapes = {n: tuple(getattr(module, n).weight.shape) for n in ("w1", "w2", "w3")}
    if shapes != {"w1": (h, dim), "w2": (dim, h), "w3": (h, dim)}:
        raise AssertionError(f"{where}: weight shapes {shapes}; expected w1 and w3 (hidden, dim), "
                             "w2 (dim, hidden) (nn.Linear stores (out, in))")


def _check_width(hidden, dim, where) -> None:
    want = 8 * dim // 3  # 3 * dim * hidden <= 2 * dim * (4 * dim)
    if hidden == want:
        return
    if hidden == 4 * dim:
        raise AssertionError(f"{where}: hidden width {hidden} = 4 * dim: three matrices of that "
                             "width hold 50% more parameters than the two-matrix FFN")
    if hidden in {ffn.ffn_hidden_dim(dim, m) for m in (16, 32, 64, 128, 256)} and hidden > want:
        raise AssertionError(f"{where}: hidden width {hidden}, expected {want}: rounded up to a "
                             "multiple, which adds parameters; here the match with the two-matrix "
                             "FFN is the point (no multiple_of, no multiplier)")
    if 3 * dim * hidden > 8 * dim * dim:
        raise AssertionError(f"{where}: hidden width {hidden}, expected {want}: 3 * dim * {hidden} "
                             f"= {3 * dim * hidden:,} parameters, more than the two-matrix FFN's "
                             f"8 * dim^2 = {8 * dim * dim:,} (round down)")
    raise AssertionError(f"{where}: hidden width {hidden}, expected {want} (the widest whose three "
                         "matrices hold no more than 8 * dim^2 parameters)")


# ---------------------------------------------------------------------------- fused gate/up
def check_fused_swiglu(fuse: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                       forward: Callable[[torch.Tensor, torch.Tensor, torch.Tensor],
                                         torch.Tensor]) -> bool:
    """fuse(w1, w3) -> one (2 * hidden, dim) matrix w13; forward(x, w13, w2) -> the SwiGLU output
    from ONE matrix product for gate and up together; compared with lc.FeedForward."""
    torch.manual_seed(0)
    for dim, hidden in ((16, 40), (24, 24)):
        module = ffn.FeedForward(dim, hidden)
        x = torch.randn(3, 5, dim)
        where = f"dim={dim}, hidden={hidden}"
        with torch.no_grad():
            w1, w2, w3 = module.w1.weight, module.w2.weight, module.w3.weight
            w13 = fuse(w1, w3)
            if not isinstance(w13, torch.Tensor):
                raise AssertionError(f"{where}: fuse returned {type(w13).__name__}, not a tensor")
            if tuple(w13.shape) == (hidden, 2 * dim):
                raise AssertionError(f"{where}: fused shape {tuple(w13.shape)}: looks like you "
                                     "concatenated along dim 1 (the inputs); gate and up are "
                                     "stacked outputs: torch.cat([w1, w3], dim=0), (2*hidden, dim)")
            if tuple(w13.shape) != (2 * hidden, dim):
                raise AssertionError(f"{where}: fused shape {tuple(w13.shape)}, expected "
                                     f"{(2 * hidden, dim)} (w1's and w3's rows, one after the other)")
            try:
                got = forward(x, w13, w2)
            except RuntimeError as e:
                raise AssertionError(f"{where}: forward raised RuntimeError: "
                                     f"{str(e).splitlines()[0]}. The weights are in nn.Linear's "
                                     "(out, in) layout: multiply by their transpose") from None
            want = module(x)
            swapped = (F.silu(x @ w3.T) * (x @ w1.T)) @ w2.T  # SiLU on the up projection
            if isinstance(got, torch.Tensor) and got.shape == want.shape and \
                    torch.allclose(got, swapped, atol=1e-5, rtol=1e-5) and \
                    not torch.allclose(swapped, want, atol=1e-5, rtol=1e-5):
                raise AssertionError(f"{where}: your output has SiLU on the up half: fuse must "
                                     "put the gate (w1) first and forward apply SiLU to that half")
        close(f"fused SwiGLU ({where})", got, want)
    return ok("fused gate/up SwiGLU")
