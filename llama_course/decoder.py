"""Fast decoding: the model's arithmetic, reorganised for generating one token at a time.

`model.py` is written to be read. Generating with it token by token pays, for every token and
every layer, for three separate q/k/v matrix products, two for the gate and up projections,
a dozen module calls and a fresh cache slice: at Shakespeare sizes that overhead, not the
arithmetic, sets the speed. `Decoder` computes exactly the same thing with that work removed:

* q, k and v projections fused into one matrix, gate and up into another (one matmul each);
* every matrix stored transposed, (in, out), and applied as `x @ w`: for one token per step
  that is a vector-matrix product, which on CPU streams a row-major (in, out) matrix from
  memory about 1.5x faster than the (out, in) layout `nn.Linear` keeps (weights of the 10M
  model do not fit in cache, so this sets its speed);
* the KV cache allocated once per generation, in the (B, heads, positions, head_dim) layout that
  `F.scaled_dot_product_attention` reads, and written in place;
* RoPE angles for every position computed once, at construction;
* plain functions on weight tensors (no `nn.Module` call overhead); grouped-query attention
  through SDPA's `enable_gqa` (no copies of K/V heads); only the last position goes through the
  output head.

With `compile=True` the single-token step uses static shapes (the whole cache, future positions
masked) and is compiled with `torch.compile`. On CUDA the compiled step is then captured once as
a CUDA graph (`CUDAGraphStep`) and replayed for every token: one launch instead of a few hundred,
which is what limits a small model on a GPU. Whatever fails (compilation, capture) the decoder
says so once and falls back, to the eager step, or to launching the step's kernels one by one.
`tests/test_decoder.py` checks the logits against `Transformer.forward` at every position.
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .model import Transformer
from .rope import precompute_freqs_cis, rotate


def rms_norm(x: torch.Tensor, gain2: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm as in `norm.RMSNorm` (normalise in fp32, cast back, then the gain), where
    `gain2` is the gain written twice, (2 * dim,).

    In fp32 it runs as a LayerNorm of [x, -x]: that vector has mean 0 and mean square
    mean(x^2), so LayerNorm divides by exactly RMSNorm's sqrt(mean(x^2) + eps). On the CPU
    `F.layer_norm` is one kernel while `F.rms_norm` is several: 10 us against 20 us for one
    128-wide token, about 15% of the 0.8M model's time per generated token.
    """
    dim = x.shape[-1]
    if x.dtype == gain2.dtype == torch.float32:
        both = torch.cat([x, -x], dim=-1)  # (..., 2 * dim), mean exactly 0
        return F.layer_norm(both, (2 * dim,), gain2, None, eps)[..., :dim]
    return F.rms_norm(x.float(), (dim,), eps=eps).type_as(x) * gain2[:dim]


