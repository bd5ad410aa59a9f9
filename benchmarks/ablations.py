"""What did Llama's changes buy? The shakespeare-cpu model against GPT-style variants.

    python benchmarks/ablations.py                  # 4 variants x 120 s of training, ~9 min
    python benchmarks/ablations.py --time-budget 60

Same data, same training loop, same budget, same size (the variants keep the parameter count
within a few percent):

    llama          RoPE + SwiGLU (the course's model)
    learned-pos    no RoPE: a learned absolute position embedding added to the tokens (GPT-2)
    gelu           a 2-matrix GELU feed-forward, 1.5x wider so the parameters match (GPT-2)
    learned-pos+gelu  both: essentially nanoGPT's block, with RMSNorm and no biases

Writes benchmarks/results/ablations.json, and a compact copy of it (the figures and curves
notebook 07 draws) to llama_course/data/ablations.json, which ships with the package: the
notebook reads that copy, on Colab too, and does not re-train the variants.

    python benchmarks/ablations.py --package-copy-only   # rewrite the copy, train nothing
"""

from __future__ import annotations

import argparse
import json
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import llama_course as lc
import train_shakespeare as bench

RESULTS = Path(__file__).parent / "results" / "ablations.json"
PACKAGE_COPY = Path(__file__).parents[1] / "llama_course" / "data" / "ablations.json"


class TokensPlusPositions(nn.Module):
    """GPT-2's input: token embedding + a learned embedding per absolute position."""

    def __init__(self, tok_embeddings: nn.Embedding, max_seq_len: int):
        super().__init__()
        self.tok = tok_embeddings
        self.pos = nn.Embedding(max_seq_len, tok_embeddings.embedding_dim)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.tok(tokens) + self.pos(positions)  # (B, T, dim)


class GeluFeedForward(nn.Module):
    """The original Transformer's FFN with GPT-2's GELU: w2(gelu(w1 x)), no gate."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.gelu(self.w1(x)))


def no_rope(self, device):
    """A rotation by angle zero at every position: RoPE switched off."""
    p = self.params
    return torch.ones(p.max_seq_len, p.head_dim // 2, dtype=torch.complex64, device=device)


def variant(learned_pos: bool, gelu: bool):
    def build(args: lc.ModelArgs) -> lc.Transformer:
        model = lc.Transformer(args)
        if learned_pos:
            model.tok_embeddings = TokensPlusPositions(model.tok_embeddings, args.max_seq_len)
            model.freqs_cis = types.MethodType(no_rope, model)
        if gelu:
            hidden = args.ffn_hidden_dim * 3 // 2  # 2 matrices instead of 3: same parameters
            for layer in model.layers:
                layer.feed_forward = GeluFeedForward(args.dim, hidden)
            model.reset_parameters()  # w2 gets the same depth-scaled init as in Llama
            if learned_pos:
                nn.init.normal_(model.tok_embeddings.pos.weight, std=0.02)
        return model
    return build


VARIANTS = {
    "llama": (False, False),
    "learned-pos": (True, False),
    "gelu": (False, True),
    "learned-pos+gelu": (True, True),
}


def write_package_copy(results: dict, path: Path = PACKAGE_COPY) -> None:
    """The part of the results notebook 07 shows, small enough to ship with the package."""
    keep = ("parameters", "steps", "tokens_per_s", "train_time_s", "final_val_loss",
            "contended", "time_budget_s", "device", "torch")
    runs = {name: {**{k: r[k] for k in keep if k in r},
                   # [seconds, step, val loss] at each evaluation; the last: the whole split
                   "curve": [[round(t, 1), int(step), round(loss, 4)] for t, step, loss in r["curve"]]}
            for name, r in results["runs"].items()}
    copy = {"source": "benchmarks/results/ablations.json", "command": results.get("command"),
            "runs_per_variant": 1, "runs": runs}
    path.write_text(json.dumps(copy, indent=1) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--time-budget", type=float, default=120.0)
    p.add_argument("--only", nargs="*", default=list(VARIANTS))
    p.add_argument("--package-copy-only", action="store_true",
                   help="only rewrite llama_course/data/ablations.json from the stored results")
    p.add_argument("--max-steps", type=int, default=None,
                   help="a step budget instead of time, with --seeds: the seeded table")
    p.add_argument("--seeds", type=int, nargs="*", default=None)
    a = p.parse_args()
    if a.max_steps is not None or a.seeds is not None:
        return seeded(a)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"runs": {}}
    for name in ([] if a.package_copy_only else a.only):
        r = bench.run("shakespeare-cpu", a.time_budget, label=name,
                      model_fn=variant(*VARIANTS[name]), eval_interval=100)
        results["runs"][name] = r
        results["command"] = "python benchmarks/ablations.py"
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1))
        write_package_copy(results)
    if a.package_copy_only:
        write_package_copy(results)
    print(f"\n{'variant':<18} {'params':>8} {'steps':>6} {'val loss':>9}")
    for name, r in results["runs"].items():
        print(f"{name:<18} {r['parameters'] / 1e6:7.3f}M {r['steps']:6d} "
              f"{r['final_val_loss']:9.4f}{'  CONTENDED' if r['contended'] else ''}")


def write_seeded_copy(results: dict, path: Path = PACKAGE_COPY) -> None:
    """Add the seeded losses to the package's copy, under "seeded" (notebook 07 shows them)."""
    copy = json.loads(path.read_text())
    runs = results["runs"]
    copy["seeded"] = {
        "source": "benchmarks/results/ablations_seeds.json", "command": results["command"],
        "max_steps": next(iter(next(iter(runs.values())).values()))["steps"],
        "losses": {name: {seed: r["final_val_loss"] for seed, r in by_seed.items()}
                   for name, by_seed in runs.items()},
        "tokens_per_s": {name: round(sum(r["tokens_per_s"] for r in by_seed.values())
                                     / len(by_seed)) for name, by_seed in runs.items()},
        "contended": any(r["contended"] for by_seed in runs.values() for r in by_seed.values()),
    }
    path.write_text(json.dumps(copy, indent=1) + "\n")


def seeded(a) -> None:
    """Every variant with every seed, each for the same number of steps (1,200 is what 120 s
    buys on the idle benchmark machine): the loss then no longer depends on how busy the machine
    was, so several seeds measure the run-to-run spread. Results: results/ablations_seeds.json
    (not yet measured: a run of 4 variants x 3 seeds takes about 25 minutes on an idle machine)."""
    path = RESULTS.with_name("ablations_seeds.json")
    results = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    seeds, steps = a.seeds or [0], a.max_steps or 1200
    results["command"] = (f"python benchmarks/ablations.py --max-steps {steps} "
                          f"--seeds {' '.join(map(str, seeds))}")
    for seed in seeds:
        for name in a.only:
            r = bench.run("shakespeare-cpu", None, label=f"{name} seed {seed}",
                          model_fn=variant(*VARIANTS[name]), eval_interval=300,
                          run_overrides=dict(max_steps=steps, seed=seed))
            results["runs"].setdefault(name, {})[str(seed)] = r
            path.write_text(json.dumps(results, indent=1))
    write_seeded_copy(results)
    print(f"\n{'variant':<18} {'val loss per seed':>30} {'mean':>7}")
    for name, runs in results["runs"].items():
        losses = [r["final_val_loss"] for r in runs.values()]
        print(f"{name:<18} {' '.join(f'{x:.4f}' for x in losses):>30} "
              f"{sum(losses) / len(losses):7.4f}")


if __name__ == "__main__":
    main()
