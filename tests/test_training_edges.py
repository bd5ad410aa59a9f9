"""Edges of training.py: the schedule against its formula (warm-up's last step included), the
run's progress by steps and by the clock, the loss against a hand-written cross-entropy, the
forms of `batches` train_step accepts, its default clipping, the fp16 grad scaler, mixed
precision, and estimate_loss / evaluate against losses computed window by window."""

import math

import pytest
import torch
import torch.nn.functional as F

import llama_course as lc
from llama_course import training

CPU = torch.device("cpu")


class Recorder:
    """An optimizer that only records the gradients it is asked to apply."""

    def __init__(self, model):
        self.params = list(model.parameters())
        self.grads = None

    def step(self):
        self.grads = [p.grad.clone() for p in self.params]

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None


def tiny_model(seed=0, std=None):
    """A tiny Llama; std: redraw the weights larger, for confident predictions (whose loss
    bf16 visibly changes) and gradients of norm well above the default clip of 1.0."""
    torch.manual_seed(seed)
    model = lc.Transformer(lc.get_preset("tiny", vocab_size=50, max_seq_len=16))
    if std is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(std=std)
    return model


def data(n=4000, seed=0):
    return torch.randint(0, 50, (n,), generator=torch.Generator().manual_seed(seed))


def batch(b=4, seed=1):
    return lc.get_batch(data(), b, 16, torch.Generator().manual_seed(seed))


def global_norm(grads):
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


# ---------------------------------------------------------------------------- schedule
def reference_lr(step, max_steps, peak, warmup, ratio):
    """Warm-up from peak/warmup to peak, then half a cosine from peak to peak * ratio."""
    progress = min(step / max_steps, 1.0)
    floor = peak * ratio
    lr = floor + (peak - floor) * (1 + math.cos(math.pi * progress)) / 2
    return lr * min(1.0, (step + 1) / warmup)


def test_schedule_follows_its_formula_at_every_step():
    peak, warmup, ratio, max_steps = 3e-3, 7, 0.2, 50
    for step in range(max_steps + 10):
        got = lc.lr_at(step, step / max_steps, peak, warmup, ratio)
        assert got == pytest.approx(reference_lr(step, max_steps, peak, warmup, ratio),
                                    rel=1e-12), step


def test_warm_up_ends_at_the_cosine():
    """The step right after warm-up takes the cosine's value itself, unscaled."""
    lr = lc.lr_at(10, 0.1, peak_lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr == pytest.approx(0.1 + 0.9 * (1 + math.cos(0.1 * math.pi)) / 2)
    assert lc.lr_at(9, 0.09, 1.0, 10, 0.1) == pytest.approx(
        0.1 + 0.9 * (1 + math.cos(0.09 * math.pi)) / 2)  # the last warm-up step: full factor


def test_progress_by_steps_and_by_the_clock():
    by_steps = lc.TrainConfig(max_steps=200)
    assert training.run_progress(by_steps, 50, 999.0) == pytest.approx(0.25)  # the clock is ignored
    timed = lc.TrainConfig(max_steps=200, time_budget=100.0)
    assert training.run_progress(timed, 50, 10.0) == pytest.approx(0.25)  # steps ahead of the clock
    assert training.run_progress(timed, 50, 80.0) == pytest.approx(0.8)  # the clock ahead
    assert training.run_progress(timed, 0, 0.0) == 0.0


# ---------------------------------------------------------------------------- the loss
def test_loss_is_the_mean_negative_log_likelihood_of_the_next_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    targets = torch.randint(0, 7, (2, 5))
    nll = -logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]  # (2, 5)
    torch.testing.assert_close(lc.next_token_loss(logits, targets), nll.mean())
    torch.testing.assert_close(lc.next_token_loss(logits, targets, reduction="sum"), nll.sum())


# ---------------------------------------------------------------------------- one step
def step_grads(batches, grad_clip=0.0, seed=0, std=None):
    model = tiny_model(seed, std)
    opt = Recorder(model)
    loss = lc.train_step(model, opt, batches, grad_clip=grad_clip)
    return loss, opt.grads


