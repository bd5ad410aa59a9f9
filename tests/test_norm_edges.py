"""RMSNorm where eps matters: inputs whose mean square is comparable to eps. Public API only."""

import pytest
import torch

import llama_course as lc


@pytest.mark.parametrize("eps", [1e-2, 1e-5])
def test_eps_inside_the_square_root(eps):
    x = torch.randn(3, 16) * eps ** 0.5  # mean(x^2) ~ eps
    ours, ref = lc.RMSNorm(16, eps=eps), torch.nn.RMSNorm(16, eps=eps)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def test_zero_input_stays_finite():
    assert torch.equal(lc.RMSNorm(8)(torch.zeros(2, 8)), torch.zeros(2, 8))
