"""Training Llama on Tiny Shakespeare: a plain PyTorch loop, readable top to bottom.

One step: draw a batch of windows, predict every next token, average the cross-entropy,
back-propagate, clip the gradient norm, let AdamW update the weights at the learning rate the
schedule gives. Around that: mixed precision picked for the device, periodic evaluation,
checkpoints that a crash cannot corrupt, resumption that reproduces the uninterrupted run, a
wall-clock budget that the learning-rate schedule is fitted to, and DistributedDataParallel
when launched with torchrun.

Run folder (`out_dir`), loadable with `Transformer.from_pretrained(out_dir)` and
`CharTokenizer.from_pretrained(out_dir)`:

    config.json, model.safetensors, llama_course.json   the model (Hugging Face format)
    char_tokenizer.json                                  the vocabulary
    train_state.pt                                       optimizer, step, RNG (for --resume)
    metrics.csv                                          step, elapsed_s, lr, train_loss, val_loss
    metrics.json                                         the summary, with the final val loss
    loss_curve.png                                       the picture of metrics.csv
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from .config import ModelArgs, get_preset, parameter_breakdown
from .data import encode_text, eval_windows, get_batch, load_tiny_shakespeare, train_val_split
from .model import Transformer, eval_mode
from .optim import Muon
from .tokenizer import CharTokenizer

STATE_FILE = "train_state.pt"
METRICS_CSV = "metrics.csv"
METRICS_JSON = "metrics.json"
LOSS_PNG = "loss_curve.png"
CSV_FIELDS = ["step", "elapsed_s", "lr", "train_loss", "val_loss"]


@dataclass
class TrainConfig:
    """Everything a run depends on. Defaults: the shakespeare-cpu preset."""

    preset: str = "shakespeare-cpu"   # model shape, a name from llama_course.config.PRESETS
    out_dir: str = "runs/shakespeare"  # the run folder
    batch_size: int = 32              # sequences per step (per process under torchrun)
    block_size: Optional[int] = None  # context length trained on; None = the preset's max_seq_len
    grad_accum_steps: int = 1         # micro-batches summed before each update
    max_steps: int = 5000             # optimizer updates, unless the time budget ends first
    time_budget: Optional[float] = None  # seconds of training; the LR schedule ends on time
    optimizer: str = "adamw"          # adamw | muon (Muon for the blocks' matrices, see optim.py)
    lr: float = 2e-3                  # AdamW's peak learning rate (small models tolerate 2e-3)
    muon_lr: float = 0.01             # peak learning rate of Muon's matrices (unit-size updates)
    muon_momentum: float = 0.95       # Muon's momentum: it sees gradients only through this average
    min_lr_ratio: float = 0.1         # the cosine decays to lr * min_lr_ratio
    warmup_steps: int = 20            # linear warm-up: Adam's moment estimates start at zero
    weight_decay: float = 0.1         # decoupled, on matrices only (not on norm gains)
    beta1: float = 0.9
    beta2: float = 0.99               # shorter memory than 0.999: few steps, noisy small batches
    grad_clip: float = 1.0            # max global gradient norm; 0 disables
    eval_interval: int = 250          # steps between quick evaluations (0: none)
    eval_batches: int = 20            # batches per quick evaluation
    log_interval: int = 10            # steps between metrics.csv rows
    save_interval: int = 0            # steps between checkpoints (0: at the end and on Ctrl-C)
    device: str = "auto"              # auto | cpu | cuda | mps
    dtype: str = "auto"               # auto | fp32 | bf16 | fp16 (autocast precision)
    compile: bool = False             # torch.compile the model
    seed: int = 1337
    threads: Optional[int] = None     # CPU threads for torch (None: torch's default)
    model_overrides: dict = field(default_factory=dict)  # ModelArgs fields to change
    progress: bool = True             # show the tqdm progress bar
    save: bool = True                 # write the run folder (off for throwaway benchmark runs)

    def __post_init__(self) -> None:
        for name in ("batch_size", "grad_accum_steps", "max_steps", "eval_batches",
                     "log_interval"):
            _positive(name, getattr(self, name))
        for name in ("warmup_steps", "eval_interval", "save_interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} ({getattr(self, name)}) must be >= 0")
        if self.block_size is not None:
            _positive("block_size", self.block_size)
        if self.time_budget is not None and not self.time_budget > 0:
            raise ValueError(f"time_budget ({self.time_budget}) must be positive seconds")
        for name in ("lr", "muon_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} ({getattr(self, name)}) must be positive")
        if not 0 <= self.muon_momentum < 1:
            raise ValueError(f"muon_momentum ({self.muon_momentum}) must be in [0, 1)")
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"optimizer {self.optimizer!r} must be adamw or muon")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio ({self.min_lr_ratio}) must be in [0, 1]")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise ValueError(f"device {self.device!r} must be auto, cpu, cuda or mps")
        if self.dtype not in ("auto", "fp32", "bf16", "fp16"):
            raise ValueError(f"dtype {self.dtype!r} must be auto, fp32, bf16 or fp16")


def _positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} ({value!r}) must be a positive integer")


# Training settings per preset, measured by benchmarks/train_shakespeare.py.
TRAIN_PRESETS: dict[str, dict] = {
    "tiny": dict(preset="tiny", batch_size=16, block_size=64, max_steps=200, lr=3e-3,
                 eval_interval=50, warmup_steps=10),
    "shakespeare-cpu": dict(preset="shakespeare-cpu", batch_size=32, lr=2e-3,
                            optimizer="muon", muon_lr=0.01,
                            warmup_steps=50, time_budget=120.0, max_steps=100_000,
                            eval_interval=250),
    # On an H100 this 10M model memorises the text: the validation loss bottoms out near
    # step 1,000 (16M tokens, 15 passes over the data) and then climbs for as long as training
    # goes on. So the run is 1,000 steps (32 s there), the schedule ending with them; 120 s
    # stays as a cap for slower GPUs. No torch.compile: compiling took 85-110 s on the H100,
    # most of a 120-s budget, for 2x faster steps.
    "shakespeare-gpu": dict(preset="shakespeare-gpu", batch_size=64, lr=1e-3,
                            warmup_steps=100, time_budget=120.0, max_steps=1_000,
                            eval_interval=250, compile=False),
}


def train_config_for(preset: str, **overrides: Any) -> TrainConfig:
    """The TrainConfig of a preset ('auto': the GPU preset when CUDA is present)."""
    if preset == "auto":
        preset = "shakespeare-gpu" if torch.cuda.is_available() else "shakespeare-cpu"
    if preset not in TRAIN_PRESETS:
        raise ValueError(f"unknown training preset {preset!r}; choose one of: "
                         f"auto, {', '.join(TRAIN_PRESETS)}")
    return TrainConfig(**{**TRAIN_PRESETS[preset], **overrides})


# ---------------------------------------------------------------------------- environment
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA GPU")
    if name == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' asked for, but this machine has no Apple GPU")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 matrix instructions (AVX512-BF16 or AMX: recent Xeons, AMD Zen 4
    and later), where a bf16 matrix product runs about 2.5x faster than an fp32 one. Elsewhere
    bf16 is emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: assume no
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """bf16 autocast where the hardware supports it, fp16 (with a grad scaler) on older GPUs such
    as Colab's T4, fp32 elsewhere: most laptop CPUs, and Apple GPUs."""
    if name != "auto":
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


