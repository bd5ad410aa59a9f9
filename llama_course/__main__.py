"""Command line: `python -m llama_course train ...` and `python -m llama_course generate ...`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

DESCRIPTION = """\
Train a small Llama 3 on Tiny Shakespeare, or generate text from a trained one.

examples:
  python -m llama_course train                          # best preset for this machine, ~2 min
  python -m llama_course train --preset tiny --max-steps 50 --out runs/try
  python -m llama_course train --out runs/shakespeare --resume
  torchrun --nproc_per_node=2 -m llama_course train --preset shakespeare-gpu
  python -m llama_course generate --checkpoint runs/shakespeare --prompt "ROMEO:"
"""


def _checked(cast, kind: str, ok, requirement: str):
    """An argparse type: parse with `cast`, then check, with a message a learner understands."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{value} {requirement}")
        return value
    return parse


_positive_int = _checked(int, "a whole number", lambda v: v >= 1, "must be at least 1")
_non_negative_int = _checked(int, "a whole number", lambda v: v >= 0, "must be 0 or more")
_positive_float = _checked(float, "a number", lambda v: v > 0, "must be greater than 0")
_non_negative_float = _checked(float, "a number", lambda v: v >= 0, "must be 0 or more")
_probability = _checked(float, "a number", lambda v: 0 < v <= 1, "must be between 0 and 1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llama_course", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,generate}")

    t = sub.add_parser("train", help="train a model on Tiny Shakespeare",
                       description="Train a small Llama 3 on Tiny Shakespeare (characters). "
                       "Writes a run folder with the weights, the tokenizer, metrics.csv and "
                       "loss_curve.png, and reports the loss on the whole validation split.")
    t.add_argument("--preset", default="auto",
                   choices=["auto", "shakespeare-cpu", "shakespeare-gpu", "tiny"],
                   help="model size and training settings: shakespeare-cpu (~2 min on a laptop "
                   "CPU), shakespeare-gpu (~10M parameters, one GPU), tiny (seconds, for trying "
                   "things out); auto picks the GPU preset when CUDA is present (default)")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="where to train (default: the GPU if there is one)")
    t.add_argument("--max-steps", type=_positive_int, metavar="N",
                   help="stop after N optimizer steps")
    t.add_argument("--time-budget", type=_positive_float, metavar="S",
                   help="seconds of training; the learning-rate schedule is fitted so that it "
                   "ends on time (the CPU preset uses 120)")
    t.add_argument("--out", default="runs/shakespeare", metavar="DIR",
                   help="run folder to write (default: runs/shakespeare)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out (after Ctrl-C or a crash)")
    t.add_argument("--batch-size", type=_positive_int, metavar="B",
                   help="sequences per step (per process under torchrun)")
    t.add_argument("--block-size", type=_positive_int, metavar="T",
                   help="context length in characters (also the model's max_seq_len)")
    t.add_argument("--optimizer", choices=["adamw", "muon"],
                   help="adamw, or muon: Muon for the matrices inside the blocks and AdamW for "
                   "the rest (the shakespeare-cpu preset's choice; see llama_course/optim.py)")
    t.add_argument("--lr", type=_positive_float, help="peak learning rate (AdamW's)")
    t.add_argument("--muon-lr", type=_positive_float, help="peak learning rate of Muon's matrices")
    t.add_argument("--grad-accum", type=_positive_int, metavar="K",
                   help="micro-batches per optimizer step")
    t.add_argument("--eval-interval", type=_non_negative_int, metavar="N",
                   help="steps between quick validation estimates (0: none)")
    t.add_argument("--log-interval", type=_positive_int, metavar="N",
                   help="steps between rows of metrics.csv (default 10)")
    t.add_argument("--save-interval", type=_non_negative_int, metavar="N",
                   help="steps between checkpoints (default: only at the end and on Ctrl-C)")
    t.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast precision (default: bf16 on recent GPUs, fp16 on older ones, "
                   "fp32 on CPU)")
    t.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (on by default for the GPU preset)")
    t.add_argument("--seed", type=int, help="random seed (default 1337)")
    t.add_argument("--threads", type=_positive_int, help="CPU threads for PyTorch")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    g = sub.add_parser("generate", help="generate text from a trained run folder",
                       description="Continue one or more prompts with a trained model, "
                       "printing the text as it is produced.")
    g.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="a run folder written by `train`")
    g.add_argument("--prompt", action="append", metavar="TEXT",
                   help="text to continue (repeat for several prompts; default: a new line)")
    g.add_argument("--max-new-tokens", type=_positive_int, default=500, metavar="N",
                   help="characters to generate per prompt (default 500)")
    g.add_argument("--temperature", type=_non_negative_float, default=0.8,
                   help="0 = always the likeliest character; higher = more adventurous "
                   "(default 0.8)")
    g.add_argument("--top-p", type=_probability, default=0.95,
                   help="sample only from the likeliest characters holding this much "
                   "probability (default 0.95)")
    g.add_argument("--top-k", type=_positive_int, default=None,
                   help="sample only from the k likeliest characters")
    g.add_argument("--seed", type=int, default=None, help="random seed, for repeatable samples")
    g.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"],
                   help="where to run (default cpu: fast enough for these models)")
    return parser


