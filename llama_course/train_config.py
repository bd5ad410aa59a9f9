"""What a training run depends on: TrainConfig, its checks, and the presets.

Each field carries its help text, its check and its choices, so that `TrainConfig(...)` and
the command line (`python -m llama_course train --help`, built from these fields) agree by
construction. The presets are measured settings (benchmarks/train_shakespeare.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Optional, Sequence

import torch

# What a value must be: (test, requirement). TrainConfig and the command line use the same.
_whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
CHECKS = {
    "count": (lambda v: _whole(v) and v >= 1, "must be a positive integer"),
    "count0": (lambda v: _whole(v) and v >= 0, "must be an integer >= 0"),
    "positive": (lambda v: v > 0, "must be positive"),
    "non_negative": (lambda v: v >= 0, "must be >= 0"),
    "fraction": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "momentum": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
}


def option(default: Any, help: str, check: Optional[str] = None,
           choices: Optional[Sequence[str]] = None, flags: Sequence[str] = ()) -> Any:
    """A TrainConfig field with what the command line shows for it (`--field-name`, or
    `flags`): its help, its check, its choices. One place for both."""
    return field(default=default, metadata=dict(help=help, check=check, choices=choices,
                                                flags=tuple(flags)))


@dataclass
class TrainConfig:
    """Everything a run depends on. Defaults: the shakespeare-cpu preset's model."""

    preset: str = "shakespeare-cpu"  # model shape: a name from llama_course.config.PRESETS
    out_dir: str = option("runs/shakespeare", "the run folder to write", flags=("--out",))
    batch_size: int = option(32, "sequences per step (per process under torchrun)", "count")
    block_size: Optional[int] = option(
        None, "context length in characters, also the model's max_seq_len (unset: the "
        "preset model's)", "count")
    data_order: str = option(
        "random", "random: windows at random offsets (get_batch); epochs: every window "
        "once per pass, shuffled (data.epoch_window_starts)",
        choices=("random", "epochs"))
    grad_accum_steps: int = option(1, "micro-batches per optimizer step", "count",
                                   flags=("--grad-accum-steps", "--grad-accum"))
    max_steps: int = option(5000, "optimizer steps, unless the time budget ends first",
                            "count")
    time_budget: Optional[float] = option(
        None, "seconds of training; the learning-rate schedule ends on time", "positive")
    optimizer: str = option("adamw", "adamw, or muon: Muon for the matrices inside the "
                            "blocks, AdamW for the rest (see llama_course/optim.py)",
                            choices=("adamw", "muon"))
    lr: float = option(2e-3, "peak learning rate (AdamW's)", "positive")
    muon_lr: float = option(0.01, "peak learning rate of Muon's matrices", "positive")
    muon_momentum: float = option(0.95, "Muon's momentum", "momentum")
    min_lr_ratio: float = option(0.1, "the cosine decays to lr * min_lr_ratio", "fraction")
    warmup_steps: int = option(20, "steps of linear learning-rate warm-up", "count0")
    weight_decay: float = option(0.1, "decoupled weight decay, on matrices only",
                                 "non_negative")
    beta1: float = option(0.9, "AdamW's beta1", "momentum")
    beta2: float = option(0.99, "AdamW's beta2 (shorter memory than 0.999: few steps, "
                          "noisy small batches)", "momentum")
    grad_clip: float = option(1.0, "max global gradient norm (0: no clipping)", "non_negative")
    eval_interval: int = option(250, "steps between quick validation estimates (0: none)",
                                "count0")
    eval_batches: int = option(20, "batches per quick validation estimate", "count")
    log_interval: int = option(10, "steps between rows of metrics.csv", "count")
    save_interval: int = option(0, "steps between checkpoints (0: only at the end and when "
                                "stopped)", "count0")
    device: str = option("auto", "where to train (auto: the GPU if there is one)",
                         choices=("auto", "cpu", "cuda", "mps"))
    dtype: str = option("auto", "autocast precision (auto: bf16 on GPUs of compute capability "
                        ">= 8.0 and CPUs with bf16 units, fp16 on older GPUs, else fp32)",
                        choices=("auto", "fp32", "bf16", "fp16"))
    compile: bool = option(False, "torch.compile the model")
    seed: int = option(1337, "random seed")
    threads: Optional[int] = option(None, "CPU threads for PyTorch (unset: torch's choice)",
                                    "count")
    model_overrides: dict = field(default_factory=dict)  # ModelArgs fields to change
    progress: bool = option(True, "show the progress bar")
    save: bool = option(True, "write the run folder's checkpoint (off for benchmark runs)")

    def __post_init__(self) -> None:
        for f in fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if meta.get("check") and value is not None:
                ok, requirement = CHECKS[meta["check"]]
                if not ok(value):
                    raise ValueError(f"{f.name} ({value!r}) {requirement}")
            choices = meta.get("choices")
            if choices and value not in choices and not (
                    f.name == "device" and value.startswith("cuda:")):
                raise ValueError(f"{f.name} {value!r} must be {', '.join(choices[:-1])} "
                                 f"or {choices[-1]}")


# Training settings per preset, measured by benchmarks/train_shakespeare.py.
TRAIN_PRESETS: dict[str, dict] = {
    "tiny": dict(preset="tiny", batch_size=16, block_size=64, max_steps=200, lr=3e-3,
                 eval_interval=50, warmup_steps=10),
    # Context 128 (twice the model preset's 64) at 16 windows per step, the same 2,048 tokens:
    # a longer context costs little at this width and every prediction sees more text. With
    # the cosine decaying to zero it took the 120-s loss from 1.51 to 1.47-1.49 on the 2-core
    # benchmark machine; shuffled passes over the text (data_order="epochs") instead of random
    # windows then took it 0.017 lower at the same speed
    # (benchmarks/results/train_shakespeare_round2.jsonl, every run recorded).
    "shakespeare-cpu": dict(preset="shakespeare-cpu", batch_size=16, block_size=128,
                            lr=4e-3, optimizer="muon", muon_lr=0.007, min_lr_ratio=0.0,
                            warmup_steps=50, time_budget=120.0, max_steps=100_000,
                            eval_interval=250, data_order="epochs"),
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
