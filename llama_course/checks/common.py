"""What every checker shares: compare a tensor with the reference, print the verdict."""

from __future__ import annotations

import torch


def close(name: str, got, expected, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{name}: expected a tensor, got {type(got).__name__}")
    if got.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    try:
        torch.testing.assert_close(got.to(expected.dtype), expected, atol=atol, rtol=rtol)
    except AssertionError as e:
        raise AssertionError(f"{name}: values differ from the reference\n{e}") from None


def ok(what: str) -> bool:
    print(f"✓ {what}: correct")
    return True