def cmd_train(a: argparse.Namespace) -> int:
    from .train import train, train_config_for

    overrides = {k: v for k, v in dict(
        device=a.device, max_steps=a.max_steps, time_budget=a.time_budget, out_dir=a.out,
        batch_size=a.batch_size, block_size=a.block_size, lr=a.lr, optimizer=a.optimizer,
        muon_lr=a.muon_lr,
        grad_accum_steps=a.grad_accum, eval_interval=a.eval_interval,
        log_interval=a.log_interval, save_interval=a.save_interval, dtype=a.dtype,
        compile=a.compile, seed=a.seed,
        threads=a.threads).items() if v is not None}
    if a.no_progress:
        overrides["progress"] = False
    if a.max_steps is not None and a.time_budget is None:
        overrides["time_budget"] = None  # an explicit step count replaces the preset's clock
    if a.resume:
        cfg = _resumed_config(Path(a.out), overrides)
    else:
        cfg = train_config_for(a.preset, **overrides)
    result = train(cfg, resume=a.resume)
    return 130 if result.interrupted else 0


def _resumed_config(out: Path, overrides: dict):
    """The saved run's settings, with what the command line changes on top."""
    from .train import TrainConfig, load_train_state

    saved = load_train_state(out)["config"]
    return TrainConfig(**{**saved, **overrides})


def cmd_generate(a: argparse.Namespace) -> int:
    from .generate import stream
    from .model import Transformer
    from .tokenizer import CharTokenizer
    from .train import resolve_device

    folder = Path(a.checkpoint)
    if not folder.is_dir():
        raise ValueError(f"checkpoint folder {folder} does not exist; train one with "
                         "`python -m llama_course train --out DIR`")
    device = resolve_device(a.device)
    model = Transformer.from_pretrained(folder, device=device).eval()
    tokenizer = CharTokenizer.from_pretrained(folder)
    prompts = a.prompt or ["\n"]
    for i, prompt in enumerate(prompts):
        ids = tokenizer.encode(prompt)  # a clear error for characters the model never saw
        seed = None if a.seed is None else a.seed + i
        print(f"--- sample {i + 1} ---" if len(prompts) > 1 else "---", flush=True)
        print(prompt, end="", flush=True)
        for token in stream(model, ids, a.max_new_tokens, temperature=a.temperature,
                            top_p=a.top_p, top_k=a.top_k, eos_id=tokenizer.eos_id, seed=seed):
            print(tokenizer.decode([token]), end="", flush=True)
        print(flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        if a.command == "train":
            return cmd_train(a)
        return cmd_generate(a)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
