"""Meta's FFN width rule at exact multiples and one past them. Public API only."""

import math

import pytest

import llama_course as lc


def meta_rule(dim, multiple_of, multiplier=None):
    """llama/model.py's FeedForward width, written with math.ceil as the reference."""
    hidden = int(2 * (4 * dim) / 3)
    if multiplier is not None:
        hidden = int(multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


@pytest.mark.parametrize("dim", [96, 97, 120, 4096])
@pytest.mark.parametrize("multiple_of", [1, 2, 3, 8, 256])
@pytest.mark.parametrize("multiplier", [None, 1.3])
def test_width_rule(dim, multiple_of, multiplier):
    assert lc.ffn_hidden_dim(dim, multiple_of, multiplier) == meta_rule(dim, multiple_of,
                                                                        multiplier)


def test_exact_multiples_are_kept():
    assert lc.ffn_hidden_dim(96, 1) == 256 and lc.ffn_hidden_dim(96, 256) == 256
    assert lc.ffn_hidden_dim(96, 255) == 510  # 256 = 255 + 1: one past a multiple rounds up
