"""Muon: orthogonalised momentum for the transformer's weight matrices (Jordan et al., 2024).

AdamW scales every coordinate of the gradient on its own. For a weight matrix that ignores
what the gradient is: a matrix, whose few largest singular directions usually dominate, so one
step mostly moves the weights along those directions and hardly along the rest. Muon keeps a
momentum of the gradient, as SGD does, and replaces it by the nearest orthogonal matrix, U V^T
for momentum = U S V^T: every direction the gradient points in moves by the same amount.
Computing U V^T exactly would take an SVD per matrix per step; a few iterations of an odd
matrix polynomial (Newton-Schulz) get close enough, with matrix products only.

On Tiny Shakespeare it reaches in 120 s of CPU training the loss (1.54) that AdamW reached in
300 s (benchmarks/tune_cpu.py and benchmarks/train_shakespeare.py record both).

Muon is for the 2-D matrices inside the blocks. The embedding table (a lookup, not a linear
map), the output head and the norm gains keep AdamW, in the same optimizer (parameter groups
with muon=False), so a run has one optimizer, one state dict and one learning-rate schedule.

Why not torch.optim.Muon (PyTorch >= 2.9)? Its update is the same: tests/test_optim.py checks
that this Muon gives bit for bit the parameters torch.optim.Muon gives with matched settings.
This one is kept because the course reads it, and for three things PyTorch's lacks: the
AdamW groups in the same optimizer, matrices of one shape orthogonalised in one batched
product, and Newton-Schulz in fp32 on CPUs without bf16 units (PyTorch's always uses bf16,
emulated and slow there).

`configure_optimizer` builds the optimizer of a run (its parameter groups), `set_lr` moves
every group along the schedule.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from .runtime import resolve_dtype

# Coefficients of the quintic x -> a x + b x^3 + c x^5 applied to singular values, chosen by
# Muon's authors so that small singular values grow as fast as possible toward 1: after five
# steps every singular value lies roughly in [0.7, 1.2], which works as well as exactly 1.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(G: torch.Tensor, steps: int = 5,
                  dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Approximately U V^T for G = U S V^T, for one matrix (m, n) or a stack (k, m, n).

    X_{t+1} = a X + b (X X^T) X + c (X X^T)^2 X keeps U and V and maps each singular value s
    to a s + b s^3 + c s^5. Dividing by the Frobenius norm first puts every s in [0, 1]. Runs
    in `dtype`: bfloat16 where the hardware has it (the iteration tolerates the rounding, and
    it is twice as fast), on the short side of the matrix so that X X^T is the smaller product.
    """
    a, b, c = NS_COEFFICIENTS
    X = G.to(dtype)
    batched = X.dim() == 3
    if not batched:
        X = X[None]  # (1, m, n)
    wide = X.shape[-2] <= X.shape[-1]
    if not wide:
        X = X.mT  # (k, short, long)
    X = X / (torch.linalg.matrix_norm(X, keepdim=True) + 1e-7)  # singular values <= 1
    for _ in range(steps):
        A = X @ X.mT  # (k, short, short)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b A + c A^2
        X = torch.baddbmm(X, B, X, beta=a)  # a X + (b A + c A^2) X
    if not wide:
        X = X.mT
    return (X if batched else X[0]).to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for parameter groups with muon=True, AdamW for the others.

    Muon groups: a momentum buffer B = mu B + (1 - mu) g (an average of the gradients), the
    Nesterov look-ahead (1 - mu) g + mu B (or B itself with nesterov=False), orthogonalised,
    scaled by sqrt(max(1, rows / cols)) so that tall matrices (more outputs than inputs) take
    updates of the same RMS as square ones, then p -= lr * update, after the decoupled weight
    decay p *= 1 - lr * weight_decay. This is torch.optim.Muon's rule (adjust_lr_fn=None).
    AdamW groups: torch.optim.AdamW's update (tests/test_optim.py checks it against torch's).
    Matrices of the same shape are orthogonalised together in one batched product.
    """

    def __init__(self, param_groups: list[dict], lr: float = 0.01, momentum: float = 0.95,
                 betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-8,
                 weight_decay: float = 0.0, ns_steps: int = 5, nesterov: bool = True,
                 ns_dtype: torch.dtype = torch.bfloat16):
        for g in param_groups:
            if g.get("muon", False) and any(p.dim() != 2 for p in g["params"]):
                raise ValueError("Muon groups take 2-D weight matrices only; put vectors and "
                                 "embeddings in a group with muon=False (AdamW)")
        defaults = dict(lr=lr, momentum=momentum, betas=betas, eps=eps,
                        weight_decay=weight_decay, ns_steps=ns_steps, nesterov=nesterov,
                        muon=False)
        super().__init__(param_groups, defaults)
        self.ns_dtype = ns_dtype  # not in the state dict: it follows the hardware, not the run

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():  # a block, not a decorator, so that mutation testing reaches it
            for group in self.param_groups:
                params = [p for p in group["params"] if p.grad is not None]
                if group["muon"]:
                    self._muon_step(group, params)
                else:
                    self._adamw_step(group, params)
        return loss

    def _muon_step(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, beta = group["lr"], group["momentum"]
        by_shape = defaultdict(list)
        for p in params:
            buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
            buf.lerp_(p.grad, 1 - beta)  # (rows, cols): the running average of gradients
            look_ahead = p.grad.lerp(buf, beta) if group["nesterov"] else buf
            by_shape[p.shape].append((p, look_ahead))
        for (rows, cols), items in by_shape.items():
            updates = orthogonalize(torch.stack([u for _, u in items]), group["ns_steps"],
                                    self.ns_dtype)
            scale = math.sqrt(max(1.0, rows / cols))
            for (p, _), update in zip(items, updates):
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * scale)

    def _adamw_step(self, group: dict, params: list[torch.Tensor]) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros(())
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = state["step"].item()
            m, v = state["exp_avg"], state["exp_avg_sq"]
            p.mul_(1 - lr * group["weight_decay"])
            m.lerp_(p.grad, 1 - beta1)  # running mean of gradients
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)  # and of their squares
            denom = (v / (1 - beta2 ** t)).sqrt_().add_(eps)  # bias-corrected
            p.addcdiv_(m, denom, value=-lr / (1 - beta1 ** t))


# ---------------------------------------------------------------------------- a run's optimizer
def configure_optimizer(model: torch.nn.Module, cfg, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer of a training run (`cfg`: a TrainConfig). AdamW with weight decay on the
    matrices only: decaying the norms' gains toward zero would fight the normalisation, and
    embeddings are matrices like any other here.

    With cfg.optimizer="muon", the matrices inside the blocks move to a Muon group and the
    embeddings, the output head and the norm gains keep AdamW. Every group records its peak
    learning rate ("peak_lr"); `set_lr` scales all of them alike.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    vectors = [p for _, p in named if p.dim() < 2]
    if cfg.optimizer == "muon":
        in_blocks = [p for n, p in named if p.dim() == 2 and n.startswith("layers.")]
        matrices = [p for n, p in named if p.dim() >= 2 and not n.startswith("layers.")]
        groups = [{"params": in_blocks, "muon": True, "lr": cfg.muon_lr, "weight_decay": 0.0},
                  {"params": matrices, "weight_decay": cfg.weight_decay},
                  {"params": vectors, "weight_decay": 0.0}]
        # Newton-Schulz in bf16 where the hardware multiplies bf16 natively, else in fp32
        native_bf16 = resolve_dtype(cfg.dtype, device) == torch.bfloat16
        optimizer = Muon(groups, lr=cfg.lr, momentum=cfg.muon_momentum,
                         betas=(cfg.beta1, cfg.beta2),
                         ns_dtype=torch.bfloat16 if native_bf16 else torch.float32)
    else:
        matrices = [p for _, p in named if p.dim() >= 2]
        groups = [{"params": matrices, "weight_decay": cfg.weight_decay},
                  {"params": vectors, "weight_decay": 0.0}]
        fused = device.type in ("cuda", "cpu")  # fused kernels exist for both in torch >= 2.4
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                      fused=fused)
    for group in optimizer.param_groups:
        group["peak_lr"] = group["lr"]
    return optimizer


def set_lr(optimizer: torch.optim.Optimizer, lr: float, peak_lr: float) -> None:
    """Put every group at the fraction lr / peak_lr of its own peak ("peak_lr", else
    `peak_lr`): Muon's matrices and AdamW's parameters warm up and decay together."""
    for group in optimizer.param_groups:
        group["lr"] = group.get("peak_lr", peak_lr) * lr / peak_lr
