"""RMSNorm against torch.nn.RMSNorm, and against the formula's properties."""

import pytest
import torch

import llama_course as lc


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_matches_torch_rmsnorm(dtype, tol):
    x = torch.randn(3, 7, 64) * 5 + 1
    ours = lc.RMSNorm(64, eps=1e-5)
    ref = torch.nn.RMSNorm(64, eps=1e-5)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(64))
        ref.weight.copy_(ours.weight)
    ours, ref = ours.to(dtype), ref.to(dtype)
    out = ours(x.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref(x.to(dtype)), atol=tol, rtol=tol)


def test_output_has_unit_rms_and_ignores_scale():
    x = torch.randn(4, 32)
    norm = lc.RMSNorm(32, eps=0.0)
    y = norm(x)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(4))
    torch.testing.assert_close(norm(10 * x), y)  # scale-invariant
    assert not torch.allclose(y.mean(-1), torch.zeros(4))  # unlike LayerNorm, no re-centring


def test_bf16_input_is_normalised_in_fp32():
    # numbers whose squares overflow bf16's precision budget: an fp32 sum keeps them right
    x = (torch.randn(2, 4096) * 300).to(torch.bfloat16)
    ref = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6))
    torch.testing.assert_close(lc.RMSNorm(4096)(x).float(), ref.to(torch.bfloat16).float())
