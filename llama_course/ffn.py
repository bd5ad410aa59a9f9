"""The SwiGLU feed-forward network and Llama's rule for its hidden size.

The original Transformer's FFN is `W2 · ReLU(W1 · x)` with a hidden width of 4 * dim.
Llama uses a *gated* unit: `W2 · (SiLU(W1 · x) * (W3 · x))`. The gate (W3) gives the network
a multiplicative interaction, which trains to a lower loss for the same compute (Shazeer 2020,
"GLU Variants Improve Transformer"). Three matrices instead of two would cost 50% more
parameters, so the width is shrunk to 2/3 of 4 * dim, then adjusted by `ffn_dim_multiplier`
and rounded up to `multiple_of` so that matrix shapes suit the hardware.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: Optional[float] = None) -> int:
    """Meta's hidden-size rule: 4*dim -> 2/3 of it -> * multiplier -> round up to multiple_of.

    Llama 3 8B: 4*4096 = 16384 -> 10922 -> 14198 (x1.3) -> 14336 (multiple of 1024).
    """
    return _apply_rule(4 * dim, multiple_of, ffn_dim_multiplier)


def _apply_rule(hidden_dim: int, multiple_of: int, ffn_dim_multiplier: Optional[float]) -> int:
    hidden_dim = int(2 * hidden_dim / 3)  # 3 matrices at 2/3 width = 2 matrices at full width
    if ffn_dim_multiplier is not None:
        hidden_dim = int(ffn_dim_multiplier * hidden_dim)
    return multiple_of * ((hidden_dim + multiple_of - 1) // multiple_of)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x). Meta's names: w1 = gate, w3 = up, w2 = down.

    Call it like Meta's (`FeedForward(dim, 4 * dim, multiple_of, ffn_dim_multiplier)`) to apply
    the rounding rule, or with `multiple_of=None` to use `hidden_dim` exactly (the override that
    Hugging Face checkpoints call `intermediate_size`).
    """

    def __init__(self, dim: int, hidden_dim: int, multiple_of: Optional[int] = None,
                 ffn_dim_multiplier: Optional[float] = None):
        super().__init__()
        if multiple_of is not None:
            hidden_dim = _apply_rule(hidden_dim, multiple_of, ffn_dim_multiplier)
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate projection
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down projection
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # (B, T, hidden) -> (B, T, dim)
