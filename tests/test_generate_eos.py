"""EOS in a batch: a row that meets EOS stops, the others run their full length.

Public API only (lc.generate, lc.stream).
"""

import pytest
import torch

import llama_course as lc

from references import small_args


@pytest.fixture
def model():
    m = lc.Transformer(small_args()).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return m


def eos_for(free_a, free_b):
    """A token that row a produces (not first) and row b never does."""
    for t in free_a[2:]:
        if t not in free_b:
            return t
    pytest.fail("no token separates the two rows; change the prompts")


@pytest.mark.parametrize("use_cache", [True, False])
def test_one_row_stops_at_eos_the_other_runs_its_full_length(model, use_cache):
    prompts = [[1, 2, 3], [40, 41, 42, 43, 44]]
    free = lc.generate(model, prompts, 20, temperature=0, use_cache=use_cache)
    eos = eos_for(free[0], free[1])
    stopped = lc.generate(model, prompts, 20, temperature=0, eos_id=eos, use_cache=use_cache)
    assert stopped[0] == free[0][:free[0].index(eos)]
    assert stopped[1] == free[1] and len(stopped[1]) == 20  # untouched by row 0's EOS


def test_every_row_stopping_ends_generation(model):
    free = lc.generate(model, [[1, 2, 3]], 20, temperature=0)[0]
    eos = free[3]
    assert lc.generate(model, [[1, 2, 3]], 20, temperature=0, eos_id=eos)[0] == \
        free[:free.index(eos)]
    assert list(lc.stream(model, [1, 2, 3], 20, temperature=0, eos_id=eos)) == \
        free[:free.index(eos)]


def test_eos_inside_a_prompt_does_not_stop_it(model):
    """A prompt token equal to eos_id is the prompt, not a generated end."""
    free = lc.generate(model, [[5], [5, 9, 7, 9]], 12, temperature=0)
    stopped = lc.generate(model, [[5], [5, 9, 7, 9]], 12, temperature=0, eos_id=9)
    for got, want in zip(stopped, free):
        assert got == (want[:want.index(9)] if 9 in want else want)


def test_zero_new_tokens(model):
    assert lc.generate(model, [[1, 2], [3]], 0, temperature=0) == [[], []]
    assert list(lc.stream(model, [1, 2], 0, temperature=0)) == []
