"""Checkers for the exercises of notebook 03 (RoPE)."""

from __future__ import annotations

from typing import Callable

import torch

from .. import rope
from .common import close, ok


def check_rope(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """fn(x, freqs_cis) -> x rotated, x: (B, T, H, D) in Meta's interleaved layout."""
    x = torch.randn(2, 12, 3, 16)
    freqs_cis = rope.precompute_freqs_cis(16, 12, 10000.0)
    want, _ = rope.apply_rotary_emb(x, x, freqs_cis)
    close("rope", fn(x, freqs_cis), want)
    return ok("rotary embedding")


def check_permute_qk(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> bool:
    """fn(w, n_heads) -> wq/wk with rows reordered from Meta's interleaved pairs to Hugging
    Face's rotate-half pairs (row 2j -> j, row 2j+1 -> j + head_dim/2, inside each head)."""
    for n_heads, head_dim, dim in ((4, 16, 32), (2, 8, 12), (1, 4, 6)):
        w = torch.randn(n_heads * head_dim, dim)
        got = fn(w, n_heads)
        if (head_dim > 4 and isinstance(got, torch.Tensor) and got.shape == w.shape
                and torch.equal(got, rope.permute_qk_hf_to_meta(w, n_heads))):
            raise AssertionError("this is the inverse permutation (Hugging Face -> Meta); "
                                 "the task is Meta -> Hugging Face")
        close(f"permute(n_heads={n_heads}, head_dim={head_dim})", got,
               rope.permute_qk_meta_to_hf(w, n_heads), atol=0, rtol=0)
    # what the permutation is for: rotate-half RoPE on the permuted weights gives Meta's scores
    n_heads, head_dim, dim, T = 2, 8, 16, 5
    x = torch.randn(1, T, dim)
    wq, wk = torch.randn(n_heads * head_dim, dim), torch.randn(n_heads * head_dim, dim)

    def project(w: torch.Tensor) -> torch.Tensor:
        return (x @ w.T).view(1, T, n_heads, head_dim)

    q, k = rope.apply_rotary_emb(project(wq), project(wk),
                                 rope.precompute_freqs_cis(head_dim, T, 10000.0))
    cos, sin = rope.precompute_cos_sin(head_dim, T, 10000.0)
    q_hf, k_hf = rope.apply_rotary_emb_rotate_half(project(fn(wq, n_heads)),
                                                   project(fn(wk, n_heads)), cos, sin)
    close("attention scores (rotate-half on your weights vs Meta's)",
           torch.einsum("bthd,bshd->bhts", q_hf, k_hf), torch.einsum("bthd,bshd->bhts", q, k),
           atol=1e-4, rtol=1e-4)
    return ok("q/k permutation")
