"""Notebook 04's checkers accept the right answers and name the usual mistakes."""

import math

import pytest
import torch

import llama_course as lc
from llama_course import checks


# ---------------------------------------------------------------- causal mask
def test_causal_mask_accepts_the_package(capsys):
    assert checks.check_causal_mask(lc.causal_mask) is True
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, message", [
    (lambda T, s: torch.tril(torch.ones(T, T, dtype=torch.bool)), "ignored start_pos"),
    (lambda T, s: ~lc.causal_mask(T, s), "inverted"),
    (lambda T, s: lc.causal_mask(T, s).float(), "bool tensor"),
    (lambda T, s: torch.arange(s + T)[None] < torch.arange(s, s + T)[:, None], "its own key"),
    (lambda T, s: torch.ones(T, s + T, dtype=torch.bool), "expected"),
])
def test_causal_mask_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_causal_mask(wrong)


# ---------------------------------------------------------------- chunked prefill
def chunked(attn, x, freqs_cis, chunk, mask="rect", offset=True, advance=True):
    B, T, _ = x.shape
    cache = lc.KVCache(B, T, attn.n_kv_heads, attn.head_dim)
    out = []
    for start in range(0, T, chunk):
        piece = x[:, start:start + chunk]
        n = piece.shape[1]
        pos = start if advance else 0
        fc = freqs_cis[pos:pos + n] if offset else freqs_cis[:n]
        m = {"rect": lc.causal_mask(n, pos), "square": lc.causal_mask(n), "none": None}[mask]
        out.append(attn(piece, pos, fc, m, cache))
    return torch.cat(out, dim=1)


def test_chunked_attention_accepts_the_right_answer(capsys):
    assert checks.check_chunked_attention(chunked) is True
    assert "correct" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs, message", [
    (dict(mask="none"), "no mask inside the chunks"),
    (dict(mask="square"), r"causal_mask\(T, start_pos\)"),
    (dict(offset=False), "rotated as if it started at position 0"),
    (dict(advance=False), "sees only itself"),
])
def test_chunked_attention_names_the_mistake(kwargs, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_chunked_attention(lambda a, x, f, c: chunked(a, x, f, c, **kwargs))


def test_chunked_attention_rejects_an_unnamed_error():
    with pytest.raises(AssertionError, match="values differ"):
        checks.check_chunked_attention(lambda a, x, f, c: chunked(a, x, f, c) * 1.01)


# ---------------------------------------------------------------- memory budget
def max_context(args, memory, batch, dtype):
    free = memory - lc.weight_bytes(args, dtype)
    return max(0, math.floor(free / (batch * lc.kv_cache_bytes_per_token(args, dtype))))


def per_token(args, dtype, kv=2, heads=None, layers=None):
    heads = args.kv_heads if heads is None else heads
    layers = args.n_layers if layers is None else layers
    return kv * layers * heads * args.head_dim * lc.config.dtype_bytes(dtype)


def test_max_context_accepts_the_right_answer(capsys):
    assert checks.check_max_context(max_context) is True
    assert "correct" in capsys.readouterr().out


def test_max_context_known_value():
    # Llama 3 8B in bf16 on an 80 GB card: 16.06 GB of weights, 131072 bytes per token
    args = lc.get_preset("llama3-8b")
    assert max_context(args, 80e9, 1, "bf16") == (80e9 - 2 * 8_030_261_248) // 131072


@pytest.mark.parametrize("wrong, message", [
    (lambda a, m, b, d: max(0, math.floor((m - lc.weight_bytes(a, d)) / (b * per_token(a, d, heads=a.n_heads)))),
     "n_heads instead of n_kv_heads"),
    (lambda a, m, b, d: max(0, math.floor((m - lc.weight_bytes(a, d)) / (b * per_token(a, d, kv=1)))),
     "keys AND values"),
    (lambda a, m, b, d: math.floor(m / (b * per_token(a, d))), "weights forgotten"),
    (lambda a, m, b, d: max(0, math.floor((m - lc.weight_bytes(a, d)) / per_token(a, d))), "batch forgotten"),
    (lambda a, m, b, d: max(0, math.floor((m - lc.weight_bytes(a, d)) / (b * per_token(a, d, layers=1)))),
     "one layer's cache"),
    (lambda a, m, b, d: max(0, math.ceil((m - lc.weight_bytes(a, d)) / (b * per_token(a, d)))),
     "rounded up"),
    (lambda a, m, b, d: float(max_context(a, m, b, d)) + 0.5, "expected an int"),
])
def test_max_context_names_the_mistake(wrong, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_max_context(wrong)
