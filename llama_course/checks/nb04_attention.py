"""Checkers for the exercises of notebook 04 (attention and the KV cache)."""

from __future__ import annotations

import math
from typing import Callable

import torch

from .. import attention, config, rope
from .common import close, ok


def check_causal_mask(fn: Callable[[int, int], torch.Tensor]) -> bool:
    """fn(seqlen, start_pos) -> bool (seqlen, start_pos + seqlen), True where attending is allowed."""
    for T, start in ((5, 0), (3, 4), (1, 0), (2, 6)):
        want = attention.causal_mask(T, start)
        got = fn(T, start)
        where = f"my_causal_mask({T}, start_pos={start})"
        if not isinstance(got, torch.Tensor):
            raise AssertionError(f"{where}: expected a tensor, got {type(got).__name__}")
        if got.shape == (T, T) and start > 0:
            raise AssertionError(f"{where}: shape {tuple(got.shape)}, expected {tuple(want.shape)}. "
                                 "Looks like you ignored start_pos: the queries also see the "
                                 f"{start} cached keys, so there are start_pos + seqlen columns")
        if got.shape != want.shape:
            raise AssertionError(f"{where}: shape {tuple(got.shape)}, expected {tuple(want.shape)} "
                                 "(rows: the new queries; columns: every key up to the last one)")
        if got.dtype != torch.bool:
            raise AssertionError(f"{where}: dtype {got.dtype}; return a bool tensor (True = may "
                                 "look), which masked_fill(~mask, -inf) and SDPA's attn_mask expect")
        if torch.equal(got, ~want):
            raise AssertionError(f"{where}: your mask is inverted (True = blocked, the convention "
                                 "of nn.MultiheadAttention); here True means the query may look")
        if torch.equal(got, want & ~_diagonal(T, start)):
            raise AssertionError(f"{where}: a query may not see its own key in your mask "
                                 "(< instead of <=); every token attends to itself")
        if not torch.equal(got, want):
            raise AssertionError(f"{where}: got\n{got.int()}\nexpected\n{want.int()}")
    return ok("causal mask")


def _diagonal(T: int, start: int) -> torch.Tensor:
    q_pos = torch.arange(start, start + T)
    return torch.arange(start + T)[None, :] == q_pos[:, None]  # (T, start + T)


# ---------------------------------------------------------------------------- chunked prefill
def _chunked(attn, x, freqs_cis, chunk, *, mask=True, offset_freqs=True, advance=True):
    """The chunked computation, right or with one of the usual slips (for naming them)."""
    B, T, _ = x.shape
    cache = attention.KVCache(B, T, attn.n_kv_heads, attn.head_dim)
    outs = []
    for start in range(0, T, chunk):
        piece = x[:, start:start + chunk]
        n = piece.shape[1]
        pos = start if advance else 0
        fc = freqs_cis[pos:pos + n] if offset_freqs else freqs_cis[:n]
        m = attention.causal_mask(n, pos) if mask else None
        outs.append(attn(piece, pos, fc, m, cache))
    return torch.cat(outs, dim=1)  # (B, T, dim)


def check_chunked_attention(fn: Callable[..., torch.Tensor]) -> bool:
    """fn(attn, x, freqs_cis, chunk_size) -> attn's output for x (B, T, dim), computed chunk by
    chunk through a KV cache; compared with one full pass attn(x, 0, freqs_cis[:T], mask)."""
    args = config.ModelArgs(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=16,
                            multiple_of=16, rope_theta=10000.0, max_seq_len=32)
    torch.manual_seed(0)
    attn = attention.Attention(args).eval()
    with torch.no_grad():
        for p in attn.parameters():  # larger than the init, so that every slip shows
            p.normal_(std=0.3)
        T = 11
        x = torch.randn(2, T, args.dim)
        freqs_cis = rope.precompute_freqs_cis(args.head_dim, args.max_seq_len, args.rope_theta)
        want = attn(x, 0, freqs_cis[:T], attention.causal_mask(T))
        for chunk in (4, 1, T):
            where = f"chunk_size={chunk}"
            try:
                got = fn(attn, x, freqs_cis, chunk)
            except (RuntimeError, ValueError) as e:
                hint = ""
                if "size of tensor" in str(e) or "must match" in str(e) or "shape" in str(e):
                    hint = (" A chunk after start_pos cached tokens has start_pos + T keys, so its "
                            "mask is causal_mask(T, start_pos), of shape (T, start_pos + T), not "
                            "the square (T, T).")
                raise AssertionError(f"{where}: your function raised {type(e).__name__}: "
                                     f"{str(e).splitlines()[0]}.{hint}") from None
            if isinstance(got, torch.Tensor) and got.shape == want.shape and \
                    not torch.allclose(got.to(want.dtype), want, atol=1e-5, rtol=1e-5):
                _name_slip(got, attn, x, freqs_cis, chunk, where)
            close(f"chunked attention ({where})", got, want)
    return ok("chunked prefill")


