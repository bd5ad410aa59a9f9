"""Grouped-query attention with a preallocated KV cache.

Multi-head attention gives every query head its own key and value head. During generation the
keys and values of all past tokens are kept (the KV cache), and reading that cache, not the
arithmetic, is what limits decoding speed. Grouped-query attention (GQA, Ainslie et al. 2023)
lets `n_rep` query heads share one K/V head: Llama 3 8B has 32 query heads and 8 K/V heads,
so its cache is 4x smaller than multi-head attention's, at almost no cost in quality.
`n_kv_heads == n_heads` is multi-head attention, `n_kv_heads == 1` multi-query attention.

Tensors inside attention are laid out (B, heads, T, head_dim), the layout
`F.scaled_dot_product_attention` takes, and the cache keeps that layout so that no step has to
transpose it. (Meta's code keeps (B, T, heads, head_dim); the numbers are the same.)
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelArgs
from .rope import apply_rotary_emb

Mask = Optional[Union[torch.Tensor, str]]  # a boolean (T, S) tensor, "causal", or None


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv_heads, S, D) -> (B, n_kv_heads * n_rep, S, D): each K/V head serves n_rep queries.

    Equal to `torch.repeat_interleave(x, n_rep, dim=1)`: query heads 0..n_rep-1 use K/V head 0.
    """
    if n_rep == 1:
        return x
    B, n_kv_heads, S, D = x.shape
    x = x[:, :, None, :, :].expand(B, n_kv_heads, n_rep, S, D)  # a view, no copy yet
    return x.reshape(B, n_kv_heads * n_rep, S, D)


def causal_mask(seqlen: int, start_pos: int = 0,
                device: Optional[torch.device] = None) -> torch.Tensor:
    """Boolean (seqlen, start_pos + seqlen) mask, True where a query may look at a key.

    Query i sits at position start_pos + i; it may see every cached key (positions < start_pos)
    and the new keys up to itself. Without this mask, processing a prompt in one go would let
    each token peek at the tokens after it.
    """
    q_pos = torch.arange(start_pos, start_pos + seqlen, device=device)  # (T,)
    k_pos = torch.arange(start_pos + seqlen, device=device)  # (S,)
    return k_pos[None, :] <= q_pos[:, None]  # (T, S)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       mask: Mask) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(Q K^T / sqrt(d) + mask) V, spelled out, returning the weights too (for plots).

    q: (B, H, T, D); k, v: (B, H, S, D) with K/V heads already repeated (any leading
    dimensions work, as in F.scaled_dot_product_attention); mask: a boolean (T, S) tensor
    (True where a query may look), "causal", or None.
    """
    if isinstance(mask, str):
        mask = _causal_of(q, k, mask)
    scores = q.float() @ k.float().transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, H, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)  # (B, H, T, S), rows sum to 1
    return (weights @ v.float()).type_as(q), weights  # (B, H, T, D)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   mask: Mask, dropout_p: float = 0.0) -> torch.Tensor:
    """The same computation through PyTorch's fused kernel (flash / memory-efficient / math).

    A mask tensor is always applied as given. `mask="causal"` asks for the plain lower
    triangle (queries and keys at the same positions, no cached prefix): `is_causal=True`
    encodes it without a mask tensor and lets the fastest kernels run. On the CPU, attention
    runs in fp32 even under bf16 autocast: PyTorch's CPU flash-attention kernel is several
    times slower in bf16 than in fp32 (its backward pass about 6x, measured in benchmarks/),
    while the matrix products around it are the ones that gain from bf16.
    """
    if isinstance(mask, str):
        _causal_of(q, k, mask)  # checks the request; the kernel builds the triangle itself
    if q.device.type == "cpu" and (q.dtype != torch.float32 or torch.is_autocast_enabled("cpu")):
        with torch.autocast("cpu", enabled=False):
            return _sdpa(q.float(), k.float(), v.float(), mask, dropout_p).to(q.dtype)
    return _sdpa(q, k, v, mask, dropout_p)


def _sdpa(q, k, v, mask, dropout_p):
    if isinstance(mask, str):  # "causal": checked by the caller
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def _causal_of(q: torch.Tensor, k: torch.Tensor, mask: str) -> torch.Tensor:
    """The tensor that mask="causal" stands for, after checking that it applies."""
    T, S = q.shape[-2], k.shape[-2]
    if mask != "causal":
        raise ValueError(f'mask must be a boolean tensor, None or "causal", got {mask!r}')
    if T != S:
        raise ValueError(f'mask="causal" needs as many queries as keys (got {T} and {S}); '
                         "after a cached prefix pass causal_mask(T, start_pos)")
    return causal_mask(T, 0, q.device)


class KVCache:
    """Keys and values of one layer for every past position, allocated once.

    Shape (B, n_kv_heads, max_seq_len, head_dim). `update` writes the new tokens' K/V at their
    positions and returns everything up to the last one. A cache belongs to one generation:
    reusing it for a new prompt without starting at position 0 mixes two conversations.
    """

    def __init__(self, batch_size: int, max_seq_len: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: Optional[torch.device] = None):
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.cache_k = torch.zeros(shape, dtype=dtype, device=device)
        self.cache_v = torch.zeros(shape, dtype=dtype, device=device)

    @property
    def max_seq_len(self) -> int:
        return self.cache_k.shape[2]

    def update(self, start_pos: int, xk: torch.Tensor,
               xv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store xk, xv: (B, n_kv_heads, T, D) at positions start_pos.. ; return keys/values so far."""
        end = start_pos + xk.shape[2]
        if end > self.max_seq_len:
            raise ValueError(f"KV cache overflow: positions up to {end} do not fit in "
                             f"max_seq_len ({self.max_seq_len})")
        B = xk.shape[0]
        self.cache_k[:B, :, start_pos:end] = xk
        self.cache_v[:B, :, start_pos:end] = xv
        return self.cache_k[:B, :, :end], self.cache_v[:B, :, :end]  # (B, Hkv, end, D)


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE, Meta's parameter names (wq, wk, wv, wo)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads = args.n_heads
        self.n_kv_heads = args.kv_heads
        self.n_rep = args.n_rep
        self.head_dim = args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)
        self.dropout = args.dropout  # 0 for Llama; only active in training mode
        self.keep_weights = False  # set by Transformer.attention_weights to record the maps
        self.last_weights: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor, start_pos: int, freqs_cis: torch.Tensor,
                mask: Mask, cache: Optional[KVCache] = None) -> torch.Tensor:
        B, T, _ = x.shape
        xq = self.wq(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, H, D)
        xk = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, Hkv, D)
        xv = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, Hkv, D)
        xq, xk = apply_rotary_emb(xq, xk, freqs_cis)  # positions enter here, and only here
        q, k, v = xq.transpose(1, 2), xk.transpose(1, 2), xv.transpose(1, 2)  # (B, heads, T, D)
        if cache is not None:
            k, v = cache.update(start_pos, k, v)  # (B, Hkv, start_pos + T, D)
        k, v = repeat_kv(k, self.n_rep), repeat_kv(v, self.n_rep)  # (B, H, S, D)
        if self.keep_weights:
            out, self.last_weights = explicit_attention(q, k, v, mask)
        else:
            p = self.dropout if self.training else 0.0
            out = sdpa_attention(q, k, v, mask, dropout_p=p)  # (B, H, T, D)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H*D)
        return F.dropout(self.wo(out), self.dropout, self.training)  # (B, T, dim)
