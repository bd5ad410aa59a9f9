"""The command line: help, a smoke run end to end, clear errors, Ctrl-C, and torchrun (gloo)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

import llama_course as lc

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def cli(*args, timeout=600, **kw):  # generous: a busy shared machine is slow
    return subprocess.run([sys.executable, "-m", "llama_course", *args], capture_output=True,
                          text=True, timeout=timeout, env=ENV, **kw)


def test_help_explains_the_commands():
    out = cli("--help").stdout
    assert "train" in out and "generate" in out and "examples:" in out
    train_help = cli("train", "--help").stdout
    for flag in ("--preset", "--device", "--max-steps", "--time-budget", "--out", "--resume"):
        assert flag in train_help
    gen_help = cli("generate", "--help").stdout
    for flag in ("--checkpoint", "--prompt", "--max-new-tokens", "--temperature", "--top-p",
                 "--top-k", "--seed"):
        assert flag in gen_help


def test_train_then_generate(tmp_path):
    run = tmp_path / "run"
    p = cli("train", "--preset", "tiny", "--max-steps", "30", "--out", str(run),
            "--no-progress", "--device", "cpu")
    assert p.returncode == 0, p.stderr
    assert "final validation loss (whole split)" in p.stdout
    assert (run / "model.safetensors").is_file() and (run / "loss_curve.png").is_file()
    p = cli("generate", "--checkpoint", str(run), "--prompt", "ROMEO:", "--prompt", "JULIET:",
            "--max-new-tokens", "40", "--seed", "3")
    assert p.returncode == 0, p.stderr
    assert "ROMEO:" in p.stdout and "JULIET:" in p.stdout
    again = cli("generate", "--checkpoint", str(run), "--prompt", "ROMEO:", "--prompt", "JULIET:",
                "--max-new-tokens", "40", "--seed", "3")
    assert again.stdout == p.stdout  # seeded: the same sample twice


@pytest.mark.parametrize("args, message", [
    (["train", "--max-steps", "0"], "argument --max-steps: 0 must be a positive integer"),
    (["train", "--time-budget", "-5"], "argument --time-budget: -5.0 must be positive"),
    (["train", "--beta2", "1"], "argument --beta2: 1.0 must be in [0, 1)"),
    (["train", "--optimizer", "sgd"], "argument --optimizer: invalid choice: 'sgd'"),
    (["train", "--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
    (["train", "--lr", "fast"], "argument --lr: 'fast' is not a number"),
    (["generate"], "the following arguments are required: --checkpoint"),
    (["generate", "--checkpoint", "x", "--top-p", "1.5"], "argument --top-p: 1.5 must be between 0 and 1"),
    (["generate", "--checkpoint", "x", "--temperature", "-1"], "argument --temperature: -1.0 must be 0 or more"),
])
def test_bad_values_are_explained(args, message):
    p = cli(*args)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr


def test_missing_checkpoint_and_unknown_characters(tmp_path):
    p = cli("generate", "--checkpoint", str(tmp_path / "nope"))
    assert p.returncode == 2 and "checkpoint folder" in p.stderr and "does not exist" in p.stderr
    p = cli("train", "--resume", "--out", str(tmp_path / "nope"))
    assert p.returncode == 2 and "cannot resume" in p.stderr
    run = tmp_path / "run"
    assert cli("train", "--preset", "tiny", "--max-steps", "2", "--out", str(run),
               "--no-progress").returncode == 0
    p = cli("generate", "--checkpoint", str(run), "--prompt", "Ω")
    assert p.returncode == 2 and "character 'Ω'" in p.stderr and "Traceback" not in p.stderr


def test_train_options_come_from_train_config():
    """One flag per TrainConfig field, with the field's help, check and choices; the defaults
    the help states are the presets' own (--compile: off in every preset)."""
    from llama_course.__main__ import build_parser

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    actions = {a.dest: a for a in train._actions}
    for f in dataclasses.fields(lc.TrainConfig):
        if "help" in f.metadata:
            assert f.metadata["help"] in actions[f.name].help, f.name
            assert actions[f.name].choices == f.metadata["choices"], f.name
    assert not any(p.get("compile", False) for p in lc.TRAIN_PRESETS.values())
    assert actions["compile"].help.endswith("(default: off)")
    assert "120.0 (shakespeare-cpu)" in actions["time_budget"].help
    a = parser.parse_args(["train", "--beta2", "0.95", "--no-compile", "--grad-accum", "2",
                           "--out", "x"])
    assert (a.beta2, a.compile, a.grad_accum_steps, a.out_dir, a.lr) == (0.95, False, 2, "x", None)


def _default_signals():
    """In the child, before it runs Python: the default handling of SIGINT and SIGTERM, whatever
    this process inherited (started in the background, the test run ignores SIGINT)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_saves_and_resume_finishes(tmp_path, sig, code):
    run, out_log, err_log = tmp_path / "run", tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out_log.open("w") as out, err_log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "llama_course", "train", "--preset", "tiny",
                                 "--max-steps", "100000", "--out", str(run), "--no-progress",
                                 "--log-interval", "1", "--eval-interval", "0"],
                                stdout=out, stderr=err, env=ENV, preexec_fn=_default_signals)
    try:
        deadline = time.monotonic() + 120
        while "model:" not in out_log.read_text():  # wait until it trains
            assert proc.poll() is None, f"training ended early: {err_log.read_text()}"
            assert time.monotonic() < deadline, "training did not start within 120 s"
            time.sleep(0.2)
        time.sleep(2.0)
        proc.send_signal(sig)
        proc.wait(timeout=120)
    finally:  # never leave a training process behind
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = out_log.read_text()
    assert proc.returncode == code, err_log.read_text()
    assert "interrupted at step" in out and "--resume" in out
    saved = torch.load(run / "train_state.pt", weights_only=True)["step"]
    assert saved > 0
    assert json.loads((run / "metrics.json").read_text())["steps"] == saved
    p = cli("train", "--resume", "--out", str(run), "--max-steps", str(saved + 5),
            "--no-progress")
    assert p.returncode == 0, p.stderr
    assert f"resuming {run} at step {saved}" in p.stdout
    assert json.loads((run / "metrics.json").read_text())["steps"] == saved + 5


@pytest.mark.parametrize("order", ["random", "epochs"])
def test_torchrun_two_gloo_processes_match_one_process(tmp_path, order):
    """Two CPU processes with batch 4 each = one process with batch 8: the same examples
    (each rank takes its slice of one global batch), the same updates, replicas in sync;
    with either order of the windows."""
    common = ["--preset", "tiny", "--max-steps", "6", "--log-interval", "1", "--no-progress",
              "--device", "cpu", "--eval-interval", "0", "--dtype", "fp32", "--data-order", order]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=2", "-m", "llama_course", "train", *common,
                          "--batch-size", "4", "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=300, env=ENV)
    assert two.returncode == 0, two.stderr[-3000:]
    one = cli("train", *common, "--batch-size", "8", "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr

    summary = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert summary["world_size"] == 2
    checksums = summary["rank_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]  # replicas identical
    a = pd.read_csv(tmp_path / "two" / "metrics.csv").dropna(subset=["train_loss"])
    b = pd.read_csv(tmp_path / "one" / "metrics.csv").dropna(subset=["train_loss"])
    pd.testing.assert_series_equal(a.train_loss.reset_index(drop=True),
                                   b.train_loss.reset_index(drop=True), rtol=1e-4)
    wa = lc.Transformer.from_pretrained(tmp_path / "two").state_dict()
    wb = lc.Transformer.from_pretrained(tmp_path / "one").state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)
