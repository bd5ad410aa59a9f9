"""Validation loss against wall-clock for a training preset: the figure the course reports.

    python benchmarks/train_shakespeare.py                          # shakespeare-cpu, 120 s
    python benchmarks/train_shakespeare.py --time-budget 300
    python benchmarks/train_shakespeare.py --set dim=192 --set lr=3e-3 --label wider
    python benchmarks/train_shakespeare.py --time-budget 300 --set dropout=0.1 --ffn-dropout-only
    python benchmarks/train_shakespeare.py --time-budget 300 --ffn-dropout-only --set n_layers=6 \
        --set dropout=0.1 --set block_size=256 --set batch_size=8    # the best 300-s run
    python benchmarks/train_shakespeare.py --preset shakespeare-gpu --device cuda
    python benchmarks/train_shakespeare.py --replot benchmarks/results/train_shakespeare.jsonl

Prints the loss curve (quick estimates during training), the loss on the whole validation
split at the end (the number to compare with nanoGPT's), throughput, and the machine's load:
on a shared machine another busy process can slow a 2-thread run many times over, so every
figure carries the load average and the CPU utilisation, and a contended run says so.
`--record FILE` appends the result as one JSON line; `--plot PNG` draws the curve next to
nanoGPT's published figures. `--ffn-dropout-only` keeps `dropout` on the feed-forward branch
and sets attention's to 0 (by a `model_fn`): on the CPU any dropout of the attention weights
sends SDPA from its fused kernel to a 3x slower one (benchmarks/README.md, round 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import pandas as pd

import llama_course as lc
from llama_course import train

# Reference points: nanoGPT's shakespeare_char, full-validation-split loss, measured on this
# 2-core machine with its README CPU configuration (4 layers, 128 wide, block 64, batch 12)
# for as many iterations as fit the budget, and its published GPU result.
NANOGPT = {
    "cpu, 120 s (this machine)": (120, 1.76),
    "cpu, 300 s (this machine)": (300, 1.60),
    "cpu, 2000 iters (README)": (None, 1.89),
    "A100, ~3 min (README)": (180, 1.4697),
}

MODEL_FIELDS = {f.name for f in dataclasses.fields(lc.ModelArgs)}
TRAIN_FIELDS = {f.name for f in dataclasses.fields(lc.TrainConfig)}


def parse_sets(items: list[str]) -> tuple[dict, dict]:
    """`--set name=value`: a ModelArgs field goes to the model, a TrainConfig field to the run."""
    model, run = {}, {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass  # a plain string
        if name in TRAIN_FIELDS:
            run[name] = value
        elif name in MODEL_FIELDS:
            model[name] = value
        else:
            raise SystemExit(f"--set {name}: not a ModelArgs or TrainConfig field")
    return model, run


def run(preset: str = "shakespeare-cpu", time_budget: float | None = 120.0,
        model_overrides: dict | None = None, run_overrides: dict | None = None,
        label: str = "", model_fn=None, device: str = "cpu", eval_interval: int = 100,
        verbose: bool = True) -> dict:
    """One timed training run; returns its figures (final loss on the whole validation split)."""
    with tempfile.TemporaryDirectory() as tmp:
        kw = dict(out_dir=tmp, progress=False, save=False, device=device,
                  model_overrides=model_overrides or {}, time_budget=time_budget,
                  eval_interval=eval_interval)
        kw.update(run_overrides or {})
        cfg = lc.train_config_for(preset, **kw)
        t0 = time.perf_counter()
        result = train(cfg, model_fn=model_fn)
        wall = time.perf_counter() - t0
        metrics = pd.read_csv(Path(tmp) / "metrics.csv")
    if result.interrupted:  # a stopped run is not a result: never recorded
        raise SystemExit(f"run {label or preset!r} stopped after {result.train_time:.0f} s "
                         f"(signal {result.signal}): not recorded")
    s = result.summary
    curve = metrics.dropna(subset=["val_loss"])[["elapsed_s", "step", "val_loss"]]
    out = {
        "label": label or preset, "preset": preset, "time_budget_s": time_budget,
        "final_val_loss": round(result.final_val_loss, 4), "steps": result.steps,
        "train_time_s": round(result.train_time, 1), "wall_time_s": round(wall, 1),
        "tokens_per_s": round(result.tokens_per_s), "parameters": s["parameters"],
        "threads": s["threads"], "cpu_utilization": s["cpu_utilization"],
        "loadavg_before": round(s["load_before"]["loadavg_1min"], 2),
        "contended": s["contended"], "model_overrides": model_overrides or {},
        "run_overrides": {k: v for k, v in (run_overrides or {}).items()},
        "curve": curve.values.tolist(), "device": s["device"], "torch": s["torch"],
    }
    if verbose:
        print_run(out)
    return out


def print_run(r: dict) -> None:
    print(f"\n== {r['label']}: {r['parameters'] / 1e6:.2f}M parameters, "
          f"{r['model_overrides']} {r['run_overrides']}")
    print(f"   {'train s':>8} {'step':>6} {'val (estimate)':>15}")
    for elapsed, step, val in r["curve"][:-1]:
        print(f"   {elapsed:8.1f} {int(step):6d} {val:15.4f}")
    print(f"   final: val loss {r['final_val_loss']:.4f} on the whole validation split after "
          f"{r['steps']} steps, {r['train_time_s']} s of training ({r['tokens_per_s']:,} tokens/s)")
    flag = "CONTENDED: figures not representative" if r["contended"] else "uncontended"
    print(f"   machine: load average {r['loadavg_before']} before the run, CPU utilisation "
          f"{r['cpu_utilization']:.0%} of {r['threads']} threads: {flag}")


def plot(results: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        curve = r["curve"]
        ax.plot([c[0] for c in curve], [c[2] for c in curve], "o-", ms=3,
                label=f"{r['label']} (final {r['final_val_loss']:.3f})")
    for name, (t, loss) in NANOGPT.items():
        if t is None:
            ax.axhline(loss, color="gray", ls=":", lw=1)
            ax.text(5, loss + 0.01, f"nanoGPT {name}: {loss}", color="gray", fontsize=8)
        else:
            ax.plot([t], [loss], "s", color="black" if "A100" in name else "gray")
            ax.annotate(f"nanoGPT {name}: {loss}", (t, loss), textcoords="offset points",
                        xytext=(5, 5), fontsize=8)
    ax.set_xlabel("seconds of training")
    ax.set_ylabel("validation loss (nats per character)")
    ax.set_ylim(1.3, 2.6)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Tiny Shakespeare, character level: loss against wall-clock")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def ffn_dropout_only(args: lc.ModelArgs) -> lc.Transformer:
    """The model with its dropout on the feed-forward branch only: attention's is 0."""
    model = lc.Transformer(args)
    for layer in model.layers:
        layer.attention.dropout = 0.0  # the attention weights' and its output's
    return model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="shakespeare-cpu")
    p.add_argument("--time-budget", type=float, default=120.0)
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a ModelArgs or TrainConfig field (repeatable)")
    p.add_argument("--label", default="")
    p.add_argument("--ffn-dropout-only", action="store_true",
                   help="dropout on the feed-forward branch only, none in attention")
    p.add_argument("--device", default="cpu")
    p.add_argument("--record", help="append the result as a JSON line to this file")
    p.add_argument("--plot", help="write a loss-vs-time PNG with nanoGPT's figures")
    p.add_argument("--replot", metavar="FILE",
                   help="no training: plot the runs recorded in FILE (a --record file)")
    a = p.parse_args()
    if a.replot:
        runs = [json.loads(line) for line in open(a.replot) if line.strip()]
        plot(runs, a.plot or str(Path(a.replot).with_suffix(".png")))
        return
    model, runo = parse_sets(a.set)
    result = run(a.preset, a.time_budget, model, runo, a.label, device=a.device,
                 model_fn=ffn_dropout_only if a.ffn_dropout_only else None)
    if a.record:
        with open(a.record, "a") as f:
            f.write(json.dumps(result) + "\n")
    if a.plot:
        plot([result], a.plot)


if __name__ == "__main__":
    main()
