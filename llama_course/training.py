"""Training Llama on Tiny Shakespeare: the schedule, one step, evaluation, the loop.

One step (`train_step`): predict every next token of a batch of windows, average the
cross-entropy, back-propagate, clip the gradient norm, let the optimizer update the weights.
The caller sets the learning rate before each step, from the schedule (`lr_at`: linear warm-up,
then cosine). `train(cfg)` is the full run around that very step: periodic evaluation,
checkpoints that a crash cannot corrupt (run_folder.py), resumption that reproduces the
uninterrupted run, a wall-clock budget that the schedule is fitted to, a clean stop on Ctrl-C
or SIGTERM, mixed precision and torchrun (runtime.py). A learner's own loop looks like:

    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for step in range(max_steps):
        lr = lc.lr_at(step, step / max_steps, peak_lr=2e-3, warmup_steps=20)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = lc.train_step(model, optimizer, lc.get_batch(train_data, 32, 64, gen))

What a run depends on (TrainConfig) and the presets are in train_config.py.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from . import run_folder as rf
from . import runtime
from .config import ModelArgs, get_preset
from .data import (encode_text, epoch_window_starts, eval_windows, get_batch,
                   load_tiny_shakespeare, train_val_split)
from .model import Transformer, eval_mode
from .optim import configure_optimizer, set_lr
from .runtime import Distributed, StopSignals, grad_scaler, resolve_dtype
from .tokenizer import CharTokenizer
from .train_config import TrainConfig


# ---------------------------------------------------------------------------- schedule
def lr_at(step: int, progress: float, peak_lr: float, warmup_steps: int,
          min_lr_ratio: float = 0.1) -> float:
    """The learning rate of step `step` (0-based): linear warm-up over `warmup_steps` (Adam's
    moment estimates start at zero), then a cosine from peak_lr down to peak_lr * min_lr_ratio
    as `progress`, the fraction of the run done (step / max_steps, or by the clock), goes 0 -> 1."""
    min_lr = peak_lr * min_lr_ratio
    cosine = min_lr + 0.5 * (peak_lr - min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))
    if step < warmup_steps:
        return cosine * (step + 1) / warmup_steps
    return cosine


def run_progress(cfg: TrainConfig, step: int, train_time: float) -> float:
    """Fraction of the run done: by steps, or by the clock when a time budget is set."""
    progress = step / cfg.max_steps
    if cfg.time_budget is not None:
        progress = max(progress, train_time / cfg.time_budget)
    return progress


# ---------------------------------------------------------------------------- one step
def next_token_loss(logits: torch.Tensor, targets: torch.Tensor,
                    reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the predictions (B, T, vocab) against the next tokens (B, T), in nats
    per token: the one loss that training, estimates and evaluation all use."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction=reduction)


Batch = tuple[torch.Tensor, torch.Tensor]


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               batches: Union[Batch, Sequence[Batch]], grad_clip: Optional[float] = 1.0,
               autocast: Optional[torch.dtype] = None,
               scaler: Optional[torch.amp.GradScaler] = None) -> float:
    """One optimizer update; returns the mean loss (a float, nats per token).

    `batches`: one (x, y) pair of token tensors (B, T), or a list of pairs, micro-batches
    whose gradients add up before the single update (gradient accumulation: each loss is
    divided by their number, so the gradient is that of their mean). They move to the
    model's device here. `grad_clip`: max global gradient norm (0 or None: no clipping).
    `autocast`: None for fp32, or torch.bfloat16 / torch.float16 for the forward pass.
    `scaler`: a torch.amp.GradScaler with fp16, else None. The learning rate is the caller's:
    set it on the optimizer before the step. The gradients are cleared after the update.
    """
    if isinstance(batches, tuple) and len(batches) == 2 and torch.is_tensor(batches[0]):
        batches = [batches]
    if len(batches) == 0:
        raise ValueError("train_step: batches is empty; give an (x, y) pair or a list of them")
    device = next(model.parameters()).device
    total = 0.0  # a tensor on the model's device after the first loss: no sync per micro-batch
    for i, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)  # (B, T)
        # DDP averages the gradients over the ranks once, after the last micro-batch
        no_sync = getattr(model, "no_sync", None)
        with no_sync() if (no_sync is not None and i < len(batches) - 1) else nullcontext():
            with runtime.autocast(device.type, autocast):
                loss = next_token_loss(model(x), y)  # model(x): (B, T, vocab)
            scaled = loss / len(batches)
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total += loss.detach()
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return (total / len(batches)).item()


# ---------------------------------------------------------------------------- evaluation
def estimate_loss(model: torch.nn.Module, data: torch.Tensor, block_size: int,
                  batch_size: int, n_batches: int, device: torch.device,
                  autocast: Optional[torch.dtype] = None, seed: int = 0) -> float:
    """Mean loss over a few random batches: a quick, noisy reading during training."""
    g = torch.Generator().manual_seed(seed)
    losses = []
    with torch.no_grad(), eval_mode(model):
        for _ in range(n_batches):
            x, y = get_batch(data, batch_size, block_size, g)  # (B, T) each
            with runtime.autocast(device.type, autocast):
                logits = model(x.to(device))  # (B, T, vocab)
            losses.append(next_token_loss(logits, y.to(device)).item())
    return sum(losses) / len(losses)


def evaluate(model: torch.nn.Module, data: torch.Tensor, block_size: int,
             device: torch.device, batch_size: int = 64,
             autocast: Optional[torch.dtype] = None) -> float:
    """Loss over the whole split, every token after the first predicted exactly once.
    This is the number a run reports."""
    total, count = 0.0, 0
    with torch.no_grad(), eval_mode(model):
        for x, y in eval_windows(data, block_size):
            for i in range(0, len(x), batch_size):
                xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
                with runtime.autocast(device.type, autocast):
                    logits = model(xb)  # (b, T, vocab)
                total += next_token_loss(logits, yb, reduction="sum").item()
                count += yb.numel()
    return total / count


# ---------------------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    train_time: float          # seconds spent in training steps (evaluation excluded)
    final_val_loss: float      # loss over the whole validation split (nan when stopped)
    tokens_per_s: float
    interrupted: bool          # stopped early: Ctrl-C, SIGTERM, KeyboardInterrupt
    summary: dict
    signal: Optional[int] = None  # the signal that stopped it, if one did


def train(cfg: TrainConfig, resume: bool = False, text: Optional[str] = None,
          callback: Optional[Callable[[int, float], None]] = None,
          model_fn: Optional[Callable[[ModelArgs], torch.nn.Module]] = None) -> TrainResult:
    """Train (or resume) a run and return its figures.

    `callback(step, loss)` runs after every step (raise KeyboardInterrupt in it to simulate
    Ctrl-C). `model_fn(args)` builds a different model than `Transformer(args)`: the ablations
    in benchmarks/ train variants of Llama with the very same loop. SIGINT and SIGTERM stop
    the run after the current step, with a checkpoint to resume from.
    """
    dist = Distributed(cfg.device)
    try:
        with StopSignals() as stop:
            return _train(cfg, resume, text, callback, model_fn, dist, stop)
    finally:
        dist.close()


def _train(cfg, resume, text, callback, model_fn, dist: Distributed,
           stop: StopSignals) -> TrainResult:
    device, out_dir = dist.device(cfg.device), Path(cfg.out_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    state = rf.load_train_state(out_dir) if resume else None

    text = load_tiny_shakespeare() if text is None else text
    tokenizer = CharTokenizer.from_pretrained(out_dir) if resume else CharTokenizer.from_text(text)
    train_data, val_data = train_val_split(encode_text(text, tokenizer))
    raw_model = _model(cfg, out_dir, state, tokenizer.vocab_size, model_fn)
    args = raw_model.params
    block_size = args.max_seq_len  # the model's context is the context it trains on
    raw_model.to(device).train()  # dropout on (from_pretrained returns a model in eval mode)

    dtype = resolve_dtype(cfg.dtype, device)
    scaler = grad_scaler(device, dtype)
    optimizer = configure_optimizer(raw_model, cfg, device)
    batch_gen = torch.Generator().manual_seed(cfg.seed + 1)  # batches: same on every rank
    step, train_time = 0, 0.0
    if resume:
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        batch_gen.set_state(state["batch_generator"])
        torch.set_rng_state(state["torch_rng"])
        step, train_time = state["step"], state["train_time"]
    model = dist.wrap(raw_model, device, cfg.compile)

    rows = rf.read_metrics(out_dir / rf.METRICS_CSV, step) if resume else []
    tokens_per_step = cfg.batch_size * block_size * cfg.grad_accum_steps * dist.world_size
    _log(f"model: {raw_model.num_parameters():,} parameters ({args.n_layers} layers, dim "
         f"{args.dim}, {args.n_heads} heads / {args.kv_heads} KV heads, context {block_size}); "
         f"device {device}, {str(dtype).removeprefix('torch.')}, "
         f"{dist.world_size} process(es), {tokens_per_step:,} tokens per step", dist)
    if resume:
        _log(f"resuming {out_dir} at step {step}", dist)

    def save() -> None:
        rf.save_checkpoint(out_dir, raw_model, optimizer, scaler, tokenizer, asdict(cfg),
                           step, train_time, batch_gen)

    clock = rf.Clock()
    bar = rf.ProgressBar(cfg.progress and dist.is_main, cfg.time_budget, cfg.max_steps, step,
                         train_time)
    interrupted, last_loss, pending = False, float("nan"), []
    done = dist.any(run_progress(cfg, step, train_time) >= 1.0, device=device)[0]
    try:
        while not done:
            t0 = time.perf_counter()
            lr = lr_at(step, run_progress(cfg, step, train_time), cfg.lr, cfg.warmup_steps,
                       cfg.min_lr_ratio)
            set_lr(optimizer, lr, cfg.lr)
            batches = [_batch(train_data, cfg.batch_size, block_size, batch_gen, dist,
                              cfg.data_order, step * cfg.grad_accum_steps + i, cfg.seed + 1)
                       for i in range(cfg.grad_accum_steps)]
            pending.append(train_step(model, optimizer, batches, cfg.grad_clip, dtype, scaler))
            step += 1
            train_time += time.perf_counter() - t0
            if step % cfg.log_interval == 0 or callback is not None:
                last_loss, pending = dist.mean(sum(pending) / len(pending), device), []
            if step % cfg.log_interval == 0:
                rf.add_train_row(rows, step, train_time, lr, last_loss)
                bar.update(step, train_time, last_loss, tokens_per_step * cfg.log_interval)
            if cfg.eval_interval and step % cfg.eval_interval == 0 and dist.is_main:
                val = estimate_loss(raw_model, val_data, block_size, cfg.batch_size,
                                    cfg.eval_batches, device, dtype, seed=cfg.seed + 2)
                rf.add_val_row(rows, step, train_time, lr, val)
            if cfg.save and cfg.save_interval and step % cfg.save_interval == 0 and dist.is_main:
                save()
                rf.write_metrics(out_dir / rf.METRICS_CSV, rows)
            if callback is not None:
                callback(step, last_loss)
            time_up, stopping = dist.any(run_progress(cfg, step, train_time) >= 1.0,
                                         stop.received is not None, device=device)
            if stopping:
                raise KeyboardInterrupt
            done = time_up
    except KeyboardInterrupt:
        interrupted = True
        _log(f"\ninterrupted at step {step}: saving a checkpoint", dist)
    bar.close()

    final_val = float("nan")
    if dist.is_main:
        if not interrupted:
            t_eval = time.perf_counter()
            final_val = evaluate(raw_model, val_data, block_size, device, autocast=dtype)
            rf.add_val_row(rows, step, train_time,
                           lr_at(step, 1.0, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio),
                           final_val)
            _log(f"final validation loss (whole split): {final_val:.4f} "
                 f"[{time.perf_counter() - t_eval:.1f} s to evaluate]", dist)
        out_dir.mkdir(parents=True, exist_ok=True)
        if cfg.save:
            save()
        rf.write_metrics(out_dir / rf.METRICS_CSV, rows)
        rf.plot_loss_curve(rows, out_dir / rf.LOSS_PNG, title=f"{cfg.preset}: "
                           f"{raw_model.num_parameters() / 1e6:.2f}M parameters")
    tokens_per_s = tokens_per_step * step / max(train_time, 1e-9) if step else 0.0
    summary = rf.summary(asdict(cfg), args, raw_model, clock, device, dtype, dist, steps=step,
                         train_time=train_time, final_val_loss=final_val,
                         tokens_per_s=tokens_per_s, interrupted=interrupted)
    if dist.is_main:
        rf.write_summary(out_dir, summary)
        _log(f"{step} steps in {train_time:.1f} s of training ({tokens_per_s:,.0f} tokens/s"
             + (f", MFU {summary['mfu']:.1%}" if summary.get("mfu") else "")
             + f"); run folder: {out_dir}", dist)
        if interrupted:
            _log(f"resume with: python -m llama_course train --out {out_dir} --resume", dist)
    dist.barrier()
    return TrainResult(out_dir, step, train_time, final_val, tokens_per_s, interrupted,
                       summary, stop.received)


def _model(cfg: TrainConfig, out_dir: Path, state: Optional[dict], vocab_size: int,
           model_fn) -> torch.nn.Module:
    """A fresh model of the preset's shape, or the saved one when resuming."""
    if state is not None:
        model = Transformer.from_pretrained(out_dir)
        rf.check_state_matches(out_dir, model, state)
        return model
    base = get_preset(cfg.preset).replace(**cfg.model_overrides)
    args = base.replace(vocab_size=vocab_size, max_seq_len=cfg.block_size or base.max_seq_len,
                        max_batch_size=max(base.max_batch_size, cfg.batch_size))
    return (model_fn or Transformer)(args)


def _batch(data: torch.Tensor, batch_size: int, block_size: int, gen: torch.Generator,
           dist: Distributed, order: str, micro_batch: int, seed: int) -> Batch:
    """This rank's slice of one global batch, the same on every rank: the same examples as a
    single process with world_size times the batch. order "random": windows at random
    offsets drawn from `gen`; "epochs": global batch number `micro_batch` of shuffled passes
    over the text (data.epoch_window_starts), a function of (seed, micro_batch) alone."""
    n = batch_size * dist.world_size
    if order == "epochs":
        ix = epoch_window_starts(len(data), block_size, micro_batch * n, n, seed)
    else:
        ix = torch.randint(len(data) - block_size, (n,), generator=gen)
    return get_batch(data, batch_size, block_size,
                     ix=ix[dist.rank * batch_size:(dist.rank + 1) * batch_size])


def _log(msg: str, dist: Distributed) -> None:
    if dist.is_main:
        print(msg, flush=True)
