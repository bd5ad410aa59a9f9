"""How fast each CPU kernel reads one token's weights: the bound on single-token decoding.

    python benchmarks/matvec_kernels.py                  # SmolLM2-135M's matrices, bf16 and fp32

A decoding step multiplies one vector by every weight matrix once. This script times exactly
those products for SmolLM2-135M's shapes (30 layers of q/k/v fused 960 x 576, wo 576 x 576,
gate/up fused 3072 x 576, w2 576 x 1536, and the 49,152 x 576 head: 270 MB in bf16), random
weights, nothing else in the step, through each kernel the fast path could use:

* `torch.mv` on the (out, in) layout (what the eager bf16 fast path runs),
* `F.linear` on the same layout, `x @ W` on the transposed (in, out) layout (eager fp32),
* the compiled products of `FastDecoder(compile=True)` on the CPU: the matrices frozen into
  constants, Inductor's own matrix kernel or oneDNN's prepacked one, whichever its autotuning
  times faster (`llama_course/fast/cpu_compile.py`).

Each row prints the milliseconds for all products, the bytes read per second and the tokens
per second no decoder using that kernel can exceed. Results: results/matvec_kernels.json.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from llama_course.fast import cpu_compile

RESULTS = Path(__file__).parent / "results"
LAYERS, DIM, SHAPES = 30, 576, [(960, 576), (576, 576), (3072, 576), (576, 1536)]
HEAD = (49152, 576)


class Products(nn.Module):
    """One token's matrix-vector products alone, each matrix a buffer (frozen when compiled)."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        shapes = SHAPES * LAYERS + [HEAD]
        for i, shape in enumerate(shapes):
            self.register_buffer(f"w{i}", torch.randn(shape, dtype=dtype) * 0.02)
        self.inputs = [torch.randn(shape[1], dtype=dtype) for shape in shapes]

    def forward(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        return [torch.mv(w, x) for w, x in zip(self.buffers(), xs)]  # each (out,)


def best_time(fn, repeats: int = 20) -> float:
    fn()
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@torch.inference_mode()
def measure(dtype: torch.dtype) -> list[dict]:
    m = Products(dtype)
    ws, xs = list(m.buffers()), m.inputs
    wts = [w.t().contiguous() for w in ws]  # the (in, out) layout
    nbytes = sum(w.numel() * w.element_size() for w in ws)
    runs = {
        "torch.mv, (out, in)": lambda: [torch.mv(w, x) for w, x in zip(ws, xs)],
        "F.linear, (out, in)": lambda: [F.linear(x[None], w) for w, x in zip(ws, xs)],
        "x @ W, (in, out)": lambda: [x[None] @ w for w, x in zip(wts, xs)],
    }
    t0 = time.perf_counter()
    compiled = cpu_compile.compile_frozen(m)  # as FastDecoder(compile=True) compiles bf16
    compiled(*xs)
    print(f"  {dtype}: compiled (frozen, autotuned) in {time.perf_counter() - t0:.0f} s",
          flush=True)
    runs["compiled, frozen"] = lambda: compiled(*xs)
    rows = []
    for name, fn in runs.items():
        t = best_time(fn)
        rows.append(dict(dtype=str(dtype).replace("torch.", ""), kernel=name, ms=t * 1e3,
                         gb_s=nbytes / t / 1e9, max_tok_s=1 / t, bytes=nbytes,
                         loadavg_1min=round(os.getloadavg()[0], 2)))
        r = rows[-1]
        print(f"  {r['dtype']:>8} {name:<22} {r['ms']:6.2f} ms  {r['gb_s']:5.1f} GB/s  "
              f"at most {r['max_tok_s']:5.1f} tok/s   load {r['loadavg_1min']}", flush=True)
    return rows


def main() -> None:
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "loadavg_1min": round(os.getloadavg()[0], 2)}
    print(f"machine: {info}")
    rows = measure(torch.bfloat16) + measure(torch.float32)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "matvec_kernels.json"
    path.write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    print(f"results in {path}")


if __name__ == "__main__":
    main()
