"""The decoder's single-token step, recorded once as a CUDA graph and replayed per token.

A CUDA graph stores a fixed sequence of kernel launches on fixed memory. The static step of
`FastDecoder` qualifies: its shapes never change, the position arrives as a tensor, and the
KV cache is written in place. So the first call copies its inputs into tensors the graph owns,
runs the step twice on a side stream (compiling it and letting the libraries pick their
kernels; both runs write the same keys and values at the same position, so the cache stays
correct), records it, and every call replays the recording: the CPU no longer launches each
kernel, which for a model of a few million parameters is most of the time per token.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch


def fallback_warning(what: str, error: Exception, instead: str) -> None:
    """Say once, as a RuntimeWarning, that a speed-up failed and what runs instead."""
    warnings.warn(f"{what} failed ({type(error).__name__}: {error}); {instead}",
                  RuntimeWarning, stacklevel=4)


class CUDAGraphStep:
    """step(token (B,), pos (), *fixed) -> logits (B, V), replayed from a recording.

    `fixed` are the tensors that are the same at every call (the KV cache). If recording
    fails, the step warns once, hands `fn` to `on_fallback` (so the caller stops asking for a
    graph) and runs `fn` directly: the same logits, one kernel launch at a time."""

    def __init__(self, fn: Callable[..., torch.Tensor],
                 on_fallback: Callable[[Callable[..., torch.Tensor]], None]):
        self.fn, self.on_fallback = fn, on_fallback
        self.graph: Optional[torch.cuda.CUDAGraph] = None

    def __call__(self, token: torch.Tensor, pos: torch.Tensor, *fixed: torch.Tensor):
        if self.graph is None:
            try:
                self._capture(token, pos, fixed)
            except Exception as e:  # e.g. a kernel that cannot be captured: launch one by one
                fallback_warning("capturing the decode step as a CUDA graph", e,
                                 "launching its kernels one by one")
                self.on_fallback(self.fn)
                return self.fn(token, pos, *fixed)
        self.token.copy_(token)
        self.pos.copy_(pos)
        self.graph.replay()
        return self.logits.clone()  # the graph overwrites its output at the next replay

    def _capture(self, token: torch.Tensor, pos: torch.Tensor, fixed: tuple) -> None:
        self.token, self.pos = token.clone(), pos.clone()  # (B,), (): the graph's inputs
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # compilation and kernel selection happen here, not in the graph
                self.fn(self.token, self.pos, *fixed)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self.fn(self.token, self.pos, *fixed)  # (B, V), memory the graph owns
        self.graph = graph
