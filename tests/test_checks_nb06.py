"""Notebook 06's checkers accept the right answers and name the usual mistakes."""

import pytest
import torch

import llama_course as lc
from llama_course import checks


def parallel(block, x, f, m):
    return (x + block.attention(block.attention_norm(x), 0, f, m)
            + block.feed_forward(block.ffn_norm(x)))


def test_parallel_block_accepts_the_right_answer(capsys):
    assert checks.check_parallel_block(parallel) is True
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda b, x, f, m: b(x, 0, f, m), "sequential block"),
    (lambda b, x, f, m: x + b.attention(b.attention_norm(x), 0, f, m)
     + b.feed_forward(b.attention_norm(x)), "single shared norm"),
    (lambda b, x, f, m: parallel(b, x, f, m) - x, "no residual"),
    (lambda b, x, f, m: parallel(b, x, f, m) + x, "x added twice"),
    (lambda b, x, f, m: x + b.attention(b.attention_norm(x), 0, f, m) + b.feed_forward(x),
     "without its norm"),
    (lambda b, x, f, m: parallel(b, x, f, None), "values differ"),
])
def test_parallel_block_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_parallel_block(wrong)


def top_k(logits, k, temperature):
    probs = torch.softmax(logits / temperature, dim=-1)
    kth = probs.topk(k, dim=-1).values[..., -1:]
    probs = torch.where(probs >= kth, probs, 0.0)
    return probs / probs.sum(-1, keepdim=True)


def test_top_k_accepts_the_right_answer(capsys):
    assert checks.check_top_k(top_k) is True
    assert "correct" in capsys.readouterr().out


def test_top_k_accepts_another_right_answer():
    def via_logits(logits, k, temperature):
        kth = logits.topk(k, dim=-1).values[..., -1:]
        return torch.softmax((logits / temperature).masked_fill(logits < kth, float("-inf")), -1)
    assert checks.check_top_k(via_logits)


@pytest.mark.parametrize("wrong, message", [
    (lambda l, k, t: top_k(-l, k, t) * 0 + top_k(l, k, t)[:, torch.randperm(l.shape[1])],
     "keeps|values differ|LEAST"),
    (lambda l, k, t: (lambda p: torch.where(p <= p.topk(k, -1, largest=False).values[..., -1:], p, 0.0)
                      )(torch.softmax(l / t, -1)) /
     (lambda p: torch.where(p <= p.topk(k, -1, largest=False).values[..., -1:], p, 0.0)
      )(torch.softmax(l / t, -1)).sum(-1, keepdim=True), "LEAST likely"),
    (lambda l, k, t: (lambda p: torch.where(p >= p.topk(k, -1).values[..., -1:], p, 0.0))(
        torch.softmax(l / t, -1)), "no renormalisation"),
    (lambda l, k, t: top_k(l, k, 1.0), "temperature ignored"),
    (lambda l, k, t: top_k(l * t, k, 1.0), "multiplied by the temperature"),
    (lambda l, k, t: top_k(l, min(k + 1, l.shape[-1]), t), "keeps"),
    (lambda l, k, t: (l / t).masked_fill(l < l.topk(k, -1).values[..., -1:], float("-inf")),
     "not filtered logits|probabilities"),
])
def test_top_k_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_top_k(wrong)


def test_check_greedy_names_a_token_not_fed_back():  # (the rest: tests/test_checks.py)
    def greedy(model, prompt, n):
        ids = list(prompt)
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
        return ids[len(prompt):]

    with pytest.raises(AssertionError, match="appended before the next step"):
        checks.check_greedy(lambda m, p, n: greedy(m, p, 1) * n)
