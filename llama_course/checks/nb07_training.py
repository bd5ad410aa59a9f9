"""Checkers for the exercises of notebook 07 (training on Tiny Shakespeare).

Each compares the learner's function with the package (`lc.train_step`, `filter_top_p`) or
with a reference written here from the exercise's definition (the WSD schedule), and, when the
answer is wrong, tries the typical mistakes one by one so that the message can name it.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Sequence

import torch

from ..config import get_preset
from ..generate import filter_top_p
from ..model import Transformer
from ..training import train_step
from .common import close, ok

Batch = tuple[torch.Tensor, torch.Tensor]


# ---------------------------------------------------------------------------- gradient accumulation
def _accum_setup(seed: int = 0):
    """A tiny model and two steps' worth of micro-batches (4 of 2 windows each per step)."""
    torch.manual_seed(seed)
    args = get_preset("tiny").replace(vocab_size=20, max_seq_len=16, dim=32, n_layers=1)
    model = Transformer(args).train()
    gen = torch.Generator().manual_seed(seed + 1)
    steps = [[(lambda w: (w[:, :-1], w[:, 1:]))(torch.randint(20, (2, 17), generator=gen))
              for _ in range(4)] for _ in range(2)]
    return model, steps


def _sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
    # plain SGD: the update is lr * gradient, so a gradient of the wrong size shows (AdamW
    # would normalise most of it away)
    return torch.optim.SGD(model.parameters(), lr=0.5)


def _after(model, steps: Sequence[Sequence[Batch]], step_fn) -> tuple[list, list[torch.Tensor]]:
    """Run step_fn(model, optimizer, micro_batches) once per step on a copy of `model`; return
    the losses it returned and the weights after."""
    m = copy.deepcopy(model)
    opt = _sgd(m)
    losses = [step_fn(m, opt, micro) for micro in steps]
    return losses, [p.detach().clone() for p in m.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor], tol: float = 1e-5) -> bool:
    return all(torch.allclose(x, y, atol=tol, rtol=tol) for x, y in zip(a, b))


def _manual(model, opt, micro, *, divide=True, zero_inside=False, step_inside=False,
            clip=None, clip_each=False, zero_after=True) -> float:
    """The typical variants of an accumulation step (all wrong but the defaults)."""
    from ..training import next_token_loss
    losses = []
    for x, y in micro:
        if zero_inside:
            opt.zero_grad(set_to_none=True)
        loss = next_token_loss(model(x), y)
        (loss / len(micro) if divide else loss).backward()
        losses.append(loss.item())
        if clip_each and clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if step_inside:
            opt.step()
            opt.zero_grad(set_to_none=True)
    if not step_inside:
        if clip and not clip_each:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if zero_after:
            opt.zero_grad(set_to_none=True)
    return sum(losses) / len(losses)


def check_grad_accumulation(fn: Callable[..., float]) -> bool:
    """fn(model, optimizer, micro_batches, grad_clip) -> mean loss: ONE optimizer update from
    the gradients of all micro-batches, equal to lc.train_step on one big batch."""
    model, steps = _accum_setup()
    for clip in (None, 0.05):  # 0.05: small enough that clipping acts on every step
        def learner(m, opt, micro):
            return fn(m, opt, list(micro), clip)

        got_losses, got = _after(model, steps, learner)
        big = [(torch.cat([x for x, _ in micro]), torch.cat([y for _, y in micro]))
               for micro in steps]
        want_losses, want = _after(model, big, lambda m, o, b: train_step(m, o, b, clip))
        _, want_list = _after(model, steps, lambda m, o, micro: train_step(m, o, micro, clip))
        assert _same(want, want_list), "internal: train_step disagrees with itself"
        where = "without clipping" if clip is None else f"with grad_clip={clip}"
        if not _same(got, want):
            k = len(steps[0])
            slips = {
                f"the gradient is {k} times too large: divide each micro-batch's loss by the "
                "number of micro-batches before backward(), so that the gradient is that of "
                "their mean": dict(divide=False),
                "only the last micro-batch counts: zero the gradients once, after the update, "
                "not inside the loop over micro-batches": dict(zero_inside=True),
                f"the optimizer stepped after every micro-batch ({k} updates): accumulate the "
                "gradients of all micro-batches, then step once": dict(step_inside=True),
                "the gradients are never cleared after the update, so the next step adds "
                "its gradient to the old one: call optimizer.zero_grad() after "
                "optimizer.step()": dict(zero_after=False),
                "clipping was applied after each micro-batch: clip once, on the accumulated "
                "gradient, just before optimizer.step()": dict(clip_each=True),
                "no gradient clipping: clip the global norm to grad_clip before "
                "optimizer.step()": dict(clip=None),
            }
            for message, kw in slips.items():
                kw = {"clip": clip, **kw}
                _, slip = _after(model, steps, lambda m, o, micro: _manual(m, o, micro, **kw))
                if _same(got, slip):
                    raise AssertionError(f"{where}: {message}")
            diff = max((a - b).abs().max().item() for a, b in zip(got, want))
            raise AssertionError(f"{where}: the weights after your steps differ from those after "
                                 f"lc.train_step on one big batch (max difference {diff:.3g})")
        for g, w in zip(got_losses, want_losses):
            if not isinstance(g, (float, int)) and not (torch.is_tensor(g) and g.numel() == 1):
                raise AssertionError("return the mean loss as a number (loss.item()), "
                                     f"not {type(g).__name__}")
            g = float(g)
            if math.isclose(g, w * len(steps[0]), rel_tol=1e-4):
                raise AssertionError("the returned loss is the SUM over the micro-batches: "
                                     "return their mean")
            if not math.isclose(g, w, rel_tol=1e-4, abs_tol=1e-6):
                raise AssertionError(f"returned loss {g:.5f}, expected the mean over the "
                                     f"micro-batches, {w:.5f}")
    return ok("gradient accumulation (one update, equal to one big batch)")


