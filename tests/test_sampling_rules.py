"""Sampling at temperatures other than 1, and the static decode step's logic without a compiler.

Public API only (lc.next_token_probs, lc.sample_next, lc.generate). At temperature 1 dividing
the logits once or twice is the same; these tests use 0.5 and 2, where it is not.
"""

import pytest
import torch

import llama_course as lc

from references import small_args

PROBS = torch.tensor([[0.5, 0.3, 0.2]])


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_divides_the_logits_once(temperature):
    logits = torch.log(PROBS) + 3.0  # any offset: softmax ignores it
    want = PROBS ** (1 / temperature)
    want = want / want.sum()  # p_i^(1/T), renormalised
    torch.testing.assert_close(lc.next_token_probs(logits, temperature=temperature), want)
    ref = torch.softmax(logits / temperature, dim=-1)  # the definition, independently
    torch.testing.assert_close(lc.next_token_probs(logits, temperature=temperature), ref)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_sample_frequencies_at_a_temperature(temperature):
    n = 40000
    logits = torch.log(PROBS).expand(n, 3)
    draws = lc.sample_next(logits, temperature, 1.0, None, torch.Generator().manual_seed(0))
    assert draws.shape == (n,) and draws.dtype == torch.long
    freq = torch.bincount(draws, minlength=3) / n
    want = PROBS[0] ** (1 / temperature)
    want = want / want.sum()
    assert (freq - want).abs().max() < 0.01, (freq, want)


def test_temperature_then_nucleus():
    """Temperature first, then top-p on the tempered distribution (Meta's order)."""
    logits = torch.log(torch.tensor([[0.4, 0.3, 0.2, 0.1]]))
    tempered = torch.softmax(logits / 0.5, dim=-1)  # [16, 9, 4, 1] / 30
    p = lc.next_token_probs(logits, temperature=0.5, top_p=0.8)
    # mass before each token: 0, 16/30, 25/30 -> the nucleus is the first two
    torch.testing.assert_close(p, torch.tensor([[16 / 25, 9 / 25, 0.0, 0.0]]))
    assert tempered[0, :2].sum() < 0.9


def test_top_k_and_top_p_edges():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    # top_k equal to the vocabulary keeps everything, top_k=1 is greedy
    torch.testing.assert_close(lc.next_token_probs(logits, 1.0, top_k=4),
                               torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    torch.testing.assert_close(lc.next_token_probs(logits, 1.0, top_k=1),
                               torch.tensor([[0.0, 0.0, 0.0, 1.0]]))
    # top-p exactly at a boundary: mass before token 3 (of 0.4, 0.3, ...) is 0.7, not < 0.7
    torch.testing.assert_close(lc.next_token_probs(logits, 1.0, top_p=0.7),
                               torch.tensor([[0.0, 0.0, 3 / 7, 4 / 7]]))
    # the filter works row by row
    two = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]]))
    torch.testing.assert_close(lc.next_token_probs(two, 1.0, top_k=2),
                               torch.tensor([[0, 0, 3 / 7, 4 / 7], [4 / 7, 3 / 7, 0, 0]]))


def test_greedy_is_the_argmax_per_row():
    logits = torch.tensor([[0.0, 5.0, 1.0], [9.0, 0.0, 1.0]])
    assert lc.sample_next(logits, 0, 0.9, None).tolist() == [1, 0]
    assert lc.sample_next(logits, 0.0, 1.0, 1).tolist() == [1, 0]


def test_static_step_path_gives_the_same_tokens(monkeypatch):
    """FastDecoder(compile=True) feeds single tokens through the decoder's static step at a
    position held in a tensor. With torch.compile replaced by the identity, that logic runs
    eagerly (seconds instead of a minute of compiling) and must give the dynamic path's
    tokens, for prompts of different lengths and past a context slide."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    m = lc.Transformer(small_args(max_seq_len=16)).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    prompts = [[1, 2, 3, 4, 5], [6, 7, 8]]
    static = lc.generate(m, prompts, 30, temperature=0, decoder=lc.FastDecoder(m, compile=True))
    assert static == lc.generate(m, prompts, 30, temperature=0)
    assert static == lc.generate(m, prompts, 30, temperature=0, use_cache=False)
