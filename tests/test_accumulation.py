"""The training step at the gradient level: accumulated micro-batches give the large batch's
gradients and loss, clipping bounds the global norm, DDP's no_sync is used on all but the last
micro-batch.

They call the public `lc.train_step` with a recording optimizer in place of AdamW, so that the
gradients themselves are compared, not weights after a clipped, normalised update; batches are
drawn as `train()` draws them (`training._batch`, the one private name used).
"""

import contextlib
from types import SimpleNamespace

import pytest
import torch

import llama_course as lc
from llama_course import training



class Recorder:
    """An optimizer that only records the gradients it is asked to apply."""

    def __init__(self, model):
        self.params = list(model.parameters())
        self.grads = None
        self.zeroed = False

    def step(self):
        self.grads = [p.grad.clone() for p in self.params]

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None
        self.zeroed = True


def setup(seed=0, vocab=50):
    torch.manual_seed(seed)
    model = lc.Transformer(lc.get_preset("tiny", vocab_size=vocab, max_seq_len=16))
    data = torch.randint(0, vocab, (4000,))
    return model, data


def batches(data, batch_size, accum, seed=1, rank=0, world_size=1):
    """`accum` micro-batches of batch_size windows: together, the one batch of
    batch_size * accum windows training would draw from this seed (this rank's slice of it
    under torchrun)."""
    gen = torch.Generator().manual_seed(seed)
    x, y = training._batch(data, batch_size * accum, 16, gen,
                           SimpleNamespace(world_size=world_size, rank=rank), "random", 0, 0)
    return list(zip(x.chunk(accum), y.chunk(accum)))


def step(model, data, batch_size, accum, grad_clip=0.0, seed=1):
    opt = Recorder(model)
    loss = lc.train_step(model, opt, batches(data, batch_size, accum, seed), grad_clip=grad_clip)
    assert opt.zeroed and all(p.grad is None for p in model.parameters())
    return torch.tensor(loss), opt.grads


@pytest.mark.parametrize("accum", [2, 4])
def test_accumulated_gradients_equal_the_large_batch(accum):
    model, data = setup()
    loss_big, grads_big = step(model, data, 16, 1)
    loss_acc, grads_acc = step(model, data, 16 // accum, accum)
    torch.testing.assert_close(loss_acc, loss_big, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_acc, grads_big):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_the_step_loss_is_the_cross_entropy_of_its_batch():
    """The returned loss is the mean next-token cross-entropy of the batch the step drew."""
    model, data = setup()
    ix = torch.randint(len(data) - 16, (8,), generator=torch.Generator().manual_seed(1))
    x, y = lc.get_batch(data, 8, 16, ix=ix)
    want = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    loss, grads = step(model, data, 8, 1)
    torch.testing.assert_close(loss, want.detach(), rtol=1e-6, atol=1e-6)
    model.zero_grad()
    want.backward()
    for p, g in zip(model.parameters(), grads):
        torch.testing.assert_close(g, p.grad)


@pytest.mark.parametrize("grad_clip", [0.5, 1.0])
def test_clipping_bounds_the_global_gradient_norm(grad_clip):
    model, data = setup()
    _, raw = step(model, data, 8, 1)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in raw]))
    assert norm > 1.0  # so that both clip values act
    _, clipped = step(model, data, 8, 1, grad_clip=grad_clip)
    for a, b in zip(clipped, raw):
        torch.testing.assert_close(a, b * grad_clip / norm, rtol=1e-4, atol=1e-8)


def test_no_sync_on_all_but_the_last_micro_batch():
    """Under DDP the gradient all-reduce must run once, on the last micro-batch."""
    model, data = setup()
    entered = []

    @contextlib.contextmanager
    def no_sync():
        entered.append(True)
        yield

    model.no_sync = no_sync
    step(model, data, 4, 3)
    assert len(entered) == 2


def test_each_rank_takes_its_own_slice_of_one_global_batch():
    """Two ranks of batch 4 see exactly the 8 windows one process of batch 8 sees."""
    model, data = setup()
    _, whole = step(model, data, 8, 1)
    halves = []
    for rank in (0, 1):
        opt = Recorder(model)
        lc.train_step(model, opt, batches(data, 4, 1, rank=rank, world_size=2), grad_clip=0.0)
        halves.append(opt.grads)
    for w, a, b in zip(whole, *halves):
        torch.testing.assert_close((a + b) / 2, w, rtol=1e-4, atol=1e-7)