class Distributed:
    """torchrun's environment: rank, world size, and the process group (NCCL or gloo)."""

    def __init__(self, device_name: str):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1
        if self.enabled:
            import torch.distributed as dist
            use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
            if use_cuda:
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device_name: str) -> torch.device:
        device = resolve_device(device_name)
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def broadcast_flag(self, value: bool, device: torch.device) -> bool:
        """Rank 0 decides (e.g. 'time is up'), every rank follows: no rank is left waiting."""
        if not self.enabled:
            return value
        import torch.distributed as dist
        t = torch.tensor([float(value)], device=device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The average of `t` over all ranks (the loss of the whole global batch)."""
        if not self.enabled:
            return t
        import torch.distributed as dist
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t / self.world_size

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist
            dist.barrier()

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist
            dist.destroy_process_group()


def machine_load() -> dict:
    """What else the machine is doing: the load average and the number of cores."""
    try:
        load1, load5, _ = os.getloadavg()
    except OSError:  # not on every OS
        load1 = load5 = float("nan")
    return {"loadavg_1min": load1, "loadavg_5min": load5, "cpu_count": os.cpu_count()}


# ---------------------------------------------------------------------------- schedule
def lr_at(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over `warmup_steps`, then cosine from lr to lr * min_lr_ratio as
    `progress` (the fraction of the run done, by steps or by the clock) goes from 0 to 1."""
    min_lr = cfg.lr * cfg.min_lr_ratio
    cosine = min_lr + 0.5 * (cfg.lr - min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))
    if step < cfg.warmup_steps:
        return cosine * (step + 1) / cfg.warmup_steps
    return cosine


