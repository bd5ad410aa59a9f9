"""Where and how training runs: device, precision, torchrun, and stopping on a signal.

Plumbing around the training loop (training.py), kept apart so that the loop reads as the
algorithm: which device, which autocast precision (bf16 only where the hardware multiplies bf16
natively), the process group under torchrun, and SIGINT/SIGTERM turned into "stop after this
step" so that a stopped run leaves a checkpoint it can resume from.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Optional

import torch

from .config import ModelArgs, parameter_breakdown


# ---------------------------------------------------------------------------- device, dtype
def resolve_device(name: str) -> torch.device:
    """'auto': the CUDA GPU, else Apple's GPU, else the CPU. A named device must exist."""
    has_mps = getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA GPU")
    if name == "mps" and not has_mps:
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


def gpu_has_native_bf16(device: torch.device) -> bool:
    """True on NVIDIA GPUs of compute capability 8.0 or later (A100, RTX 30xx, L4, H100), the
    first with bf16 tensor cores. Not `torch.cuda.is_bf16_supported()`: that answers True on a
    T4 (7.5) too, because bf16 can be emulated there, at a fraction of fp16's speed."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto': bf16 autocast where the hardware has bf16 units, fp16 (with a gradient scaler)
    on older GPUs such as Colab's T4, fp32 elsewhere (most laptop CPUs, Apple GPUs)."""
    if name != "auto":
        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    if device.type == "cuda":
        return torch.bfloat16 if gpu_has_native_bf16(device) else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def autocast(device_type: str, dtype: Optional[torch.dtype]) -> contextlib.AbstractContextManager:
    """Mixed precision for a forward pass: torch.autocast in `dtype`, or nothing for fp32/None
    (the matrix products run in `dtype`, the weights and the loss stay fp32)."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype) -> Optional[torch.amp.GradScaler]:
    """fp16 has 5 exponent bits: small gradients underflow to zero unless the loss is scaled
    up before backward (and the gradients down before the update). bf16 and fp32 need none."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


# ---------------------------------------------------------------------------- torchrun
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

    def wrap(self, model: torch.nn.Module, device: torch.device,
             compile: bool) -> torch.nn.Module:
        """The model the loop calls: compiled if asked, in DistributedDataParallel under
        torchrun (which averages the gradients over the ranks during backward)."""
        if compile:
            model = torch.compile(model)
        if self.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP
            model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        return model

    def any(self, *flags: bool, device: torch.device) -> list[bool]:
        """Each flag, true if it is true on any rank (e.g. 'time is up', 'stop'): every rank
        takes the same decision, so none is left waiting for the others."""
        if not self.enabled:
            return list(flags)
        import torch.distributed as dist
        t = torch.tensor([float(f) for f in flags], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [bool(v) for v in t.tolist()]

    def mean(self, value: float, device: torch.device) -> float:
        """The average of `value` over all ranks (the loss of the whole global batch)."""
        if not self.enabled:
            return value
        import torch.distributed as dist
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.item() / self.world_size

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist
            dist.barrier()

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist
            dist.destroy_process_group()


# ---------------------------------------------------------------------------- signals
class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (what `kill`, a cluster scheduler or `docker stop` sends)
    become a request to stop after the current step, so the run saves a consistent checkpoint.

    The handlers are installed explicitly, whatever the process inherited: a job started in the
    background by a non-interactive shell inherits SIGINT as *ignored*, and Python's default
    SIGTERM kills without a word. A second signal raises KeyboardInterrupt at once (the state
    saved then may be mid-step). `with StopSignals() as stop:` restores the previous handlers
    on exit; outside the main thread (where Python allows no handlers) it does nothing.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: Optional[int] = None  # the signal number, once one arrived
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


# ---------------------------------------------------------------------------- speed figures
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


def machine_load() -> dict:
    """What else the machine is doing: the load average and the number of cores."""
    try:
        load1, load5, _ = os.getloadavg()
    except OSError:  # not on every OS
        load1 = load5 = float("nan")
    return {"loadavg_1min": load1, "loadavg_5min": load5, "cpu_count": os.cpu_count()}