def _name_slip(got, attn, x, freqs_cis, chunk, where) -> None:
    slips = {
        "no mask inside the chunks (mask=None): each token sees the later tokens of its chunk":
            dict(mask=False),
        "every chunk rotated as if it started at position 0: slice freqs_cis[start_pos:start_pos + T]":
            dict(offset_freqs=False),
        "every chunk at start_pos 0: each overwrites the cache and sees only itself":
            dict(advance=False),
    }
    for what, how in slips.items():
        wrong = _chunked(attn, x, freqs_cis, chunk, **how)
        if torch.allclose(got.to(wrong.dtype), wrong, atol=1e-5, rtol=1e-5):
            raise AssertionError(f"{where}: your output matches {what}")


# ---------------------------------------------------------------------------- memory budget
def check_max_context(fn: Callable[..., int]) -> bool:
    """fn(args, memory_bytes, batch_size, dtype) -> the longest context (tokens per sequence)
    whose KV cache for `batch_size` sequences fits in `memory_bytes` next to the weights, both
    stored in `dtype` ("bf16", "fp32", "fp8" ...). 0 if even the weights do not fit."""
    seventy_b = config.ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8,
                                 multiple_of=4096, ffn_dim_multiplier=1.3)
    cases = [(config.get_preset("llama3-8b"), 80e9, 1, "bf16"),
             (config.get_preset("llama3-8b"), 80e9, 8, "bf16"),
             (config.get_preset("llama3-8b", n_kv_heads=1), 24 * 2**30, 4, "bf16"),
             (config.get_preset("llama3.2-1b"), 16 * 2**30, 16, "fp32"),
             (seventy_b.replace(n_kv_heads=1), 192e9, 2, "fp8"),
             (seventy_b, 100e9, 1, "bf16")]
    for args, memory, batch, dtype in cases:
        want = _max_context(args, memory, batch, dtype)
        got = fn(args, memory, batch, dtype)
        where = (f"n_layers={args.n_layers}, n_heads={args.n_heads}, n_kv_heads={args.kv_heads}, "
                 f"memory={memory:.4g} bytes, batch_size={batch}, dtype={dtype}")
        if isinstance(got, float) and got.is_integer():
            got = int(got)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = int(got)
        if not isinstance(got, int):
            raise AssertionError(f"{where}: expected an int (a number of tokens), got {got!r}")
        if got == want:
            continue
        slips = {
            "n_heads instead of n_kv_heads (the cache holds only the K/V heads)":
                _max_context(args.replace(n_kv_heads=None), memory, batch, dtype,
                             weights_of=args),
            "no factor 2 for keys AND values": _max_context(args, memory, batch, dtype, kv=1),
            "the weights forgotten: they share the memory with the cache":
                _max_context(args, memory, batch, dtype, weights=False),
            "the batch forgotten: every sequence has its own cache":
                _max_context(args, memory, 1, dtype),
            "one layer's cache: every layer keeps its own keys and values":
                _max_context(args.replace(n_layers=1), memory, batch, dtype,
                             weights_of=args),
            "the number rounded up: a context that fits is rounded down":
                want + 1,
        }
        for what, value in slips.items():
            if got == value:
                raise AssertionError(f"{where}: got {got}, expected {want}. Looks like {what}")
        raise AssertionError(f"{where}: got {got}, expected {want}")
    return ok("longest context in a memory budget")


def _max_context(args, memory, batch, dtype, kv: int = 2, weights: bool = True,
                 weights_of=None) -> int:
    per_token = kv * args.n_layers * args.kv_heads * args.head_dim * config.dtype_bytes(dtype)
    free = memory - (config.weight_bytes(weights_of or args, dtype) if weights else 0)
    return max(0, math.floor(free / (batch * per_token)))