def run_progress(cfg: TrainConfig, step: int, train_time: float) -> float:
    """Fraction of the run done: by steps, or by the clock when a time budget is set."""
    progress = step / cfg.max_steps
    if cfg.time_budget is not None:
        progress = max(progress, train_time / cfg.time_budget)
    return progress


def configure_optimizer(model: torch.nn.Module, cfg: TrainConfig,
                        device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on the matrices only: decaying the norms' gains toward zero
    would fight the normalisation, and embeddings are matrices like any other here.

    With optimizer="muon", the matrices inside the blocks move to a Muon group (optim.py) and
    the embeddings, the output head and the norm gains keep AdamW. Every group records its
    peak learning rate ("peak_lr"); the schedule scales all of them alike.
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
        ns_dtype = torch.bfloat16 if resolve_dtype(cfg.dtype, device) == torch.bfloat16 \
            else torch.float32
        optimizer = Muon(groups, lr=cfg.lr, momentum=cfg.muon_momentum,
                         betas=(cfg.beta1, cfg.beta2), ns_dtype=ns_dtype)
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


def set_lr(optimizer: torch.optim.Optimizer, cfg: TrainConfig, lr: float) -> None:
    """Set `lr` (the schedule's value for cfg.lr) on every group, each in proportion to its
    own peak: Muon's matrices and AdamW's parameters warm up and decay together."""
    for group in optimizer.param_groups:  # (runs saved before peak_lr existed: AdamW at cfg.lr)
        group["lr"] = group.get("peak_lr", cfg.lr) * lr / cfg.lr


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def estimate_loss(model: Transformer, data: torch.Tensor, block_size: int, batch_size: int,
                  n_batches: int, device: torch.device, autocast, seed: int) -> float:
    """Mean loss over a few random batches: a quick, noisy reading during training."""
    g = torch.Generator().manual_seed(seed)
    losses = []
    with eval_mode(model):
        for _ in range(n_batches):
            x, y = get_batch(data, batch_size, block_size, g)
            with autocast():
                logits = model(x.to(device))
            losses.append(F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten()).item())
    return sum(losses) / len(losses)


@torch.no_grad()
def evaluate(model: Transformer, data: torch.Tensor, block_size: int,
             device: torch.device, batch_size: int = 64, autocast=None) -> float:
    """Loss over the whole split, every token after the first predicted exactly once.
    This is the number a run reports."""
    autocast = autocast or nullcontext
    total, count = 0.0, 0
    with eval_mode(model):
        for x, y in eval_windows(data, block_size):
            for i in range(0, len(x), batch_size):
                xb, yb = x[i:i + batch_size].to(device), y[i:i + batch_size].to(device)
                with autocast():
                    logits = model(xb)
                total += F.cross_entropy(logits.flatten(0, 1), yb.flatten(),
                                         reduction="sum").item()
                count += yb.numel()
    return total / count


# ---------------------------------------------------------------------------- checkpoints
def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)  # an interrupted save leaves the previous file intact


