"""Checkers for the exercises of notebook 03 (RoPE)."""

from __future__ import annotations

import math
from typing import Callable

import torch

from .. import rope
from .common import close, ok


# ---------------------------------------------------------------------------- the matrix form
def _rotate_half_matrix(m: int, freqs: torch.Tensor) -> torch.Tensor:
    """The (D, D) matrix of rotate-half RoPE at position m: column j is e_j rotated."""
    D = 2 * freqs.shape[0]
    angles = m * freqs.double()
    cos = torch.cat((angles.cos(), angles.cos()))[None]  # (1, D)
    sin = torch.cat((angles.sin(), angles.sin()))[None]
    eye = torch.eye(D, dtype=torch.float64)[None, :, None, :]  # (1, D, 1, D): D basis vectors
    out, _ = rope.apply_rotary_emb_rotate_half(eye, eye, cos.expand(D, D), sin.expand(D, D))
    return out[0, :, 0].T  # (D, D): rotated e_j as column j


def _interleaved_matrix(m: int, freqs: torch.Tensor) -> torch.Tensor:
    blocks = [torch.tensor([[math.cos(m * f), -math.sin(m * f)], [math.sin(m * f), math.cos(m * f)]],
                           dtype=torch.float64) for f in freqs.double().tolist()]
    return torch.block_diag(*blocks)


def check_rotate_half_matrix(fn: Callable[[int, torch.Tensor], torch.Tensor]) -> bool:
    """fn(m, freqs) -> R (D, D) such that R @ x is x rotated at position m in Hugging Face's
    rotate-half layout; compared with lc.apply_rotary_emb_rotate_half on every basis vector."""
    for D, theta in ((8, 10000.0), (16, 500000.0)):
        freqs = rope.rope_frequencies(D, theta)  # (D/2,)
        for m in (0, 1, 5, 300):
            got = fn(m, freqs.clone())
            want = _rotate_half_matrix(m, freqs)
            if isinstance(got, torch.Tensor) and got.shape == want.shape and m > 0:
                g = got.double()
                if torch.allclose(g, _interleaved_matrix(m, freqs), atol=1e-5):
                    raise AssertionError(
                        "this is Meta's interleaved matrix (2x2 blocks on the diagonal, pairs "
                        "(2j, 2j+1)); rotate-half pairs dimension j with j + D/2")
                if torch.allclose(g, want.T, atol=1e-5):
                    raise AssertionError("this matrix rotates by -m * omega (it is R transposed): "
                                         "the -sin belongs in the first half's rows")
                if m > 1 and torch.allclose(g, _rotate_half_matrix(1, freqs), atol=1e-5):
                    raise AssertionError("the angles do not grow with the position: pair j turns "
                                         "by m * omega_j at position m")
            close(f"R for D={D}, position {m}", got, want, atol=1e-5, rtol=1e-5)
        x = torch.randn(3, D, dtype=torch.float64)
        R = fn(7, freqs.clone()).double()
        cos, sin = rope.precompute_cos_sin(D, 8, theta)
        ref, _ = rope.apply_rotary_emb_rotate_half(x[None, None], x[None, None], cos[7:8], sin[7:8])
        close("R @ x vs apply_rotary_emb_rotate_half", x @ R.T, ref[0, 0], atol=1e-5, rtol=1e-5)
    return ok("rotate-half rotation matrix")


# ---------------------------------------------------------------------------- NTK-aware theta
def _ntk_reference(theta: float, scale: float, dim: int) -> torch.Tensor | None:
    """transformers' 'dynamic' (NTK-aware) frequencies at scale x the trained length, or None
    when transformers is not installed."""
    try:
        import transformers
        from transformers.modeling_rope_utils import _compute_dynamic_ntk_parameters
    except ImportError:
        return None
    cfg = transformers.LlamaConfig(hidden_size=2 * dim, num_attention_heads=2,
                                   max_position_embeddings=1024,
                                   rope_parameters={"rope_type": "dynamic", "factor": 1.0,
                                                    "rope_theta": theta})
    inv_freq, _ = _compute_dynamic_ntk_parameters(cfg, seq_len=int(1024 * scale))
    return inv_freq


def check_ntk_theta(fn: Callable[[float, float, int], float]) -> bool:
    """fn(theta, scale, dim) -> the new base that leaves pair 0 alone and slows the slowest
    pair exactly `scale` times; compared with transformers' NTK-aware ('dynamic') RoPE."""
    for theta, scale, dim in ((500000.0, 4.0, 128), (10000.0, 8.0, 64), (10000.0, 2.0, 16)):
        got = fn(theta, scale, dim)
        if isinstance(got, torch.Tensor):
            got = got.item()
        if not isinstance(got, (int, float)) or not got > 0:
            raise AssertionError(f"theta={theta:g}, scale={scale:g}, dim={dim}: expected a "
                                 f"positive number, got {got!r}")
        want = theta * scale ** (dim / (dim - 2))
        if not math.isclose(got, want, rel_tol=1e-6):
            slips = {
                theta * scale: f"theta x scale slows the slowest pair by only scale**((d-2)/d) "
                               f"= {scale ** ((dim - 2) / dim):.3f}, not {scale:g}: the slowest "
                               "pair's exponent is (d-2)/d, so theta needs the power d/(d-2)",
                theta * scale ** ((dim - 2) / dim): "the exponent is upside down: the slowest "
                                                    "frequency is theta**(-(d-2)/d), so solve "
                                                    "for theta with the power d/(d-2)",
                theta / scale: "a smaller theta makes the pairs turn faster, not slower",
                theta * scale ** dim: "the power is d/(d-2) (about 1 for large d), not d",
            }
            why = next((m for v, m in slips.items() if math.isclose(got, v, rel_tol=1e-6)), None)
            slow = rope.rope_frequencies(dim, theta)[-1] / rope.rope_frequencies(dim, got)[-1]
            raise AssertionError(f"theta={theta:g}, scale={scale:g}, dim={dim}: got {got:,.6g}, "
                                 f"which slows the slowest pair {slow:.4f}x"
                                 + (f": {why}" if why else ""))
        freqs = rope.rope_frequencies(dim, got).double()
        old = rope.rope_frequencies(dim, theta).double()
        assert math.isclose(freqs[-1].item(), old[-1].item() / scale, rel_tol=1e-4)
        ref = _ntk_reference(theta, scale, dim)
        if ref is not None:
            close(f"frequencies vs transformers' dynamic NTK (dim={dim})", freqs.float(), ref,
                  atol=1e-6, rtol=1e-4)
    return ok("NTK-aware theta")