# ---------------------------------------------------------------------------- WSD schedule
def wsd_reference(step: int, max_steps: int, peak_lr: float, warmup_steps: int,
                  decay_steps: int, min_lr_ratio: float = 0.1) -> float:
    """Warm-up, stable, decay, as the exercise defines it: lc.lr_at's warm-up, the peak until
    the last `decay_steps` steps, then a straight line to peak_lr * min_lr_ratio at max_steps."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_start = max_steps - decay_steps
    if step < decay_start:
        return peak_lr
    frac = min((step - decay_start) / decay_steps, 1.0)
    return peak_lr - (peak_lr - peak_lr * min_lr_ratio) * frac


def _wsd_slips(step, max_steps, peak, warmup, decay, ratio) -> dict[str, float]:
    min_lr = peak * ratio
    start = max_steps - decay
    ref = wsd_reference(step, max_steps, peak, warmup, decay, ratio)
    in_decay = step >= start and step >= warmup
    frac = min((step - start) / decay, 1.0) if in_decay else 0.0
    return {
        "the warm-up starts at 0: step 0 would not move the weights; use (step + 1) / "
        "warmup_steps as lc.lr_at does":
            peak * step / warmup if step < warmup else ref,
        "the decay ends at 0: it must end at peak_lr * min_lr_ratio":
            peak * (1 - frac) if in_decay else ref,
        "a cosine decay: in this exercise the decay is a straight line":
            min_lr + 0.5 * (peak - min_lr) * (1 + math.cos(math.pi * frac)) if in_decay else ref,
        "no stable phase: the decay must start only decay_steps before max_steps, not right "
        "after the warm-up":
            (peak - (peak - min_lr) * min((step - warmup) / (max_steps - warmup), 1.0)
             if step >= warmup else ref),
    }


def check_wsd(fn: Callable[[int, int, float, int, int, float], float]) -> bool:
    """fn(step, max_steps, peak_lr, warmup_steps, decay_steps, min_lr_ratio) -> learning rate."""
    settings = [(100, 1e-3, 10, 20, 0.1), (50, 3e-3, 5, 10, 0.0), (1000, 2e-3, 100, 200, 0.1)]
    for max_steps, peak, warmup, decay, ratio in settings:
        for step in range(max_steps):
            want = wsd_reference(step, max_steps, peak, warmup, decay, ratio)
            got = fn(step, max_steps, peak, warmup, decay, ratio)
            try:
                got = float(got)
            except (TypeError, ValueError):
                raise AssertionError(f"return a number (the learning rate), got "
                                     f"{type(got).__name__}") from None
            if math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-12):
                continue
            setting = (f"max_steps={max_steps}, peak_lr={peak}, warmup_steps={warmup}, "
                       f"decay_steps={decay}, min_lr_ratio={ratio}")
            for message, slip in _wsd_slips(step, max_steps, peak, warmup, decay,
                                            ratio).items():
                if not math.isclose(slip, want) and math.isclose(got, slip, rel_tol=1e-6):
                    raise AssertionError(f"{message} (step {step}, {setting})")
            phase = ("warm-up" if step < warmup else
                     "stable" if step < max_steps - decay else "decay")
            raise AssertionError(f"step {step} ({phase} phase, {setting}): got {got:.6g}, "
                                 f"expected {want:.6g}")
    return ok("WSD schedule")


# ---------------------------------------------------------------------------- top-p
def check_top_p(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> bool:
    """fn(probs, p) -> probabilities with everything outside the nucleus zeroed (not renormalised
    or renormalised: both accepted)."""
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(4, 50, generator=gen) * 2, dim=-1)  # (B, V), no ties
    for p in (0.1, 0.5, 0.9, 1.0):
        got = fn(probs.clone(), p)
        want = filter_top_p(probs, p)
        if isinstance(got, torch.Tensor) and got.shape == probs.shape:
            kept_got, kept_want = got > 0, want > 0  # (B, V)
            sorted_probs = torch.sort(probs, dim=-1, descending=True).values  # (B, V)
            if (kept_got.sum(-1) == kept_want.sum(-1) - 1).all():
                raise AssertionError(f"p={p}: one token too few per row: the token whose "
                                     "probability makes the total cross p must be kept (keep a "
                                     "token while the mass BEFORE it is below p)")
            first_n = torch.arange(probs.shape[-1]) < kept_want.sum(-1, keepdim=True)  # (B, V)
            if torch.equal(kept_got, first_n) and not torch.equal(kept_got, kept_want):
                if torch.allclose(got[first_n], sorted_probs[first_n]):
                    raise AssertionError(f"p={p}: your rows are in sorted order: scatter the "
                                         "kept probabilities back to the original token order")
        got = got / got.sum(-1, keepdim=True) if isinstance(got, torch.Tensor) else got
        close(f"top_p(p={p})", got, want / want.sum(-1, keepdim=True))
    return ok("top-p filter")