def save_checkpoint(out_dir: Path, model: Transformer, optimizer, scaler, tokenizer,
                    cfg: TrainConfig, step: int, train_time: float,
                    batch_gen: torch.Generator) -> None:
    """Weights (safetensors), tokenizer, then the training state last: `train_state.pt` names
    the step its weights belong to, and resuming checks that they match."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    state = {
        "step": step,
        "train_time": train_time,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "batch_generator": batch_gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "config": dataclasses.asdict(cfg),
        "weights_sha": _weights_fingerprint(model),
    }
    _atomic_torch_save(state, out_dir / STATE_FILE)


def _weights_fingerprint(model: Transformer) -> float:
    """A cheap checksum of the weights, to detect a state file paired with other weights."""
    return float(sum(p.detach().double().sum().item() for p in model.parameters()))


def load_train_state(out_dir: Path) -> dict:
    path = out_dir / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} does not exist (was the run saved?)")
    # weights_only: a checkpoint is data, never code to execute
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------- metrics
def _read_metrics(path: Path, up_to_step: int) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) <= up_to_step]


def _write_metrics(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def plot_loss_curve(rows: list[dict], path: Path, title: str = "") -> None:
    """loss_curve.png: training loss (logged steps) and validation loss, against steps."""
    from matplotlib.figure import Figure  # no pyplot: works headless and inside notebooks

    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    train = [(int(r["step"]), float(r["train_loss"])) for r in rows if r["train_loss"] != ""]
    val = [(int(r["step"]), float(r["val_loss"])) for r in rows if r["val_loss"] != ""]
    if train:
        ax.plot(*zip(*train), label="train (batch)", alpha=0.7)
    if val:
        ax.plot(*zip(*val), "o-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per character)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


GPU_PEAK_FLOPS = {  # dense bf16/fp16 tensor-core peaks, for model FLOPs utilisation
    "H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12,
    "V100": 125e12, "T4": 65e12, "RTX 4090": 165e12, "RTX 3090": 71e12,
}


def flops_per_token(args: ModelArgs, block_size: int) -> float:
    """Training FLOPs per token: 6 per matrix parameter (forward 2, backward 4) plus the
    attention scores and mixing, 12 * n_layers * T * dim (PaLM's accounting)."""
    b = parameter_breakdown(args)
    matmul_params = b["total"] - b["tok_embeddings"] - b["norms"]
    if args.tie_word_embeddings:
        matmul_params += b["tok_embeddings"]  # the tied head is still a matmul
    return 6 * matmul_params + 12 * args.n_layers * block_size * args.dim


def peak_flops(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in GPU_PEAK_FLOPS.items() if k in name), None)


# ---------------------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    train_time: float          # seconds spent in training steps (evaluation excluded)
    final_val_loss: float      # loss over the whole validation split
    tokens_per_s: float
    interrupted: bool
    summary: dict


def _log(msg: str, dist: Distributed) -> None:
    if dist.is_main:
        print(msg, flush=True)


def train(cfg: TrainConfig, resume: bool = False, text: Optional[str] = None,
          callback: Optional[Callable[[int, float], None]] = None,
          model_fn: Optional[Callable[[ModelArgs], torch.nn.Module]] = None) -> TrainResult:
    """Train (or resume) a run and return its figures.

    `callback(step, loss)` runs after every step (raise KeyboardInterrupt in it to simulate
    Ctrl-C). `model_fn(args)` builds a different model than `Transformer(args)`: the ablations
    in benchmarks/ train variants of Llama with the very same loop.
    """
    dist = Distributed(cfg.device)
    try:
        return _train(cfg, resume, text, callback, model_fn, dist)
    finally:
        dist.close()


