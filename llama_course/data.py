"""Tiny Shakespeare: loading, the train/validation split, and next-token batches.

A language model learns to predict token t+1 from tokens 0..t. A training example is therefore
a window of the text and the *same window shifted by one position*: inputs x = data[i : i+T],
targets y = data[i+1 : i+T+1]. A target that is the input itself (no shift) or shifted by two
is a bug that trains without error and learns the wrong task. Windows start at random offsets
(get_batch), or follow shuffled passes over the text (epoch_window_starts).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Optional

import torch

from .tokenizer import CharTokenizer

DATA_FILE = "tiny_shakespeare.txt"


def load_tiny_shakespeare(path: str | Path | None = None) -> str:
    """The 1,115,394 characters of Tiny Shakespeare, shipped inside the package (works from an
    installed wheel too: no download, no repository checkout needed)."""
    if path is not None:
        return Path(path).read_text(encoding="utf-8")
    return resources.files("llama_course").joinpath("data", DATA_FILE).read_text(encoding="utf-8")


def train_val_split(data: torch.Tensor, val_fraction: float = 0.1
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """First 90% for training, last 10% for validation: nanoGPT's split, so that validation
    losses compare with its published figures."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction ({val_fraction}) must be between 0 and 1")
    n = int(len(data) * (1 - val_fraction))
    return data[:n], data[n:]


def encode_text(text: str, tokenizer: CharTokenizer) -> torch.Tensor:
    """The whole text as one LongTensor of token ids."""
    return torch.tensor(tokenizer.encode(text), dtype=torch.long)


def get_batch(data: torch.Tensor, batch_size: int, block_size: int,
              generator: Optional[torch.Generator] = None,
              ix: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows x (B, T) and their next tokens y (B, T) = x shifted left by one.

    `ix` (B,) gives the window starts explicitly; otherwise they are drawn from `generator`.
    """
    if len(data) < block_size + 1:
        raise ValueError(f"data has {len(data)} tokens, fewer than block_size + 1 "
                         f"({block_size + 1})")
    if ix is None:
        ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    offsets = ix[:, None] + torch.arange(block_size + 1)  # (B, T+1)
    chunk = data[offsets]  # (B, T+1)
    return chunk[:, :-1], chunk[:, 1:]  # x (B, T), y (B, T)


def epoch_window_starts(n_tokens: int, block_size: int, first: int, count: int,
                        seed: int) -> torch.Tensor:
    """Starts of windows number first .. first+count-1 in an endless run of epochs (count,).

    get_batch draws windows at random offsets, with replacement: over one pass worth of
    windows some text is seen twice and about a third of it not at all. Here each epoch cuts
    the text into windows of block_size at a random phase (so window edges move from epoch to
    epoch) and visits every window once, in a random order. Epoch e's order depends on (seed,
    e) only, so window i is the same whoever asks for it: a resumed run and every torchrun
    rank draw exactly what one uninterrupted process draws.
    """
    if block_size < 1 or first < 0 or count < 0:
        raise ValueError(f"block_size ({block_size}) must be >= 1, first ({first}) and count "
                         f"({count}) >= 0")
    per_epoch = n_tokens // block_size - 1  # windows of an epoch: each needs block_size + 1 tokens
    if per_epoch < 1:
        raise ValueError(f"data has {n_tokens} tokens: too few for two windows of block_size "
                         f"{block_size}")
    index = torch.arange(first, first + count)  # (count,) window numbers
    epoch_of = index // per_epoch  # (count,)
    starts = torch.empty(count, dtype=torch.long)
    for epoch in epoch_of.unique().tolist():
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        phase = int(torch.randint(block_size, (1,), generator=g))
        order = torch.randperm(per_epoch, generator=g)  # (per_epoch,) this epoch's windows
        here = epoch_of == epoch
        starts[here] = phase + order[index[here] % per_epoch] * block_size
    return starts


def eval_windows(data: torch.Tensor, block_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cut the whole split into consecutive windows so that every token after the first is
    predicted exactly once: full (n, T) windows, then one shorter window for the tail."""
    n = (len(data) - 1) // block_size
    x = data[: n * block_size].view(n, block_size)  # (n, T)
    y = data[1: n * block_size + 1].view(n, block_size)  # (n, T)
    windows = [(x, y)]
    rest = len(data) - 1 - n * block_size
    if rest > 0:  # the last `rest` inputs and targets
        start = n * block_size
        windows.append((data[start:-1][None], data[start + 1:][None]))  # (1, rest) each
    return windows
