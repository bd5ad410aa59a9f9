"""Muon's update written out, with weight decay and two steps of momentum; its defaults; the
Newton-Schulz iteration's precision. MODULE-LEVEL names: llama_course.optim.Muon and
orthogonalize are not in lc's top-level API (the training code builds the optimizer)."""

import math

import pytest
import torch

from llama_course.optim import Muon, orthogonalize


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