def linear(x: torch.Tensor, w: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """x W^T. `w` is either one matrix stored transposed, (in, out), or a tuple of the model's
    own (out, in) matrices whose outputs are concatenated."""
    if isinstance(w, torch.Tensor):
        return x @ w
    return torch.cat([F.linear(x, part) for part in w], dim=-1)


def rope_real(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`rope.rotate` in real arithmetic, (a + ib)(c + is) spelled out: torch.compile
    fuses it into one kernel, while complex tensors would break the compiled graph.
    x: (B, T, heads, D); cos, sin: (T, D/2)."""
    a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # even and odd dimensions
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(3).type_as(x)


class Decoder(nn.Module):
    """Generation-time view of a `Transformer`: fused weights and a preallocated KV cache.

    The embeddings are shared with the model; the norm gains and the matrices are copies made
    once here (the matrices transposed and fused). Models of 200M parameters and more, where
    a copy would cost real memory, keep using their own matrices.
    """

    def __init__(self, model: Transformer, batch_size: int, max_seq_len: int,
                 compile: bool = False, fuse: Optional[bool] = None):
        super().__init__()
        p = model.params
        if max_seq_len > p.max_seq_len:
            raise ValueError(f"max_seq_len ({max_seq_len}) exceeds the model's context "
                             f"({p.max_seq_len})")
        self.n_heads, self.n_kv_heads, self.head_dim = p.n_heads, p.kv_heads, p.head_dim
        self.eps = p.norm_eps
        w = model.tok_embeddings.weight
        dtype, device = w.dtype, w.device
        if fuse is None:  # copying every matrix: cheap below a few hundred MB of weights
            fuse = model.num_parameters() < 200_000_000

        def join(*linears: nn.Linear):  # one (in, out) matrix, or the model's own matrices
            ws = [lin.weight.detach() for lin in linears]
            return torch.cat(ws).t().contiguous() if fuse else tuple(ws)

        def twice(norm: nn.Module) -> torch.Tensor:  # the gain for `rms_norm`
            return torch.cat([norm.weight.detach()] * 2)

        with torch.no_grad():
            self.tok_embeddings = w.detach()
            self.norm = twice(model.norm)
            self.output = join(model.output)
            self.layers = []
            for layer in model.layers:
                a, f = layer.attention, layer.feed_forward
                self.layers.append(dict(
                    attention_norm=twice(layer.attention_norm),
                    wqkv=join(a.wq, a.wk, a.wv),
                    wo=join(a.wo),
                    ffn_norm=twice(layer.ffn_norm),
                    w13=join(f.w1, f.w3),
                    w2=join(f.w2),
                ))
        shape = (p.n_layers, batch_size, self.n_kv_heads, max_seq_len, self.head_dim)
        self.register_buffer("cache_k", torch.zeros(shape, dtype=dtype, device=device))
        self.register_buffer("cache_v", torch.zeros(shape, dtype=dtype, device=device))
        freqs = precompute_freqs_cis(p.head_dim, max_seq_len, p.rope_theta, p.rope_scaling)
        self.register_buffer("freqs_cis", freqs.to(device))  # (max_seq_len, D/2), complex64
        self.register_buffer("rope_cos", freqs.real.contiguous().to(device))  # (max_seq_len, D/2)
        self.register_buffer("rope_sin", freqs.imag.contiguous().to(device))
        self.register_buffer("positions", torch.arange(max_seq_len, device=device))
        self.batch_size, self.max_seq_len = batch_size, max_seq_len
        self._step = self._static_step
        self.compiled = False  # True while the compiled step is in use
        if compile:
            self._step = self._compile(device)
            self.compiled = True

    @property
    def cuda_graph(self) -> bool:
        """True once the single-token step replays as a CUDA graph."""
        return isinstance(self._step, CUDAGraphStep) and self._step.graph is not None

    # ------------------------------------------------------------------ any number of tokens
    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        """tokens (B, T) at positions start_pos.. -> float32 logits of the last one (B, V)."""
        B, T = tokens.shape
        end = start_pos + T
        if end > self.max_seq_len:
            raise ValueError(f"positions up to {end} exceed the decoder's cache "
                             f"({self.max_seq_len})")
        h = F.embedding(tokens, self.tok_embeddings)  # (B, T, dim)
        freqs_cis = self.freqs_cis[start_pos:end]  # (T, D/2)
        mask = None
        if T > 1 and start_pos > 0:  # a chunk after a cached prefix: see the prefix, not ahead
            mask = self.positions[None, :end] <= self.positions[start_pos:end, None]  # (T, end)
        for i, lw in enumerate(self.layers):
            q, k, v = self._qkv(h, lw, lambda x: rotate(x, freqs_cis))  # (B, heads, T, D)
            self.cache_k[i, :B, :, start_pos:end] = k
            self.cache_v[i, :B, :, start_pos:end] = v
            keys, values = self.cache_k[i, :B, :, :end], self.cache_v[i, :B, :, :end]
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                                 is_causal=T > 1 and start_pos == 0,
                                                 enable_gqa=True)  # (B, H, T, D)
            h = self._block_rest(h, out, lw)
        return self._head(h[:, -1])

    def _qkv(self, h, lw, rotate):
        B, T, _ = h.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = linear(rms_norm(h, lw["attention_norm"], self.eps), lw["wqkv"])  # (B, T, (H+2Hkv)D)
        qk = rotate(qkv[..., : (H + Hkv) * D].view(B, T, H + Hkv, D))  # q and k at once
        v = qkv[..., (H + Hkv) * D:].view(B, T, Hkv, D)
        q, k = qk[:, :, :H], qk[:, :, H:]
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)

    def _block_rest(self, h, attn, lw):
        B, _, T, _ = attn.shape
        h = h + linear(attn.transpose(1, 2).reshape(B, T, -1), lw["wo"])  # (B, T, dim)
        gate, up = linear(rms_norm(h, lw["ffn_norm"], self.eps), lw["w13"]).chunk(2, dim=-1)
        return h + linear(F.silu(gate) * up, lw["w2"])  # (B, T, dim)

    def _head(self, h_last: torch.Tensor) -> torch.Tensor:
        return linear(rms_norm(h_last, self.norm, self.eps), self.output).float()  # (B, V)

    # ------------------------------------------------------------------ one token, static shapes
    def step(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One token per row: token (B,) at position `pos` (a 0-d long tensor on the device).
        Shapes never change from step to step, so the step can be compiled or graph-captured."""
        with torch.inference_mode():
            return self._step(token, pos)

    def _static_step(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        B = token.shape[0]
        h = F.embedding(token[:, None], self.tok_embeddings)  # (B, 1, dim)
        cos, sin = self.rope_cos[pos[None]], self.rope_sin[pos[None]]  # (1, D/2): a gather
        visible = (self.positions <= pos)[None, :]  # (1, max_seq_len): the past and now
        for i, lw in enumerate(self.layers):
            q, k, v = self._qkv(h, lw, lambda x: rope_real(x, cos, sin))  # (B, heads, 1, D)
            self.cache_k[i, :B].index_copy_(2, pos[None], k)
            self.cache_v[i, :B].index_copy_(2, pos[None], v)
            out = F.scaled_dot_product_attention(q, self.cache_k[i, :B], self.cache_v[i, :B],
                                                 attn_mask=visible, enable_gqa=True)
            h = self._block_rest(h, out, lw)
        return self._head(h[:, -1])

    def _compile(self, device: torch.device):
        compiled = torch.compile(self._static_step, fullgraph=True, dynamic=False)
        if device.type == "cuda":
            return CUDAGraphStep(self, compiled)

        def step(token, pos):
            try:
                return compiled(token, pos)
            except Exception as e:  # an unsupported platform or backend: run eagerly instead
                _fallback_warning("torch.compile of the decode step", e, "decoding eagerly")
                self._step, self.compiled = self._static_step, False
                return self._static_step(token, pos)

        return step


def _fallback_warning(what: str, error: Exception, instead: str) -> None:
    warnings.warn(f"{what} failed ({type(error).__name__}: {error}); {instead}",
                  RuntimeWarning, stacklevel=4)


class CUDAGraphStep:
    """The decoder's single-token step, recorded once as a CUDA graph and replayed per token.

    A CUDA graph stores a fixed sequence of kernel launches on fixed memory. The static step
    qualifies: its shapes never change, the position arrives as a tensor, and the KV cache is
    written in place. So the first call copies its inputs into tensors the graph owns, runs the
    step twice on a side stream (compiling it and letting the libraries pick their kernels; both
    runs write the same keys and values at the same position, so the cache stays correct),
    records it, and every call replays the recording: the CPU no longer launches each kernel,
    which for a model of a few million parameters is most of the time per token.
    """

    def __init__(self, decoder: Decoder, compiled):
        self.decoder, self.fn = decoder, compiled
        self.graph: Optional[torch.cuda.CUDAGraph] = None

    def __call__(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if self.graph is None:
            try:
                self._capture(token, pos)
            except Exception as e:  # e.g. a kernel that cannot be captured: launch one by one
                _fallback_warning("capturing the decode step as a CUDA graph", e,
                                  "launching its kernels one by one")
                self.decoder._step = self.fn
                return self.fn(token, pos)
        self.token.copy_(token)
        self.pos.copy_(pos)
        self.graph.replay()
        return self.logits.clone()  # the graph overwrites its output at the next replay

    def _capture(self, token: torch.Tensor, pos: torch.Tensor) -> None:
        self.token, self.pos = token.clone(), pos.clone()  # (B,), (): the graph's inputs
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            try:
                for _ in range(2):
                    self.fn(self.token, self.pos)
            except Exception as e:  # torch.compile unsupported here: record the eager step
                _fallback_warning("torch.compile of the decode step", e,
                                  "recording the eager step instead")
                self.fn, self.decoder.compiled = self.decoder._static_step, False
                for _ in range(2):
                    self.fn(self.token, self.pos)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self.fn(self.token, self.pos)  # (B, V), memory the graph owns
        self.graph = graph
