"""Muon's update written out, with weight decay and two steps of momentum; its defaults; the
Newton-Schulz iteration's precision. MODULE-LEVEL names: llama_course.optim.Muon and
orthogonalize are not in lc's top-level API (the training code builds the optimizer)."""

import math

import pytest
import torch

import llama_course as lc
from llama_course.optim import (NS_COEFFICIENTS, Muon, configure_optimizer, orthogonalize,
                               set_lr)


def test_defaults():
    p = torch.nn.Parameter(torch.randn(4, 3))
    opt = Muon([{"params": [p], "muon": True}])
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["betas"], g["eps"], g["weight_decay"], g["ns_steps"]) == \
        (0.01, 0.95, (0.9, 0.99), 1e-8, 0.0, 5)
    assert opt.ns_dtype == torch.bfloat16


@pytest.mark.parametrize("shape", [(6, 4), (4, 6)])
def test_two_muon_steps_with_weight_decay(shape):
    torch.manual_seed(0)
    w0 = torch.randn(*shape)
    p = torch.nn.Parameter(w0.clone())
    lr, beta, wd = 0.05, 0.9, 0.2
    opt = Muon([{"params": [p], "muon": True, "weight_decay": wd}], lr=lr, momentum=beta,
               ns_dtype=torch.float32)
    grads = [torch.randn(*shape), torch.randn(*shape)]
    w, buf = w0.clone(), torch.zeros(shape)
    scale = math.sqrt(max(1.0, shape[0] / shape[1]))
    for g in grads:
        p.grad = g.clone()
        opt.step()
        buf = beta * buf + (1 - beta) * g  # a running average (PyTorch's Muon's form)
        update = orthogonalize((1 - beta) * g + beta * buf, 5, torch.float32)  # Nesterov
        w = w * (1 - lr * wd) - lr * scale * update
        torch.testing.assert_close(p.data, w, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], buf)


def test_orthogonalize_runs_in_bfloat16_by_default():
    G = torch.randn(8, 5)
    want = orthogonalize(G.to(torch.bfloat16), dtype=torch.bfloat16).float()
    out = orthogonalize(G)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, want, atol=0, rtol=0)
    assert not torch.equal(out, orthogonalize(G, dtype=torch.float32))


def test_only_matrices_in_muon_groups_message():
    v = torch.nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match=r"^Muon groups take 2-D weight matrices only; put "
                                         r"vectors and embeddings in a group with muon=False "
                                         r"\(AdamW\)$"):
        Muon([{"params": [v], "muon": True}])


# ---------------------------------------------------------------------------- added for issue 16
def test_a_tiny_gradient_still_moves_against_it():
    """A gradient far below the normalisation's 1e-7 guard: the update is still close to its
    U V^T (a descent direction), never flipped."""
    torch.manual_seed(0)
    G = 1e-10 * torch.randn(16, 32)
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    O = orthogonalize(G, dtype=torch.float32).double()
    assert (O * (U @ Vh)).sum() / (O.norm() * (U @ Vh).norm()) > 0.5


TORCH_MUON = getattr(torch.optim, "Muon", None)  # PyTorch >= 2.9


@pytest.mark.skipif(TORCH_MUON is None, reason="this PyTorch has no torch.optim.Muon (< 2.9)")
def test_step_with_a_closure_equals_torch_muon():
    """step(closure) re-evaluates the loss with gradients on, returns it, and updates as
    torch.optim.Muon does; a matrix without a gradient stays where it is."""
    torch.manual_seed(0)
    w0, x = torch.randn(8, 8), torch.randn(4, 8)
    ours_w, ref_w = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    idle = torch.randn(8, 8, requires_grad=True)
    idle0 = idle.detach().clone()
    ours = Muon([{"params": [ours_w, idle], "muon": True}], lr=0.02, momentum=0.9)
    ref = TORCH_MUON([ref_w], lr=0.02, momentum=0.9, weight_decay=0.0, nesterov=True,
                     ns_coefficients=NS_COEFFICIENTS, ns_steps=5, adjust_lr_fn="original")

    def closure_for(w, opt):
        def closure():
            opt.zero_grad()
            loss = (x @ w).square().mean()
            loss.backward()
            return loss
        return closure

    for _ in range(2):
        got, want = ours.step(closure_for(ours_w, ours)), ref.step(closure_for(ref_w, ref))
        assert got is not None and torch.equal(got, want)
    torch.testing.assert_close(ours_w, ref_w, atol=0, rtol=0)
    assert not torch.equal(ours_w.detach(), w0) and torch.equal(idle.detach(), idle0)
    assert ours.step() is None


def _tiny_model():
    return lc.Transformer(lc.get_preset("tiny"))


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_configure_adamw_settings(device):
    """AdamW: the run's lr and betas, decay on matrices only, fused kernels (they exist for
    CPU and CUDA parameters; the device is only read, no GPU is needed)."""
    cfg = lc.TrainConfig(optimizer="adamw", lr=3e-3, beta1=0.8, beta2=0.95, weight_decay=0.2)
    opt = configure_optimizer(_tiny_model(), cfg, torch.device(device))
    assert isinstance(opt, torch.optim.AdamW)
    assert [(g["lr"], g["peak_lr"], g["betas"], g["weight_decay"], g["fused"])
            for g in opt.param_groups] == [(3e-3, 3e-3, (0.8, 0.95), 0.2, True),
                                           (3e-3, 3e-3, (0.8, 0.95), 0.0, True)]


def test_configure_muon_settings_and_a_step():
    """Muon: momentum and AdamW betas from the run, weight decay on the AdamW matrices only
    (not on Muon's, not on the vectors); one step moves every group."""
    cfg = lc.TrainConfig(optimizer="muon", lr=3e-3, muon_lr=0.02, muon_momentum=0.8,
                         beta1=0.8, beta2=0.95, weight_decay=0.2, dtype="fp32")
    model = _tiny_model()
    opt = configure_optimizer(model, cfg, torch.device("cpu"))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.2, 0.0]
    assert all((g["momentum"], g["betas"]) == (0.8, (0.8, 0.95)) for g in opt.param_groups)
    before = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    tokens = torch.randint(0, model.params.vocab_size, (2, 8))
    model(tokens).float().square().mean().backward()
    opt.step()
    after = [p.detach() for g in opt.param_groups for p in g["params"]]
    assert all(torch.isfinite(a).all() for a in after)
    assert sum(not torch.equal(a, b) for a, b in zip(after, before)) == len(before)


def test_set_lr_on_groups_without_a_peak():
    """A plain optimizer (no "peak_lr" recorded): the run's peak is the reference."""
    opt = torch.optim.SGD([torch.zeros(2, requires_grad=True)], lr=0.01)
    set_lr(opt, 0.003, 0.01)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.003)