def _train(cfg, resume, text, callback, model_fn, dist: Distributed) -> TrainResult:
    device = dist.device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out_dir = Path(cfg.out_dir)
    torch.manual_seed(cfg.seed)

    state = load_train_state(out_dir) if resume else None

    # ---- data and tokenizer
    text = load_tiny_shakespeare() if text is None else text
    tokenizer = CharTokenizer.from_pretrained(out_dir) if resume else CharTokenizer.from_text(text)
    train_data, val_data = train_val_split(encode_text(text, tokenizer))

    # ---- model: a fresh one, or the saved one
    if resume:
        model = Transformer.from_pretrained(out_dir)
        if abs(_weights_fingerprint(model) - state["weights_sha"]) > 1e-6 * (1 + abs(state["weights_sha"])):
            raise ValueError(f"{out_dir}: {STATE_FILE} does not belong to model.safetensors "
                             "(a save was interrupted between the two files); cannot resume")
        args = model.params
    else:
        base = get_preset(cfg.preset).replace(**cfg.model_overrides)
        args = base.replace(vocab_size=tokenizer.vocab_size,
                            max_seq_len=cfg.block_size or base.max_seq_len,
                            max_batch_size=max(base.max_batch_size, cfg.batch_size))
        model = (model_fn or Transformer)(args)
    block_size = args.max_seq_len  # the model's context is the context it trains on
    model.to(device).train()  # dropout on (from_pretrained returns a model in eval mode)

    dtype = resolve_dtype(cfg.dtype, device)
    use_autocast = dtype != torch.float32

    def autocast():
        if not use_autocast:
            return nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    optimizer = configure_optimizer(model, cfg, device)
    batch_gen = torch.Generator().manual_seed(cfg.seed + 1)  # batches: same on every rank
    step, train_time = 0, 0.0
    if resume:
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        batch_gen.set_state(state["batch_generator"])
        torch.set_rng_state(state["torch_rng"])
        step, train_time = state["step"], state["train_time"]

    raw_model = model
    if cfg.compile:
        model = torch.compile(model)
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    rows = _read_metrics(out_dir / METRICS_CSV, step) if resume else []
    n_params = raw_model.num_parameters()
    tokens_per_step = cfg.batch_size * block_size * cfg.grad_accum_steps * dist.world_size
    _log(f"model: {n_params:,} parameters ({args.n_layers} layers, dim {args.dim}, "
         f"{args.n_heads} heads / {args.kv_heads} KV heads, context {block_size}); "
         f"device {device}, {str(dtype).removeprefix('torch.')}, "
         f"{dist.world_size} process(es), {tokens_per_step:,} tokens per step", dist)
    if resume:
        _log(f"resuming {out_dir} at step {step}", dist)

    load_start = machine_load()
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    bar = _progress_bar(cfg, dist, step, train_time)
    interrupted, last_loss = False, float("nan")
    pending = []  # losses since the last log row, kept on the device (no sync per step)
    try:
        while True:
            progress = run_progress(cfg, step, train_time)
            if dist.broadcast_flag(progress >= 1.0, device):
                break
            t0 = time.perf_counter()
            lr = lr_at(cfg, step, progress)
            set_lr(optimizer, cfg, lr)
            loss = _train_step(model, optimizer, scaler, train_data, cfg, block_size, batch_gen,
                               dist, device, autocast)
            step += 1
            pending.append(loss)
            if step % cfg.log_interval == 0 or callback is not None:
                last_loss = dist.mean(torch.stack(pending).mean()).item()  # syncs the device
                pending = []
            train_time += time.perf_counter() - t0
            if step % cfg.log_interval == 0:
                rows.append({"step": step, "elapsed_s": round(train_time, 3), "lr": lr,
                             "train_loss": round(last_loss, 6), "val_loss": ""})
                _update_bar(bar, cfg, step, train_time, last_loss, tokens_per_step)
            if cfg.eval_interval and step % cfg.eval_interval == 0 and dist.is_main:
                val = estimate_loss(raw_model, val_data, block_size, cfg.batch_size,
                                    cfg.eval_batches, device, autocast, seed=cfg.seed + 2)
                _set_val(rows, step, train_time, lr, val)
            if cfg.save and cfg.save_interval and step % cfg.save_interval == 0 and dist.is_main:
                save_checkpoint(out_dir, raw_model, optimizer, scaler, tokenizer, cfg, step,
                                train_time, batch_gen)
                _write_metrics(out_dir / METRICS_CSV, rows)
            if callback is not None:
                callback(step, last_loss)
    except KeyboardInterrupt:
        interrupted = True
        _log(f"\ninterrupted at step {step}: saving a checkpoint", dist)
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - wall_start
    cpu_util = (time.process_time() - cpu_start) / max(wall, 1e-9) / torch.get_num_threads()

    result_val = float("nan")
    if dist.is_main:
        if not interrupted:
            t_eval = time.perf_counter()
            result_val = evaluate(raw_model, val_data, block_size, device, autocast=autocast)
            _set_val(rows, step, train_time, lr_at(cfg, step, 1.0), result_val)
            _log(f"final validation loss (whole split): {result_val:.4f} "
                 f"[{time.perf_counter() - t_eval:.1f} s to evaluate]", dist)
        out_dir.mkdir(parents=True, exist_ok=True)
        if cfg.save:
            save_checkpoint(out_dir, raw_model, optimizer, scaler, tokenizer, cfg, step,
                            train_time, batch_gen)
        _write_metrics(out_dir / METRICS_CSV, rows)
        plot_loss_curve(rows, out_dir / LOSS_PNG,
                        title=f"{cfg.preset}: {n_params / 1e6:.2f}M parameters")
    tokens_per_s = tokens_per_step * step / max(train_time, 1e-9) if step else 0.0
    summary = _summary(cfg, args, n_params, step, train_time, wall, result_val, tokens_per_s,
                       cpu_util, load_start, device, dtype, dist, raw_model, block_size,
                       interrupted)
    if dist.is_main:
        (out_dir / METRICS_JSON).write_text(json.dumps(summary, indent=2))
        _log(f"{step} steps in {train_time:.1f} s of training ({tokens_per_s:,.0f} tokens/s"
             + (f", MFU {summary['mfu']:.1%}" if summary.get("mfu") else "")
             + f"); run folder: {out_dir}", dist)
        if interrupted:
            _log(f"resume with: python -m llama_course train --out {out_dir} --resume", dist)
    dist.barrier()
    return TrainResult(out_dir, step, train_time, result_val, tokens_per_s, interrupted, summary)


