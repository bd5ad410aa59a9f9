"""RMSNorm: LayerNorm without the mean subtraction and without the bias.

LayerNorm re-centres and re-scales every vector. Zhang & Sennrich (2019) found that the
re-scaling does the useful work, so RMSNorm divides by the root mean square only:

    y = x / sqrt(mean(x**2) + eps) * weight

One reduction instead of two, no bias, same training quality. The sum of squares is computed
in float32 even when the model runs in bfloat16: squaring a bf16 number with an 8-bit mantissa
and summing thousands of them loses too much precision.
"""

from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))  # learned per-channel gain, starts at 1

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output = self._norm(x.float()).type_as(x)  # normalise in fp32, back to the input dtype
        return output * self.weight  # (..., dim)
