"""The search behind the shakespeare-cpu preset: what was tried, on what machine, with what loss.

    python benchmarks/tune_cpu.py                 # runs every candidate not yet recorded
    python benchmarks/tune_cpu.py --only wide-lr4  # one candidate
    python benchmarks/tune_cpu.py --table         # print the recorded results

Each candidate trains for the same wall-clock budget (120 s of training on the machine at hand)
and is scored by the loss on the whole validation split. Results are appended to
benchmarks/results/tune_cpu.jsonl with the machine's load, so a contended run can be spotted
and re-run (`--rerun NAME`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import llama_course as lc
import train_shakespeare as bench

RESULTS = Path(__file__).parent / "results" / "tune_cpu.jsonl"

# The starting point of the search, spelled out so that the candidates keep their meaning when
# the shakespeare-cpu preset changes: nanoGPT's CPU size with the prototype's batch and LR.
BASE_MODEL = dict(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, multiple_of=32,
                  ffn_dim_multiplier=None, rope_theta=10000.0, tie_word_embeddings=False)
BASE_RUN = dict(batch_size=32, block_size=64, lr=2e-3, min_lr_ratio=0.1, warmup_steps=20,
                weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0, dtype="fp32")
# name: (ModelArgs overrides, TrainConfig overrides[, init]) on top of BASE_MODEL / BASE_RUN
CANDIDATES: dict[str, tuple] = {
    "base": ({}, {}),  # nanoGPT's CPU size (4 x 128), batch 32 x 64, lr 2e-3
    "lr3e-3": ({}, dict(lr=3e-3)),
    "lr1.5e-3": ({}, dict(lr=1.5e-3)),
    "batch64-lr3e-3": ({}, dict(batch_size=64, lr=3e-3)),
    "wd0": ({}, dict(weight_decay=0.0)),
    "beta2-0.95": ({}, dict(beta2=0.95)),
    "mha": (dict(n_kv_heads=4), {}),
    "ctx32-batch64": ({}, dict(block_size=32, batch_size=64)),
    "dim160-h5": (dict(dim=160, n_heads=5, n_kv_heads=1), {}),
    "3-layers-dim160": (dict(dim=160, n_heads=5, n_kv_heads=1, n_layers=3), {}),
    "5-layers": (dict(n_layers=5), {}),
    "bf16": ({}, dict(dtype="bf16")),
    "bf16-dim192-h6": (dict(dim=192, n_heads=6), dict(dtype="bf16")),
    "bf16-ctx32-batch64": ({}, dict(dtype="bf16", block_size=32, batch_size=64)),
    "bf16-3-layers-dim192": (dict(dim=192, n_heads=6, n_layers=3), dict(dtype="bf16")),
    "zero-init": ({}, {}, "zero"),
    "bf16-lr3e-3": ({}, dict(dtype="bf16", lr=3e-3)),
    "bf16-lr1.5e-3": ({}, dict(dtype="bf16", lr=1.5e-3)),
    "bf16-beta2-0.95": ({}, dict(dtype="bf16", beta2=0.95)),
    "bf16-batch24": ({}, dict(dtype="bf16", batch_size=24)),
    "bf16-3-layers": (dict(n_layers=3), dict(dtype="bf16")),
    "bf16-mqa": (dict(n_kv_heads=1), dict(dtype="bf16")),
    "bf16-ctx128-batch16": ({}, dict(dtype="bf16", block_size=128, batch_size=16)),
    "bf16-to-zero": ({}, dict(dtype="bf16", min_lr_ratio=0.0)),
    "bf16-tied": (dict(tie_word_embeddings=True), dict(dtype="bf16")),
    "bf16-theta1000": (dict(rope_theta=1000.0), dict(dtype="bf16")),
    "bf16-warmup50": ({}, dict(dtype="bf16", warmup_steps=50)),
    "bf16-warmup50-dropout0.1": (dict(dropout=0.1), dict(dtype="bf16", warmup_steps=50)),
    "bf16-warmup50-wd0.3": ({}, dict(dtype="bf16", warmup_steps=50, weight_decay=0.3)),
    "batch16-lr1.5e-3": ({}, dict(batch_size=16, lr=1.5e-3)),
    "tied": (dict(tie_word_embeddings=True), {}),
    "heads8-kv2": (dict(n_heads=8, n_kv_heads=2), {}),
    "ffn-x1.5": (dict(ffn_dim_multiplier=1.5), {}),
    # Muon (llama_course/optim.py) for the blocks' matrices, AdamW for the rest
    "bf16-muon": ({}, dict(dtype="bf16", warmup_steps=50, optimizer="muon")),
    "bf16-muon-lr0.006": ({}, dict(dtype="bf16", warmup_steps=50, optimizer="muon",
                                   muon_lr=0.006)),
    "bf16-muon-lr0.015": ({}, dict(dtype="bf16", warmup_steps=50, optimizer="muon",
                                   muon_lr=0.015)),
    "bf16-muon-batch64": ({}, dict(dtype="bf16", warmup_steps=50, optimizer="muon",
                                   batch_size=64)),
    "bf16-muon-mom0.9": ({}, dict(dtype="bf16", warmup_steps=50, optimizer="muon",
                                  muon_momentum=0.9)),
    "bf16-muon-adam3e-3": ({}, dict(dtype="bf16", warmup_steps=50, optimizer="muon",
                                    lr=3e-3)),
    "bf16-muon-batch64-adam3e-3": ({}, dict(dtype="bf16", warmup_steps=50, optimizer="muon",
                                            batch_size=64, lr=3e-3)),
    "bf16-muon-batch64-lr0.015": ({}, dict(dtype="bf16", warmup_steps=50, optimizer="muon",
                                           batch_size=64, muon_lr=0.015)),
}


def zero_init(args):
    """Residual-branch outputs (wo, w2) and the output head start at zero: every block begins
    as the identity and the first predictions are uniform, so early steps are not spent
    undoing random projections (a trick from small-model speed runs)."""
    model = lc.Transformer(args)
    with torch.no_grad():
        for layer in model.layers:
            layer.attention.wo.weight.zero_()
            layer.feed_forward.w2.weight.zero_()
        model.output.weight.zero_()
    return model


INITS = {"zero": zero_init}


def load() -> dict[str, dict]:
    if not RESULTS.is_file():
        return {}
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    return {r["label"]: r for r in rows}  # the latest run of each name


def changes(r: dict) -> dict:
    """What a candidate changed relative to the base configuration."""
    if "changes" in r:
        return r["changes"]
    base = {**BASE_MODEL, **BASE_RUN}
    both = {**r["model_overrides"], **r["run_overrides"]}
    return {k: v for k, v in both.items() if base.get(k) != v}


def table(results: dict[str, dict]) -> None:
    print(f"{'candidate':<22} {'params':>7} {'steps':>6} {'tok/s':>7} {'val loss':>9} "
          f"{'load':>5} {'cpu':>5}  changes from the base")
    for r in sorted(results.values(), key=lambda r: r["final_val_loss"]):
        flag = " CONTENDED" if r["contended"] else ""
        print(f"{r['label']:<22} {r['parameters'] / 1e6:6.2f}M {r['steps']:6d} "
              f"{r['tokens_per_s']:7,d} {r['final_val_loss']:9.4f} {r['loadavg_before']:5.2f} "
              f"{r['cpu_utilization']:5.0%}  {changes(r)}{flag}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", help="candidates to run (default: all not yet run)")
    p.add_argument("--rerun", nargs="*", default=[], help="run these again")
    p.add_argument("--time-budget", type=float, default=120.0)
    p.add_argument("--table", action="store_true", help="only print the recorded results")
    a = p.parse_args()
    done = load()
    if not a.table:
        names = a.only or [n for n in CANDIDATES if n not in done or n in a.rerun]
        RESULTS.parent.mkdir(exist_ok=True)
        for name in names:
            model, run, *init = CANDIDATES[name]
            r = bench.run("shakespeare-cpu", a.time_budget, {**BASE_MODEL, **model},
                          {**BASE_RUN, **run}, label=name,
                          eval_interval=10_000, model_fn=INITS[init[0]] if init else None)
            r["changes"] = {**model, **run, **({"init": init[0]} if init else {})}
            with RESULTS.open("a") as f:
                f.write(json.dumps(r) + "\n")
        done = load()
    table(done)


if __name__ == "__main__":
    main()
