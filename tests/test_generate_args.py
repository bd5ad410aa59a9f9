"""generate()'s argument checks at their boundaries: the largest accepted values are accepted,
the first refused one is refused with its message. Public API only."""

import pytest
import torch

import llama_course as lc

from references import small_args


@pytest.fixture
def model():
    m = lc.Transformer(small_args(max_batch_size=2, max_seq_len=16)).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return m


def test_boundaries_that_are_accepted(model):
    full = [list(range(16)), [96, 0]]  # a prompt filling the context; ids 0 and vocab-1
    assert lc.generate(model, full, 0) == [[], []]  # max_batch_size prompts, no new token
    assert len(lc.generate(model, [[1, 2]], 3, temperature=1.0, top_p=1.0, top_k=1,
                           seed=0)[0]) == 3
    assert len(lc.generate(model, [(1, 2)], 2, temperature=0)[0]) == 2  # a tuple prompt
    assert len(lc.generate(model, [torch.tensor([1, 2])], 2, temperature=0)[0]) == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompts=[[1]] * 3), r"^3 prompts exceed max_batch_size \(2\)$"),
    (dict(prompts=[list(range(17))]), r"^prompt 0 has 17 tokens, more than the model's "
                                      r"context max_seq_len \(16\)$"),
    (dict(prompts=[[1, 97]]), r"^prompt 0 holds token 97, not an id in 0..96$"),
    (dict(prompts=[[-1]]), r"^prompt 0 holds token -1, not an id in 0..96$"),
    (dict(prompts=[]), r"^prompts must be a non-empty list of token-id lists$"),
    (dict(prompts=[1, 2]), r"^prompts must be a list of token-id lists: wrap a single prompt "
                           r"as \[ids\]$"),
    (dict(max_new_tokens=True), r"^max_new_tokens \(True\) must be a non-negative integer$"),
    (dict(max_new_tokens=2.0), r"^max_new_tokens \(2.0\) must be a non-negative integer$"),
    (dict(top_p=1.5), r"^top_p \(1.5\) must be in \(0, 1\]$"),
    (dict(top_k=True), r"^top_k \(True\) must be a positive integer or None$"),
    (dict(top_k=2.0), r"^top_k \(2.0\) must be a positive integer or None$"),
    (dict(temperature=float("nan")), r"^temperature \(nan\) must be >= 0"),
])
def test_refusals_in_full(model, kwargs, message):
    call = dict(prompts=[[1, 2]], max_new_tokens=2, temperature=0.6)
    call.update(kwargs)
    with pytest.raises(ValueError, match=message):
        lc.generate(model, **call)


def test_top_k_passes_through_sampling():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).expand(2000, 3)
    draws = lc.sample_next(logits, 1.0, 1.0, 1, torch.Generator().manual_seed(0))
    assert (draws == 0).all()
    draws = lc.sample_next(logits, 1.0, 1.0, 2, torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {0, 1}


def test_top_k_of_three_keeps_three():
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    torch.testing.assert_close(lc.next_token_probs(logits, 1.0, top_k=3),
                               torch.tensor([[4 / 9, 3 / 9, 2 / 9, 0.0]]))

