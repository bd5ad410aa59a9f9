"""Notebook 05's checkers accept the right answers and name the usual mistakes."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from llama_course import checks


class GLU(nn.Module):
    def __init__(self, dim, hidden, activation, arrange="right", bias=False):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=bias)
        self.w2 = nn.Linear(hidden, dim, bias=bias)
        self.w3 = nn.Linear(dim, hidden, bias=bias)
        self.act, self.arrange = activation, arrange

    def forward(self, x):
        g, u = self.w1(x), self.w3(x)
        if self.arrange == "up":
            return self.w2(g * self.act(u))
        if self.arrange == "after":
            return self.w2(self.act(g * u))
        return self.w2(self.act(g) * u)


def glu(dim, activation):
    return GLU(dim, 8 * dim // 3, activation)


def test_glu_ffn_accepts_the_right_answer(capsys):
    assert checks.check_glu_ffn(glu) is True
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda d, a: GLU(d, 8 * d // 3, F.silu), "SiLU instead of the given activation"),
    (lambda d, a: GLU(d, 8 * d // 3, a, arrange="up"), "on the up branch"),
    (lambda d, a: GLU(d, 8 * d // 3, a, arrange="after"), "after the product"),
    (lambda d, a: GLU(d, 8 * d // 3, lambda t: F.gelu(t, approximate="tanh")), "tanh approximation"),
    (lambda d, a: GLU(d, 4 * d, a), "50% more parameters"),
    (lambda d, a: GLU(d, -(-8 * d // 3), a), "round down|rounded up to a multiple"),
    (lambda d, a: GLU(d, 2 * d, a), "expected"),
    (lambda d, a: GLU(d, 8 * d // 3, a, bias=True), "bias"),
])
def test_glu_ffn_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_glu_ffn(wrong)


def fuse(w1, w3):
    return torch.cat([w1, w3], dim=0)


def fused_forward(x, w13, w2):
    gate, up = (x @ w13.T).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ w2.T


def test_fused_swiglu_accepts_the_right_answer(capsys):
    assert checks.check_fused_swiglu(fuse, fused_forward) is True
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("fuse_fn, forward_fn, message", [
    (lambda w1, w3: torch.cat([w1, w3], dim=1), fused_forward, "concatenated along dim 1"),
    (fuse, lambda x, w13, w2: (lambda g, u: (F.silu(u) * g) @ w2.T)(*(x @ w13.T).chunk(2, -1)),
     "SiLU on the up half"),
    (lambda w1, w3: torch.cat([w3, w1], dim=0), fused_forward, "SiLU on the up half"),
    (fuse, lambda x, w13, w2: (lambda g, u: (F.silu(g) * u) @ w2)(*(x @ w13.T).chunk(2, -1)),
     "transpose"),
    (lambda w1, w3: torch.stack([w1, w3], dim=1).reshape(-1, w1.shape[1]), fused_forward,
     "values differ"),
])
def test_fused_swiglu_names_the_mistake(fuse_fn, forward_fn, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_fused_swiglu(fuse_fn, forward_fn)