def test_one_pair_a_list_and_a_tuple_of_pairs():
    """train_step takes one (x, y) pair or a sequence (list or tuple) of micro-batches."""
    x, y = batch(4)
    loss_pair, g_pair = step_grads((x, y))
    loss_list, g_list = step_grads([(x, y)])
    assert loss_pair == loss_list
    for a, b in zip(g_pair, g_list):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    halves = list(zip(x.chunk(2), y.chunk(2)))
    loss_l2, g_l2 = step_grads(halves)
    loss_t2, g_t2 = step_grads(tuple(halves))
    assert loss_l2 == loss_t2 and loss_l2 == pytest.approx(loss_pair, rel=1e-5)
    for a, b in zip(g_t2, g_l2):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_no_batches_is_an_error():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"^train_step: batches is empty; give an \(x, y\) pair "
                                         r"or a list of them$"):
        lc.train_step(model, Recorder(model), [])


def test_default_clips_the_gradient_norm_to_one():
    x, y = batch(8)
    _, raw = step_grads((x, y), grad_clip=0.0, std=1.0)
    norm = global_norm(raw)
    assert norm > 3.0  # well above the default, so that a different default shows
    model = tiny_model(std=1.0)
    opt = Recorder(model)
    lc.train_step(model, opt, (x, y))
    torch.testing.assert_close(global_norm(opt.grads), torch.tensor(1.0), rtol=1e-5, atol=0)
    for a, b in zip(opt.grads, raw):
        torch.testing.assert_close(a, b / norm, rtol=1e-4, atol=1e-8)


def test_a_real_optimizer_updates_and_clears_the_gradients():
    """After the step the gradients are gone (None, not zeros: memory is freed)."""
    x, y = batch(4)
    _, grads = step_grads((x, y))
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    lc.train_step(model, torch.optim.SGD(model.parameters(), lr=0.5), (x, y), grad_clip=0.0)
    assert all(p.grad is None for p in model.parameters())
    for p, p0, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), p0 - 0.5 * g, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("grad_clip", [0.0, 0.5])
def test_grad_scaler_gives_the_unscaled_update(grad_clip):
    """With a GradScaler (fp16's loss scaling) the update is the one without it: gradients are
    unscaled before clipping and before the optimizer, and the scale is updated."""
    x, y = batch(8)
    updates = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1)):
        model = tiny_model(std=1.0)
        before = [p.detach().clone() for p in model.parameters()]
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        lc.train_step(model, opt, (x, y), grad_clip=grad_clip, scaler=scaler)
        updates.append([p.detach() - p0 for p, p0 in zip(model.parameters(), before)])
        if scaler is not None:
            assert scaler.get_scale() == 2.0 ** 11  # no inf/nan: grows after growth_interval
    if grad_clip:
        torch.testing.assert_close(global_norm(updates[0]), torch.tensor(grad_clip), rtol=1e-4,
                                   atol=0)
    for a, b in zip(*updates):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def bf16_loss(model, x, y):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        return lc.next_token_loss(model(x), y).item()


def fp32_loss(model, x, y):
    with torch.no_grad():
        return lc.next_token_loss(model(x), y).item()


def test_train_step_runs_the_forward_pass_in_the_autocast_dtype():
    x, y = batch(4)
    model = tiny_model(std=1.0)
    want, fp32 = bf16_loss(model, x, y), fp32_loss(model, x, y)
    assert abs(want - fp32) > 1e-3  # bf16 visibly changes this loss
    got = lc.train_step(model, Recorder(model), (x, y), autocast=torch.bfloat16)
    assert got == pytest.approx(want, rel=1e-6)


# ---------------------------------------------------------------------------- evaluation
def test_estimate_is_the_mean_over_its_seeded_batches():
    model = tiny_model(std=1.0)
    val = data(500, seed=3)
    g = torch.Generator().manual_seed(7)
    losses = [fp32_loss(model, *lc.get_batch(val, 4, 16, g)) for _ in range(3)]
    got = lc.estimate_loss(model, val, 16, 4, 3, CPU, seed=7)
    assert got == pytest.approx(sum(losses) / 3, rel=1e-6)
    assert len(set(losses)) == 3
    # the default seed is 0: two readings of the same model agree
    g0 = torch.Generator().manual_seed(0)
    want0 = sum(fp32_loss(model, *lc.get_batch(val, 4, 16, g0)) for _ in range(2)) / 2
    assert lc.estimate_loss(model, val, 16, 4, 2, CPU) == pytest.approx(want0, rel=1e-6)


def test_estimate_runs_in_the_autocast_dtype():
    model = tiny_model(std=1.0)
    val = data(500, seed=3)
    x, y = lc.get_batch(val, 4, 16, torch.Generator().manual_seed(0))
    want = bf16_loss(model, x, y)
    assert abs(want - fp32_loss(model, x, y)) > 1e-3
    got = lc.estimate_loss(model, val, 16, 4, 1, CPU, autocast=torch.bfloat16)
    assert got == pytest.approx(want, rel=1e-6)


