"""Notebook 07's checkers: the right answer passes, each typical mistake is named."""

import math

import pytest
import torch
import torch.nn.functional as F

from llama_course import checks
from llama_course.checks.nb07_training import _manual, wsd_reference
from llama_course.generate import filter_top_p


# ---------------------------------------------------------------------------- gradient accumulation
def accumulate(model, optimizer, micro_batches, grad_clip=1.0, **slips):
    """A correct answer written independently of the checker's helpers (slips: none)."""
    losses = []
    for x, y in micro_batches:
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        (loss / len(micro_batches)).backward()
        losses.append(loss.item())
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad()
    return sum(losses) / len(losses)


def test_grad_accumulation_accepts_a_right_answer(capsys):
    assert checks.check_grad_accumulation(accumulate) is True
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("slip, message", [
    (dict(divide=False), "times too large"),
    (dict(zero_inside=True), "only the last micro-batch counts"),
    (dict(step_inside=True), "stepped after every micro-batch"),
    (dict(zero_after=False), "never cleared"),
    (dict(clip_each=True), "clip once"),
])
def test_grad_accumulation_names_the_mistake(slip, message):
    def wrong(model, optimizer, micro, grad_clip):
        return _manual(model, optimizer, micro, clip=grad_clip, **slip)

    with pytest.raises(AssertionError, match=message):
        checks.check_grad_accumulation(wrong)


def test_grad_accumulation_wants_clipping_and_the_mean_loss():
    with pytest.raises(AssertionError, match="no gradient clipping"):
        checks.check_grad_accumulation(lambda m, o, micro, clip: accumulate(m, o, micro, None))
    with pytest.raises(AssertionError, match="SUM over the micro-batches"):
        checks.check_grad_accumulation(
            lambda m, o, micro, clip: accumulate(m, o, micro, clip) * len(micro))
    with pytest.raises(AssertionError, match="differ"):
        checks.check_grad_accumulation(lambda m, o, micro, clip: None)  # the stub


# ---------------------------------------------------------------------------- WSD
def wsd(step, max_steps, peak_lr, warmup_steps, decay_steps, min_lr_ratio=0.1):
    """Written from the exercise's text, not from the checker's reference."""
    min_lr = peak_lr * min_lr_ratio
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if step < max_steps - decay_steps:
        return peak_lr
    return peak_lr + (min_lr - peak_lr) * (step - (max_steps - decay_steps)) / decay_steps


def test_wsd_reference_values():
    # 100 steps, 10 of warm-up, the last 20 decaying from 1e-3 to 1e-4
    assert math.isclose(wsd_reference(0, 100, 1e-3, 10, 20, 0.1), 1e-4)
    assert math.isclose(wsd_reference(9, 100, 1e-3, 10, 20, 0.1), 1e-3)
    assert math.isclose(wsd_reference(79, 100, 1e-3, 10, 20, 0.1), 1e-3)
    assert math.isclose(wsd_reference(80, 100, 1e-3, 10, 20, 0.1), 1e-3)
    assert math.isclose(wsd_reference(90, 100, 1e-3, 10, 20, 0.1), 5.5e-4)
    assert math.isclose(wsd_reference(100, 100, 1e-3, 10, 20, 0.1), 1e-4)


def test_wsd_accepts_a_right_answer(capsys):
    assert checks.check_wsd(wsd) is True
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda s, n, p, w, d, r: p * s / w if s < w else wsd(s, n, p, w, d, r), "warm-up starts at 0"),
    (lambda s, n, p, w, d, r: wsd(s, n, p, w, d, 0.0), "decay ends at 0"),
    (lambda s, n, p, w, d, r: (p * r + 0.5 * (p - p * r) * (1 + math.cos(math.pi * (s - n + d) / d))
                               if s >= n - d else wsd(s, n, p, w, d, r)), "cosine"),
    (lambda s, n, p, w, d, r: wsd(s, n, p, w, n - w, r), "no stable phase"),
    (lambda s, n, p, w, d, r: wsd(s, n, p, w, d + 1, r), "decay phase"),
    (lambda s, n, p, w, d, r: None, "return a number"),
])
def test_wsd_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_wsd(wrong)


# ---------------------------------------------------------------------------- top-p
def test_top_p_accepts_renormalised_or_not(capsys):
    assert checks.check_top_p(filter_top_p)
    assert checks.check_top_p(lambda probs, p: (lambda f: f / f.sum(-1, keepdim=True))(
        filter_top_p(probs, p)))


def test_top_p_names_the_mistake():
    def strict(probs, p):  # drops the token that crosses p
        s, order = torch.sort(probs, dim=-1, descending=True)
        kept = torch.where(torch.cumsum(s, -1) < p, s, torch.zeros_like(s))
        return torch.zeros_like(probs).scatter(-1, order, kept)

    def sorted_order(probs, p):  # forgot to scatter back
        s, _ = torch.sort(probs, dim=-1, descending=True)
        return torch.where(torch.cumsum(s, -1) - s < p, s, torch.zeros_like(s))

    with pytest.raises(AssertionError, match="must be kept"):
        checks.check_top_p(strict)
    with pytest.raises(AssertionError, match="original token order"):
        checks.check_top_p(sorted_order)
    with pytest.raises(AssertionError, match="values differ"):
        checks.check_top_p(lambda probs, p: probs)
