"""Notebook 02's checkers pass the right answer and name the typical slips."""

import math

import pytest
import torch

from llama_course import checks


def backward(x, w, eps, g, slip=None):
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    gw = g * w
    second = x * r.pow(3) * (gw * x).mean(-1, keepdim=True)
    grad_x = {None: gw * r - second, "constant": gw * r, "sum": gw * r - second * x.shape[-1],
              "sign": gw * r + second}.get(slip, gw * r - second)
    grad_w = (g * x * r).reshape(-1, x.shape[-1]).sum(0)
    if slip == "unsummed":
        grad_w = g * x * r
    if slip == "no_r":
        grad_w = (g * x).reshape(-1, x.shape[-1]).sum(0)
    return grad_x, grad_w


def test_backward_right_answer(capsys):
    assert checks.check_rmsnorm_backward(backward) is True
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("slip, message", [
    ("constant", "treated 1/RMS\\(x\\) as a constant"),
    ("sum", "a mean, 1/d"),
    ("sign", "wrong sign"),
    ("unsummed", "sum over every dimension but the last"),
    ("no_r", "the normalised x, not x itself"),
])
def test_backward_names_the_slip(slip, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_rmsnorm_backward(lambda x, w, e, g: backward(x, w, e, g, slip))


def test_backward_other_mistakes():
    with pytest.raises(AssertionError, match="return a pair"):
        checks.check_rmsnorm_backward(lambda x, w, e, g: backward(x, w, e, g)[0])
    with pytest.raises(AssertionError, match="values differ"):
        checks.check_rmsnorm_backward(lambda x, w, e, g: tuple(t * 1.01 for t in backward(x, w, e, g)))


def test_eps_threshold_right_answer(capsys):
    assert checks.check_eps_threshold(lambda eps, p: p * math.sqrt(eps / (1 - p * p))) is True
    assert checks.check_eps_threshold(
        lambda eps, p: torch.tensor(p * math.sqrt(eps / (1 - p * p)), dtype=torch.float64))
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda eps, p: math.sqrt(eps), "whatever p"),
    (lambda eps, p: eps * p * p / (1 - p * p), "take its square root"),
    (lambda eps, p: eps * p / (1 - p), "eps outside the square root"),
    (lambda eps, p: p * math.sqrt(eps), "dropped the 1 - p\\*\\*2"),
    (lambda eps, p: 2 * p * math.sqrt(eps / (1 - p * p)), "output has RMS"),
    (lambda eps, p: None, "expected a positive number"),
])
def test_eps_threshold_names_the_slip(wrong, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_eps_threshold(wrong)
