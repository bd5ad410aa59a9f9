"""Command line: `python -m llama_course train ...` and `python -m llama_course generate ...`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Optional, Sequence

from .train_config import CHECKS, TRAIN_PRESETS, TrainConfig

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


def _add_config_options(t: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, with the field's type, help, check and choices.
    Unset options stay None: the preset's value (or the resumed run's) applies."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if "help" not in f.metadata:
            continue  # preset (above), model_overrides (no flag)
        meta, kind = f.metadata, _inner(hints[f.name])
        kw = dict(dest=f.name, default=None, help=f"{meta['help']} ({_default_text(f)})")
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif meta["choices"]:
            kw["choices"] = meta["choices"]
        elif meta["check"]:
            test, requirement = CHECKS[meta["check"]]
            word = "a whole number" if kind is int else "a number"
            kw["type"] = _checked(kind, word, test, requirement)
        else:
            kw["type"] = kind
        flags = meta["flags"] or ("--" + f.name.replace("_", "-"),)
        t.add_argument(*flags, **kw)


def _default_text(f: dataclasses.Field) -> str:
    """The default a run gets: the field's own, or each preset's where they differ."""
    def word(v):
        return "on" if v is True else "off" if v is False else "unset" if v is None else v

    values = {name: p.get(f.name, f.default) for name, p in TRAIN_PRESETS.items()}
    if len(set(map(repr, values.values()))) > 1:
        return "default: " + ", ".join(f"{word(v)} ({k})" for k, v in values.items())
    return f"default: {word(f.default)}"


def _inner(hint):
    """Optional[int] -> int."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llama_course", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,generate}")

    t = sub.add_parser("train", help="train a model on Tiny Shakespeare",
                       description="Train a small Llama 3 on Tiny Shakespeare (characters). "
                       "Writes a run folder with the weights, the tokenizer, metrics.csv and "
                       "loss_curve.png, and reports the loss on the whole validation split. "
                       "Ctrl-C or SIGTERM stops after the current step and saves a checkpoint "
                       "that --resume continues. --max-steps without --time-budget drops the "
                       "preset's time budget.")
    t.add_argument("--preset", default="auto", choices=["auto", *TRAIN_PRESETS],
                   help="model size and training settings: shakespeare-cpu (~2 min on a laptop "
                   "CPU), shakespeare-gpu (~10M parameters, one GPU), tiny (seconds, for trying "
                   "things out); auto picks the GPU preset when CUDA is present (default)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run saved in --out (after Ctrl-C or a crash)")
    _add_config_options(t)

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
    from .run_folder import load_train_state
    from .train_config import train_config_for
    from .training import train

    names = [f.name for f in dataclasses.fields(TrainConfig) if "help" in f.metadata]
    overrides = {k: getattr(a, k) for k in names if getattr(a, k, None) is not None}
    if a.max_steps is not None and a.time_budget is None:
        overrides["time_budget"] = None  # an explicit step count replaces the preset's clock
    if a.resume:  # the saved run's settings, with what the command line changes on top
        out = Path(a.out_dir or TrainConfig.out_dir)
        cfg = TrainConfig(**{**load_train_state(out)["config"], **overrides})
    else:
        cfg = train_config_for(a.preset, **overrides)
    result = train(cfg, resume=a.resume)
    if result.signal is not None:
        return 128 + result.signal  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    return 130 if result.interrupted else 0


def cmd_generate(a: argparse.Namespace) -> int:
    from .generate import stream
    from .model import Transformer
    from .tokenizer import CharTokenizer
    from .runtime import resolve_device

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
