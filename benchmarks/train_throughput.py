"""Training throughput and model FLOPs utilisation on the device at hand.

    python benchmarks/train_throughput.py                    # CPU: shakespeare-cpu
    python benchmarks/train_throughput.py --device cuda      # GPU: both Shakespeare presets

Times the package's own training step (`llama_course.train_step`: forward, backward,
clipping, the preset's optimizer, Muon + AdamW for shakespeare-cpu) for each combination of
precision (fp32, bf16 autocast) and torch.compile, after warm-up steps (compilation excluded,
and reported separately). FLOPs per token follow PaLM's accounting (6 per matrix parameter
+ 12 * layers * context * dim); the utilisation is against the GPU's dense bf16 peak. A CPU has
no such published peak, so there the script prints the achieved GFLOP/s.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import llama_course as lc
from llama_course import optim, runtime

RESULTS = Path(__file__).parent / "results"


def measure(preset: str, device: torch.device, dtype: torch.dtype, compile: bool,
            steps: int, warmup: int) -> dict:
    cfg = lc.train_config_for(preset, device=str(device), compile=compile, progress=False)
    base = lc.get_preset(cfg.preset)
    args = base.replace(vocab_size=68, max_seq_len=cfg.block_size or base.max_seq_len,
                        max_batch_size=max(base.max_batch_size, cfg.batch_size))
    torch.manual_seed(0)
    model = lc.Transformer(args).to(device)
    optimizer = optim.configure_optimizer(model, cfg, device)
    run_model = torch.compile(model) if compile else model
    data = torch.randint(0, 68, (200_000,))
    gen = torch.Generator().manual_seed(0)

    def step():
        batches = [lc.get_batch(data, cfg.batch_size, args.max_seq_len, gen)
                   for _ in range(cfg.grad_accum_steps)]
        return lc.train_step(run_model, optimizer, batches, cfg.grad_clip, dtype)

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    loss = step()  # a float: waits for the device
    warm = time.perf_counter() - t0
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(steps):
        step()
    loss = step()
    elapsed = time.perf_counter() - t0
    tokens = (steps + 1) * cfg.batch_size * args.max_seq_len * cfg.grad_accum_steps
    tok_s = tokens / elapsed
    flops = runtime.flops_per_token(args, args.max_seq_len) * tok_s
    peak = runtime.peak_flops(device)
    return {
        "preset": preset, "parameters": model.num_parameters(), "device": str(device),
        "dtype": str(dtype)[6:], "compile": compile, "tokens_per_s": round(tok_s),
        "gflops": round(flops / 1e9, 1), "mfu": None if peak is None else flops / peak,
        "warmup_s": round(warm, 1), "loss": round(loss, 3),
        "cpu_utilization": round((time.process_time() - cpu0) / elapsed / torch.get_num_threads(), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--presets", nargs="*")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    a = p.parse_args()
    device = torch.device(a.device)
    presets = a.presets or (["shakespeare-cpu", "shakespeare-gpu"] if device.type == "cuda"
                            else ["shakespeare-cpu"])
    info = {"device": str(device), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "loadavg_1min": round(os.getloadavg()[0], 2)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    print(f"machine: {info}")
    rows = []
    for preset in presets:
        for compile in ([False] if a.no_compile else [False, True]):
            for dtype in (torch.float32, torch.bfloat16):
                r = measure(preset, device, dtype, compile, a.steps, a.warmup)
                rows.append(r)
                mfu = "" if r["mfu"] is None else f", MFU {r['mfu']:.1%}"
                print(f"  {preset:<16} {r['dtype']:<9} compile={str(compile):<5} "
                      f"{r['tokens_per_s']:>10,} tokens/s  {r['gflops']:8.1f} GFLOP/s{mfu}  "
                      f"(warm-up {r['warmup_s']} s, CPU use {r['cpu_utilization']:.0%})",
                      flush=True)
    RESULTS.mkdir(exist_ok=True)
    tag = device.type
    (RESULTS / f"train_throughput_{tag}.json").write_text(
        json.dumps({"machine": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
