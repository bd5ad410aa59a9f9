"""Notebook 03's checkers pass the right answer and name the typical slips."""

import math

import pytest
import torch

from llama_course import checks


def rotate_half_matrix(m, freqs, slip=None):
    half = freqs.shape[0]
    a = (freqs.double() if slip != "no_position" else freqs.double() / max(m, 1)) * m
    c, s = torch.diag(a.cos()), torch.diag(a.sin())
    R = torch.zeros(2 * half, 2 * half, dtype=torch.float64)
    R[:half, :half], R[:half, half:] = c, -s
    R[half:, :half], R[half:, half:] = s, c
    if slip == "transposed":
        R = R.T
    if slip == "interleaved":
        R = torch.block_diag(*[torch.tensor([[math.cos(x), -math.sin(x)], [math.sin(x), math.cos(x)]],
                                            dtype=torch.float64) for x in a.tolist()])
    return R.float()


def test_rotate_half_matrix_right_answer(capsys):
    assert checks.check_rotate_half_matrix(rotate_half_matrix) is True
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("slip, message", [
    ("interleaved", "Meta's interleaved matrix"),
    ("transposed", "rotates by -m \\* omega"),
    ("no_position", "do not grow with the position"),
])
def test_rotate_half_matrix_names_the_slip(slip, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_rotate_half_matrix(lambda m, f: rotate_half_matrix(m, f, slip))


def test_rotate_half_matrix_other_mistakes():
    with pytest.raises(AssertionError, match="expected a tensor"):
        checks.check_rotate_half_matrix(lambda m, f: None)
    with pytest.raises(AssertionError, match="shape"):
        checks.check_rotate_half_matrix(lambda m, f: torch.eye(4))


def test_ntk_theta_right_answer(capsys):
    assert checks.check_ntk_theta(lambda theta, s, d: theta * s ** (d / (d - 2))) is True
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda theta, s, d: theta * s, "slows the slowest pair by only"),
    (lambda theta, s, d: theta * s ** ((d - 2) / d), "upside down"),
    (lambda theta, s, d: theta / s, "turn faster"),
    (lambda theta, s, d: theta * s ** d, "not d"),
    (lambda theta, s, d: 2 * theta, "slows the slowest pair"),
    (lambda theta, s, d: -1.0, "positive number"),
])
def test_ntk_theta_names_the_slip(wrong, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_ntk_theta(wrong)