def reference_evaluation(model, val, block_size, autocast=None):
    """Every window on its own: consecutive windows of block_size (the last one shorter),
    the summed cross-entropy divided by the number of predicted tokens, len(val) - 1."""
    total = 0.0
    for start in range(0, len(val) - 1, block_size):
        end = min(start + block_size, len(val) - 1)
        x, y = val[start:end][None], val[start + 1:end + 1][None]
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16,
                                             enabled=autocast is not None):
            total += F.cross_entropy(model(x)[0].float(), y[0], reduction="sum").item()
    return total / (len(val) - 1)


@pytest.mark.parametrize("batch_size", [2, 64])
def test_evaluate_is_the_loss_of_every_token_once(batch_size):
    model = tiny_model(std=1.0)
    val = data(16 * 7 + 6, seed=4)  # 7 full windows of 16 and a tail of 5
    want = reference_evaluation(model, val, 16)
    assert lc.evaluate(model, val, 16, CPU, batch_size=batch_size) == pytest.approx(want,
                                                                                   rel=1e-5)


def test_evaluate_runs_in_the_autocast_dtype():
    model = tiny_model(std=1.0)
    val = data(16 * 3 + 6, seed=4)
    want = reference_evaluation(model, val, 16, autocast=torch.bfloat16)
    assert abs(want - reference_evaluation(model, val, 16)) > 1e-3
    got = lc.evaluate(model, val, 16, CPU, batch_size=2, autocast=torch.bfloat16)
    assert got == pytest.approx(want, rel=1e-5)


# ---------------------------------------------------------------------------- devices
# A machine without a GPU still has a second device: "meta", tensors with a shape and no data.
# A model there stands in for a model on a GPU fed with batches from the CPU.
class Reached(Exception):
    """Raised by the optimizer: the step got as far as the update."""


class StopAtUpdate(Recorder):
    def step(self):
        super().step()
        raise Reached


def test_train_step_moves_the_batches_to_the_models_device():
    model = tiny_model().to("meta")
    opt = StopAtUpdate(model)
    x, y = batch(4)  # on the CPU
    with pytest.raises(Reached):
        lc.train_step(model, opt, [(x, y), (x, y)])
    assert all(g.device.type == "meta" for g in opt.grads)


class Spy(torch.nn.Module):
    """The tiny model, recording the device and batch size of every forward pass, and
    whether autograd was recording it."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen, self.grad_enabled = model, [], []

    def forward(self, x):
        self.seen.append((x.device.type, x.shape[0]))
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.model(x)


def test_evaluation_moves_inputs_and_targets_to_the_device(monkeypatch):
    targets = []

    def loss(logits, y, reduction="mean"):  # records where the targets are
        targets.append(y.device.type)
        return torch.tensor(1.0)

    monkeypatch.setattr(training, "next_token_loss", loss)
    meta = torch.device("meta")
    spy = Spy(tiny_model().to("meta"))
    assert lc.estimate_loss(spy, data(100), 16, 4, 2, meta) == 1.0
    assert lc.evaluate(spy, data(100), 16, meta) == pytest.approx(2 / 99)  # 6 windows and a tail
    assert {d for d, _ in spy.seen} == set(targets) == {"meta"}


def test_evaluate_feeds_the_model_batch_size_windows_at_a_time():
    """Memory stays bounded: windows go through the model batch_size at a time (64 unless
    told), the last pass taking the rest."""
    val = data(4 * 100 + 1)  # 100 windows of 4
    spy = Spy(tiny_model())
    lc.evaluate(spy, val, 4, CPU)
    assert [n for _, n in spy.seen] == [64, 36]
    spy.seen.clear()
    lc.evaluate(spy, val, 4, CPU, batch_size=30)
    assert [n for _, n in spy.seen] == [30, 30, 30, 10]


def test_evaluation_builds_no_autograd_graph():
    """Measuring a loss keeps no graph for a backward pass (the memory of inference)."""
    spy = Spy(tiny_model())
    lc.evaluate(spy, data(100), 16, CPU)
    lc.estimate_loss(spy, data(100), 16, 4, 2, CPU)
    assert len(spy.grad_enabled) == 4 and not any(spy.grad_enabled)
    assert torch.is_grad_enabled()  # and autograd is back on afterwards