def _train_step(model, optimizer, scaler, train_data, cfg, block_size, batch_gen, dist,
                device, autocast) -> torch.Tensor:
    """One optimizer update over grad_accum_steps micro-batches; returns the mean loss."""
    total = torch.zeros((), device=device)
    for micro in range(cfg.grad_accum_steps):
        # one global batch for all ranks, each rank takes its own slice of it: the same
        # examples as a single process with world_size times the batch
        ix = torch.randint(len(train_data) - block_size, (cfg.batch_size * dist.world_size,),
                           generator=batch_gen)
        ix = ix[dist.rank * cfg.batch_size:(dist.rank + 1) * cfg.batch_size]
        x, y = get_batch(train_data, cfg.batch_size, block_size, ix=ix)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        last = micro == cfg.grad_accum_steps - 1
        sync = getattr(model, "no_sync", None)
        ctx = sync() if (sync is not None and not last) else nullcontext()
        with ctx:
            with autocast():
                logits = model(x)  # (B, T, vocab)
                loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            scaled = loss / cfg.grad_accum_steps
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total += loss.detach() / cfg.grad_accum_steps
    if scaler is not None:
        scaler.unscale_(optimizer)
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def _set_val(rows: list[dict], step: int, train_time: float, lr: float, val: float) -> None:
    if rows and int(rows[-1]["step"]) == step:
        rows[-1]["val_loss"] = round(val, 6)
    else:
        rows.append({"step": step, "elapsed_s": round(train_time, 3), "lr": lr,
                     "train_loss": "", "val_loss": round(val, 6)})


def _progress_bar(cfg: TrainConfig, dist: Distributed, step: int, train_time: float):
    if not (cfg.progress and dist.is_main):
        return None
    from tqdm.auto import tqdm
    if cfg.time_budget is not None:  # the bar fills with the clock
        return tqdm(total=round(cfg.time_budget), initial=round(train_time), unit="s",
                    desc="training", bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s {postfix}")
    return tqdm(total=cfg.max_steps, initial=step, unit="step", desc="training")


def _update_bar(bar, cfg, step, train_time, loss, tokens_per_step) -> None:
    if bar is None:
        return
    if cfg.time_budget is not None:
        bar.n = min(round(train_time), bar.total)
    else:
        bar.n = step
    tok_s = tokens_per_step * cfg.log_interval / max(train_time - getattr(bar, "_t_last", 0), 1e-9)
    bar._t_last = train_time
    bar.set_postfix_str(f"step {step}, loss {loss:.3f}, {tok_s:,.0f} tok/s", refresh=False)
    bar.refresh()


def _summary(cfg, args, n_params, step, train_time, wall, val, tokens_per_s, cpu_util,
             load_start, device, dtype, dist, model, block_size, interrupted) -> dict:
    summary = {
        "preset": cfg.preset,
        "parameters": n_params,
        "steps": step,
        "train_time_s": round(train_time, 2),
        "wall_time_s": round(wall, 2),
        "final_val_loss": val,
        "tokens_per_s": round(tokens_per_s, 1),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "world_size": dist.world_size,
        "threads": torch.get_num_threads(),
        "cpu_utilization": round(cpu_util, 3),
        "load_before": load_start,
        "load_after": machine_load(),
        "interrupted": interrupted,
        "model_args": args.to_dict(),
        "train_config": dataclasses.asdict(cfg),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }
    # a busy machine: our threads did not get the cores they asked for (the load average
    # is reported too, but it also counts this process's own previous runs)
    summary["contended"] = bool(device.type == "cpu" and cpu_util < 0.85)
    peak = peak_flops(device)
    if peak:
        summary["mfu"] = tokens_per_s * flops_per_token(args, block_size) / peak
    if dist.enabled:
        summary["rank_checksums"] = _rank_checksums(model, device)
    return summary


def _rank_checksums(model: Transformer, device: torch.device) -> list[float]:
    """Every rank's weight checksum: equal when DDP kept the replicas in sync."""
    import torch.distributed as dist
    mine = torch.tensor([_weights_fingerprint(model)], dtype=torch.float64, device=device)
    gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    return [t.item() for t in gathered]
