"""Tiny Shakespeare, the split, and next-token batches (targets = inputs shifted by one)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import llama_course as lc

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_text():
    text = lc.load_tiny_shakespeare()
    assert len(text) == 1_115_394 and len(set(text)) == 65
    assert text.startswith("First Citizen:\nBefore we proceed any further, hear me speak.")
    assert text == (ROOT / "data" / "tiny_shakespeare.txt").read_text()  # the two copies agree


def test_split_is_first_90_last_10():
    data = torch.arange(1000)
    train, val = lc.train_val_split(data)
    assert torch.equal(train, torch.arange(900)) and torch.equal(val, torch.arange(900, 1000))
    with pytest.raises(ValueError, match="val_fraction"):
        lc.train_val_split(data, 1.5)


def test_targets_are_inputs_shifted_by_one_on_known_text():
    tok = lc.CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz")
    data = lc.encode_text("abcdefghijklmnopqrstuvwxyz", tok)
    x, y = lc.get_batch(data, 3, 5, ix=torch.tensor([0, 10, 20]))
    assert [tok.decode(r) for r in x.tolist()] == ["abcde", "klmno", "uvwxy"]
    assert [tok.decode(r) for r in y.tolist()] == ["bcdef", "lmnop", "vwxyz"]


def test_random_batches_stay_inside_the_data():
    data = torch.arange(50)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x, y = lc.get_batch(data, 8, 10, g)
        assert x.shape == y.shape == (8, 10)
        assert torch.equal(y, x + 1) and int(y.max()) < 50
    with pytest.raises(ValueError, match="fewer than block_size"):
        lc.get_batch(torch.arange(5), 2, 10)


def test_eval_windows_predict_every_token_once():
    data = torch.arange(23)
    windows = lc.eval_windows(data, 5)
    xs = torch.cat([x.flatten() for x, _ in windows])
    ys = torch.cat([y.flatten() for _, y in windows])
    assert torch.equal(ys, torch.arange(1, 23)) and torch.equal(xs, torch.arange(0, 22))


def test_text_loads_from_an_installed_wheel(tmp_path):
    """Build the wheel, install it into an empty folder, and load the text from there, in a
    directory that has no repository checkout."""
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels),
                    str(ROOT)], check=True)
    wheel = next(wheels.glob("llama_course-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True)
    code = ("import llama_course, sys; t = llama_course.load_tiny_shakespeare(); "
            "print(llama_course.__file__); print(len(t))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
                         check=True).stdout.split()
    assert out[0].startswith(str(target)) and out[1] == "1115394"
