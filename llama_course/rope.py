"""Rotary position embeddings (RoPE), in both of the layouts found in the wild.

RoPE encodes position by *rotating* query and key vectors: the pair of dimensions
(x[2i], x[2i+1]) is rotated by the angle `pos * theta**(-2i/d)`. A dot product between a query
rotated by angle a and a key rotated by angle b depends only on a - b, so attention scores
depend on the distance between tokens, not on where they sit in the sequence.

Two layouts compute the same thing on differently ordered dimensions:

* **Meta (interleaved, complex)**: pairs are neighbours (0,1), (2,3), ...; each pair is read as
  a complex number and multiplied by e^{i*angle}. This is what `llama/model.py` does and what
  the model here uses.
* **Hugging Face (rotate-half)**: pairs are (i, i + d/2); `x*cos + rotate_half(x)*sin`.
  HF's conversion script reorders the rows of wq and wk so that a Meta checkpoint gives the
  same scores in this layout: that is the q/k "permutation" (`permute_qk_meta_to_hf`). Loading
  HF weights into Meta-layout code without undoing it is a classic bug: the model runs, and
  produces garbage.

Llama 3.1 stretches the low frequencies (long wavelengths) by `factor` to reach a 128K context,
leaves the high frequencies alone and blends smoothly in between (`apply_scaling`).
"""

from __future__ import annotations

import math
from typing import Optional

import torch


# ---------------------------------------------------------------------------- frequencies
def rope_frequencies(dim: int, theta: float = 500000.0,
                     rope_scaling: Optional[dict] = None) -> torch.Tensor:
    """The dim/2 rotation speeds theta**(-2i/dim), in radians per position, float32."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))  # (dim/2,)
    if rope_scaling is not None:
        freqs = apply_scaling(freqs, **rope_scaling)
    return freqs


def apply_scaling(freqs: torch.Tensor, factor: float = 8.0, low_freq_factor: float = 1.0,
                  high_freq_factor: float = 4.0,
                  original_max_position_embeddings: int = 8192) -> torch.Tensor:
    """Llama 3.1's frequency scaling.

    A frequency whose wavelength is shorter than original_context / high_freq_factor already
    repeats many times inside the trained context: keep it. One whose wavelength is longer than
    original_context / low_freq_factor never completed a turn in training: slow it down by
    `factor` (8), so its angles over a context `factor` times longer stay within those seen in
    training. Llama 3.1 grows the context 16x (8,192 -> 131,072): past 65,536 the slowest pairs
    do reach angles up to twice the trained ones, which the long-context training stage (about
    800B tokens, Llama 3 paper section 3.4.2) teaches the model to read.
    In between, interpolate linearly in `original_context / wavelength`.
    """
    old_context = original_max_position_embeddings
    wavelen = 2 * math.pi / freqs  # (dim/2,) tokens per full turn
    smooth = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * freqs / factor + smooth * freqs
    out = torch.where(wavelen > old_context / low_freq_factor, freqs / factor, blended)
    return torch.where(wavelen < old_context / high_freq_factor, freqs, out)


# ---------------------------------------------------------------------------- Meta layout
def precompute_freqs_cis(dim: int, end: int, theta: float = 500000.0,
                         rope_scaling: Optional[dict] = None) -> torch.Tensor:
    """e^{i * pos * freq} for every position < end and every pair: complex64 (end, dim/2)."""
    freqs = rope_frequencies(dim, theta, rope_scaling)  # (dim/2,)
    angles = torch.outer(torch.arange(end, dtype=torch.float32), freqs)  # (end, dim/2)
    return torch.polar(torch.ones_like(angles), angles)  # (end, dim/2) complex64


def reshape_for_broadcast(freqs_cis: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(T, dim/2) -> (1, T, 1, dim/2) so that it broadcasts over batch and heads."""
    if freqs_cis.shape != (x.shape[1], x.shape[-1]):
        raise ValueError(f"freqs_cis has shape {tuple(freqs_cis.shape)}, expected "
                         f"{(x.shape[1], x.shape[-1])} for x of shape {tuple(x.shape)}")
    return freqs_cis.view(1, x.shape[1], 1, x.shape[-1])


def rotate(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Rotate x: (B, T, heads, D) by the angles in freqs_cis: (T, D/2), Meta's way.

    Neighbouring dimensions form one complex number; multiplying by e^{i*angle} rotates it.
    Computed in float32 (angles at position 100,000 need the precision), cast back after.
    """
    x_ = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))  # (B, T, heads, D/2)
    x_out = torch.view_as_real(x_ * reshape_for_broadcast(freqs_cis, x_)).flatten(3)
    return x_out.type_as(x)  # (B, T, heads, D)


def apply_rotary_emb(xq: torch.Tensor, xk: torch.Tensor,
                     freqs_cis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys. xq: (B, T, n_heads, D), xk: (B, T, n_kv_heads, D)."""
    return rotate(xq, freqs_cis), rotate(xk, freqs_cis)


# ---------------------------------------------------------------------------- HF layout
def precompute_cos_sin(dim: int, end: int, theta: float = 500000.0,
                       rope_scaling: Optional[dict] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables in rotate-half layout: each (end, dim), the dim/2 angles twice."""
    freqs = rope_frequencies(dim, theta, rope_scaling)  # (dim/2,)
    angles = torch.outer(torch.arange(end, dtype=torch.float32), freqs)  # (end, dim/2)
    angles = torch.cat((angles, angles), dim=-1)  # (end, dim): dimension i pairs with i + dim/2
    return angles.cos(), angles.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension: a 90-degree turn."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_emb_rotate_half(xq: torch.Tensor, xk: torch.Tensor, cos: torch.Tensor,
                                 sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate queries and keys, Hugging Face's way. x: (B, T, H, D), cos/sin: (T, D)."""
    cos, sin = cos[:, None, :], sin[:, None, :]  # (T, 1, D): broadcast over heads
    xq_out = xq.float() * cos + rotate_half(xq.float()) * sin  # (B, T, H, D)
    xk_out = xk.float() * cos + rotate_half(xk.float()) * sin  # (B, T, Hkv, D)
    return xq_out.type_as(xq), xk_out.type_as(xk)


# ---------------------------------------------------------------------------- q/k permutation
def permute_qk_meta_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of wq or wk from interleaved pairs to rotate-half pairs.

    Within each head, output dimension 2i moves to i and 2i+1 moves to i + D/2. Rotating the
    reordered vector the HF way equals rotating the original the Meta way, reordered.
    """
    rows, cols = w.shape
    head_dim = rows // n_heads
    return w.view(n_heads, head_dim // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def permute_qk_hf_to_meta(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of `permute_qk_meta_to_hf`: rotate-half rows back to interleaved pairs."""
    rows, cols = w.shape
    head_dim = rows // n_heads
    return w.view(n_heads, 2, head_dim // 2, cols).transpose(1, 2).reshape(rows, cols)
