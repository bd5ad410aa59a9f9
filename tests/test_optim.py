"""Muon: the orthogonalisation against an SVD, its update rule, and its AdamW groups against
torch.optim.AdamW."""

import math

import pytest
import torch

import llama_course as lc
from llama_course.optim import NS_COEFFICIENTS, Muon, configure_optimizer, orthogonalize, set_lr


def with_spectrum(m, n, s):
    """A random (m, n) matrix U diag(s) V^T with the singular values s."""
    U = torch.linalg.qr(torch.randn(m, len(s))).Q
    V = torch.linalg.qr(torch.randn(n, len(s))).Q
    return U @ torch.diag(s) @ V.T


def polar(G):
    """U V^T from an exact SVD: what Newton-Schulz approximates."""
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    return (U @ Vh).float()


@pytest.mark.parametrize("shape", [(64, 128), (128, 48), (96, 96)], ids=["wide", "tall", "square"])
def test_orthogonalize_approximates_the_polar_factor(shape):
    torch.manual_seed(0)
    G = with_spectrum(*shape, torch.logspace(0, -1.5, min(shape)))  # a dominant few directions
    O = orthogonalize(G)
    s = torch.linalg.svdvals(O.double())
    assert O.shape == G.shape and O.dtype == G.dtype
    assert s.min() > 0.5 and s.max() < 1.3  # every direction kept, none blown up
    cosine = lambda a, b: ((a * b).sum() / (a.norm() * b.norm())).item()  # noqa: E731
    assert cosine(O, polar(G)) > 0.97  # close to U V^T,
    assert cosine(G, polar(G)) < 0.8  # which is far from the gradient itself
    # the scale of G does not matter (up to bfloat16 rounding; unnormalised, 1000 G overflows)
    torch.testing.assert_close(orthogonalize(1000 * G), O, atol=2e-2, rtol=0)


def test_orthogonalize_in_float32():
    """Where the hardware has no fast bf16 the iteration runs in fp32, with the same result
    up to bf16 rounding."""
    G = with_spectrum(40, 90, torch.logspace(0, -1.5, 40))
    O32 = orthogonalize(G, dtype=torch.float32)
    assert O32.dtype == torch.float32
    torch.testing.assert_close(O32, orthogonalize(G), atol=2e-2, rtol=0)


def test_orthogonalize_a_stack_equals_one_at_a_time():
    G = torch.randn(3, 32, 80)
    torch.testing.assert_close(orthogonalize(G), torch.stack([orthogonalize(g) for g in G]),
                               atol=1e-2, rtol=0)


def test_muon_step():
    """First step, zero momentum: p -= lr * sqrt(max(1, rows/cols)) * orthogonalize(look-ahead),
    the look-ahead 0.1 g + 0.9 (0.1 g) of a momentum that is 0.1 g after one step."""
    torch.manual_seed(0)
    tall, wide = torch.randn(48, 16, requires_grad=True), torch.randn(16, 48, requires_grad=True)
    g_tall, g_wide = torch.randn(48, 16), torch.randn(16, 48)
    before = tall.detach().clone(), wide.detach().clone()
    tall.grad, wide.grad = g_tall.clone(), g_wide.clone()
    Muon([{"params": [tall, wide], "muon": True}], lr=0.1, momentum=0.9).step()
    look_ahead = lambda g: 0.1 * g + 0.9 * (0.1 * g)  # noqa: E731
    torch.testing.assert_close(tall.detach(),
                               before[0] - 0.1 * math.sqrt(3) * orthogonalize(look_ahead(g_tall)))
    torch.testing.assert_close(wide.detach(), before[1] - 0.1 * orthogonalize(look_ahead(g_wide)))


TORCH_MUON = getattr(torch.optim, "Muon", None)  # PyTorch >= 2.9


@pytest.mark.skipif(TORCH_MUON is None, reason="this PyTorch has no torch.optim.Muon (< 2.9)")
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_equals_torch_muon(nesterov):
    """Same matrices (tall, wide, two square ones orthogonalised as one stack), same
    gradients, matched settings (Newton-Schulz coefficients and steps, Nesterov, the
    sqrt(max(1, rows/cols)) learning-rate adjustment, decoupled weight decay): the same
    parameters, bit for bit, after several steps."""
    torch.manual_seed(0)
    ours_p = [torch.randn(48, 16), torch.randn(16, 48), torch.randn(32, 32), torch.randn(32, 32)]
    ref_p = [p.clone().requires_grad_() for p in ours_p]
    ours_p = [p.requires_grad_() for p in ours_p]
    ours = Muon([{"params": ours_p, "muon": True}], lr=0.02, momentum=0.9, weight_decay=0.1,
                nesterov=nesterov, ns_steps=5, ns_dtype=torch.bfloat16)
    ref = TORCH_MUON(ref_p, lr=0.02, momentum=0.9, weight_decay=0.1, nesterov=nesterov,
                     ns_coefficients=NS_COEFFICIENTS, ns_steps=5, adjust_lr_fn="original")
    start = [p.detach().clone() for p in ours_p]
    for _ in range(4):
        for p, q in zip(ours_p, ref_p):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        ours.step()
        ref.step()
    for p, q, p0 in zip(ours_p, ref_p, start):
        assert (p - p0).abs().max() > 1e-3  # they did move
        torch.testing.assert_close(p, q, atol=0, rtol=0)


def test_adamw_groups_equal_torch_adamw():
    torch.manual_seed(0)
    a = [torch.randn(8, 4, requires_grad=True), torch.randn(4, requires_grad=True)]
    b = [p.detach().clone().requires_grad_() for p in a]
    groups = lambda ps: [{"params": [ps[0]], "weight_decay": 0.1},  # noqa: E731
                         {"params": [ps[1]], "weight_decay": 0.0}]
    ours = Muon(groups(a), lr=1e-2, betas=(0.9, 0.99))
    ref = torch.optim.AdamW(groups(b), lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    for _ in range(5):
        grads = [torch.randn_like(p) for p in a]
        for p, q, g in zip(a, b, grads):
            p.grad, q.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)


def test_muon_takes_matrices_only():
    with pytest.raises(ValueError, match="Muon groups take 2-D weight matrices only"):
        Muon([{"params": [torch.zeros(4, requires_grad=True)], "muon": True}])


def test_configure_muon_groups():
    """The blocks' matrices go to Muon; embeddings, head and norm gains stay with AdamW."""
    model = lc.Transformer(lc.get_preset("tiny"))
    cfg = lc.TrainConfig(optimizer="muon", lr=2e-3, muon_lr=0.01)
    muon, matrices, vectors = configure_optimizer(model, cfg, torch.device("cpu")).param_groups
    named = dict(model.named_parameters())
    ids = lambda g: {id(p) for p in g["params"]}  # noqa: E731
    in_blocks = {id(p) for n, p in named.items() if n.startswith("layers.") and p.dim() == 2}
    assert ids(muon) == in_blocks
    assert ids(matrices) == {id(named["tok_embeddings.weight"]), id(named["output.weight"])}
    assert all(p.dim() == 1 for p in vectors["params"])
    assert (muon["muon"], muon["lr"], matrices["muon"], matrices["lr"]) == (True, 0.01, False, 2e-3)
    opt = configure_optimizer(model, cfg, torch.device("cpu"))
    set_lr(opt, 1e-3, cfg.lr)  # half of the peak lr: every group at half its own peak
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.005, 1e-3, 1e-3])
    for dtype, ns_dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        cfg = lc.TrainConfig(optimizer="muon", dtype=dtype)
        assert configure_optimizer(model, cfg, torch.device("cpu")).ns_dtype == ns_dtype
