"""FastDecoder: the model's arithmetic, reorganised for generating one token at a time.

    fast = lc.FastDecoder(model)                               # build once, reuse
    lc.generate(model, prompts, 20, temperature=0, decoder=fast)  # same tokens, faster

`model.py` is written to be read. Generating with it token by token pays, for every token and
every layer, for three separate q/k/v matrix products, two for the gate and up projections, a
dozen module calls and a fresh slice of the cache: at the course's small sizes that overhead,
not the arithmetic, sets the speed. `FastDecoder` computes the same numbers with that work
removed, and answers the model's calls (`new_cache`, `decoder(tokens, start_pos, cache)`):

* q, k and v projections fused into one matrix, gate and up into another (one matmul each);
* in fp32 every matrix stored transposed, (in, out), and applied as `x @ w`: for one token
  that product streams a row-major (in, out) matrix a little faster than `nn.Linear`'s
  (out, in). In bf16 the other way round: PyTorch's CPU bf16 vector-matrix product is slow,
  `torch.mv` on the (out, in) layout 1.6x faster (benchmarks/real_model_speed.py);
* one KV cache per batch size, allocated once and kept for the next generations, in the
  (B, heads, positions, head_dim) layout that `F.scaled_dot_product_attention` reads;
  grouped-query attention through SDPA's `enable_gqa` (no copies of K/V heads);
* plain functions on weight tensors (no `nn.Module` calls); only the last position's head;
* RMSNorm as a LayerNorm of [x, -x] (`rms_norm` below says why that is the same number), the
  RoPE of notebook 03 (`rope.rotate`, in real arithmetic in the compiled step);
* `threads=` sets the CPU threads for each call and restores them after it (default: the
  process's setting; on a busy shared machine one thread can be many times faster than two,
  because a descheduled thread stalls every step: benchmarks/README.md).

`compile=True` compiles the single-token step with static shapes (the whole cache, future
positions masked). On CUDA it is then recorded once as a CUDA graph and replayed per token
(`cuda_graph.py`); on the CPU called from C++, in bf16 with its weights frozen into Inductor's
matrix kernels (`cpu_compile.py`). Whatever fails, the decoder says so once and falls back.

The decoder copies the model's weights (fused) when it is built. At the start of every
generation (`new_cache`) it compares a sample of every weight (64 evenly spaced values, and
where the tensor lives) with its copy and, where they differ, copies the weights again, in
place: a decoder built before training decodes the trained model (a hand edit of single
weights can fall between the samples: call `refresh()` after one). Moving the model to
another dtype or device needs a new decoder (a clear error says so). `tests/test_decoder.py`
checks its logits against the model's own forward at every position, `tests/test_generate.py`
its tokens against the plain path.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..model import Transformer
from ..rope import rotate
from .cpu_compile import compile_step as compile_cpu_step
from .cuda_graph import CUDAGraphStep, fallback_warning


def rms_norm(x: torch.Tensor, gain2: torch.Tensor, eps: float) -> torch.Tensor:
    """`norm.RMSNorm` (normalise in fp32, cast back, then the gain), where `gain2` is the gain
    written twice, (2 * dim,).

    In fp32 it runs as a LayerNorm of [x, -x]: that vector has mean 0 and mean square
    mean(x^2), so LayerNorm divides by exactly RMSNorm's sqrt(mean(x^2) + eps). On the CPU
    `F.layer_norm` is one kernel while RMSNorm is several: about 15% of the 0.8M model's time
    per generated token.
    """
    dim = x.shape[-1]
    if x.dtype == gain2.dtype == torch.float32:
        both = torch.cat([x, -x], dim=-1)  # (..., 2 * dim), mean exactly 0
        return F.layer_norm(both, (2 * dim,), gain2, None, eps)[..., :dim]
    return F.rms_norm(x.float(), (dim,), eps=eps).type_as(x) * gain2[:dim]


def linear(x: torch.Tensor, w: torch.Tensor | tuple[torch.Tensor, ...],
           transposed: bool) -> torch.Tensor:
    """x W^T. `w` is one matrix, stored (in, out) if `transposed` else (out, in), or a tuple of
    the model's own (out, in) matrices whose outputs are concatenated."""
    if isinstance(w, tuple):
        return torch.cat([linear(x, part, False) for part in w], dim=-1)  # each (out, in)
    if transposed:
        return x @ w
    if x.shape[:-1].numel() == 1:  # one token: a matrix-vector product
        return torch.mv(w, x.reshape(-1)).view(*x.shape[:-1], -1)
    return F.linear(x, w)


def rope_real(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`rope.rotate` in real arithmetic, (a + ib)(c + is) spelled out: torch.compile fuses it
    into one kernel; complex ones break the graph. x: (B, T, heads, D); cos, sin: (T, D/2)."""
    a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # even and odd dimensions
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((a * c - b * s, a * s + b * c), dim=-1).flatten(3).type_as(x)


class FastCache:
    """One generation's handle on a decoder's preallocated KV cache (n_layers, B, Hkv, L, D).

    The tensors are kept by the decoder for the next generation with the same batch size; a
    handle stays valid until the next `new_cache` of that batch size takes the storage over."""

    def __init__(self, storage: dict):
        self.storage = storage
        storage["owner"] = self

    @property
    def max_seq_len(self) -> int:
        return self.storage["k"].shape[3]


class FastDecoder:
    """A decoding view of `model`: fused weights and preallocated KV caches.

    compile: compile the single-token step (on CUDA: replay it as a CUDA graph).
    threads: CPU threads while decoding, restored after every call (default: the process's
        setting; 1 is faster on a busy shared machine).
    fuse: copy the matrices fused (and in fp32 transposed; default: below 200M parameters,
        where the copy costs little memory; larger models keep using their own matrices).
    """

    def __init__(self, model: Transformer, compile: bool = False, threads: Optional[int] = None,
                 fuse: Optional[bool] = None):
        if not isinstance(model, Transformer):
            raise ValueError(f"FastDecoder needs an lc.Transformer, got {type(model).__name__}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                    or threads < 1):
            raise ValueError(f"threads ({threads!r}) must be a positive integer or None")
        self.model = model
        p = model.params
        w = model.tok_embeddings.weight
        self.dtype, self.device = w.dtype, w.device
        self.fuse = model.num_parameters() < 200_000_000 if fuse is None else fuse
        self.transposed = self.dtype == torch.float32  # the faster layout, see the docstring
        self.threads = threads
        self.n_heads, self.n_kv_heads, self.head_dim = p.n_heads, p.kv_heads, p.head_dim
        self.eps = p.norm_eps
        self._copies: list[tuple[torch.Tensor, list[nn.Parameter]]] = []  # (copy, its sources)
        with torch.no_grad():
            self._take_weights(model)
        self._seen = self._fingerprint()
        self.freqs_cis = model.freqs_cis(self.device)  # (max_seq_len, D/2), complex64
        self.rope_cos = self.freqs_cis.real.contiguous()  # (max_seq_len, D/2)
        self.rope_sin = self.freqs_cis.imag.contiguous()
        self.compile = compile
        self._compiled = None  # the compiled step, made at the first single-token call
        self._storage: dict[int, dict] = {}  # batch size -> KV cache tensors, kept

    # ------------------------------------------------------------------ weights
    def _take_weights(self, model: Transformer) -> None:
        def matrix(*linears: nn.Linear):  # one fused copy, or the model's own matrices
            sources = [lin.weight for lin in linears]
            if not self.fuse:
                return tuple(w.detach() for w in sources)
            fused = torch.cat([w.detach() for w in sources])  # (out, in)
            return self._copy(fused.t().contiguous() if self.transposed else fused, sources)

        def gain(norm: nn.Module) -> torch.Tensor:  # the gain twice, for `rms_norm`
            return self._copy(torch.cat([norm.weight.detach()] * 2), [norm.weight] * 2)

        self.tok_embeddings = model.tok_embeddings.weight.detach()  # shared, not copied
        self.norm, self.output = gain(model.norm), matrix(model.output)
        self.layers = []
        for layer in model.layers:
            a, f = layer.attention, layer.feed_forward
            self.layers.append(dict(
                attention_norm=gain(layer.attention_norm), wqkv=matrix(a.wq, a.wk, a.wv),
                wo=matrix(a.wo), ffn_norm=gain(layer.ffn_norm), w13=matrix(f.w1, f.w3),
                w2=matrix(f.w2)))

    def _copy(self, copy: torch.Tensor, sources: list[nn.Parameter]) -> torch.Tensor:
        self._copies.append((copy, sources))
        return copy

    def refresh(self) -> None:
        """Copy the model's current weights into the decoder's copies, in place (a CUDA graph
        stays valid; the CPU's compiled step is compiled again). Called by `new_cache`."""
        with torch.no_grad():  # (a `with`, not a decorator: mutation testing reaches the body)
            for copy, sources in self._copies:
                start = 0
                for src in sources:  # each source is a slice of the copy's out dimension
                    if copy.dim() == 2 and self.transposed:
                        copy.narrow(1, start, src.shape[0]).copy_(src.detach().t())
                    else:
                        copy.narrow(0, start, src.shape[0]).copy_(src.detach())
                    start += src.shape[0]
        self._seen = self._fingerprint()
        if self.device.type == "cpu" and self.compiled:
            self._compiled = None
            for storage in self._storage.values():
                storage["step"] = None

    def _fingerprint(self) -> list[tuple[int, torch.Tensor]]:
        """Where each weight lives and 64 evenly spaced values of it: a cheap test of change
        (an optimizer step or a load changes them all)."""
        with torch.no_grad():
            return [(p.data_ptr(), p.detach().reshape(-1)[:: max(1, p.numel() // 64)].clone())
                    for p in self.model.parameters()]

    def _check_weights(self) -> None:
        w = self.model.tok_embeddings.weight
        if (w.dtype, w.device) != (self.dtype, self.device):
            raise ValueError(f"the model is now {w.dtype} on {w.device}, but this FastDecoder "
                             f"was built for {self.dtype} on {self.device}: build a new one")
        now = self._fingerprint()
        if [ptr for ptr, _ in now] != [ptr for ptr, _ in self._seen]:
            raise ValueError("the model's weights are new tensors since this FastDecoder was "
                             "built (not the same weights updated in place): build a new one")
        if not all(torch.equal(a, b) for (_, a), (_, b) in zip(now, self._seen)):
            self.refresh()  # new values: copy them in (unfused, only the norms' gains are copies)

    # ------------------------------------------------------------------ the model's calls
    def new_cache(self, batch_size: int, max_seq_len: Optional[int] = None) -> FastCache:
        """A KV cache for one generation (reusing this batch size's storage), after checking
        the weights. Positions need no zeroing: each is written before it is read."""
        p = self.model.params
        max_seq_len = p.max_seq_len if max_seq_len is None else max_seq_len
        if batch_size > p.max_batch_size:
            raise ValueError(f"batch size ({batch_size}) exceeds max_batch_size "
                             f"({p.max_batch_size})")
        if max_seq_len > p.max_seq_len:
            raise ValueError(f"max_seq_len ({max_seq_len}) exceeds the model's context "
                             f"({p.max_seq_len})")
        self._check_weights()
        storage = self._storage.get(batch_size)
        if storage is None or storage["k"].shape[3] < max_seq_len:
            # room for the next generations too: a power of two, within the model's context
            length = min(p.max_seq_len, max(256, 1 << (max_seq_len - 1).bit_length()))
            shape = (p.n_layers, batch_size, self.n_kv_heads, length, self.head_dim)
            storage = self._storage[batch_size] = dict(
                k=torch.zeros(shape, dtype=self.dtype, device=self.device),
                v=torch.zeros(shape, dtype=self.dtype, device=self.device),
                positions=torch.arange(length, device=self.device),
                pos=torch.zeros((), dtype=torch.long, device=self.device), step=None,
                token=torch.zeros(batch_size, dtype=torch.long, device=self.device))
            storage.update(ks=list(storage["k"]), vs=list(storage["v"]))  # each layer's view
        return FastCache(storage)

    def __call__(self, tokens: torch.Tensor, start_pos: int, cache: FastCache) -> torch.Tensor:
        """tokens (B, T) at positions start_pos.. -> float32 logits of the LAST position only,
        (B, 1, V): what generation reads, at the cost of one head product instead of T."""
        if not isinstance(cache, FastCache) or cache.storage.get("owner") is not cache:
            raise ValueError("cache must come from this decoder's latest new_cache() for this "
                             "batch size (one generation at a time per FastDecoder)")
        B, T = tokens.shape
        end = start_pos + T
        if end > cache.max_seq_len:
            raise ValueError(f"positions up to {end} exceed the cache ({cache.max_seq_len})")
        if B != cache.storage["k"].shape[1]:
            raise ValueError(f"tokens hold {B} rows, the cache {cache.storage['k'].shape[1]}")
        threads = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                if self.compile and T == 1:
                    return self._step(tokens[:, 0], start_pos, cache.storage)[:, None]
                return self.forward(tokens, start_pos, cache.storage["ks"],
                                    cache.storage["vs"])[:, None]
        finally:
            torch.set_num_threads(threads)

    # ------------------------------------------------------------------ any number of tokens
    def forward(self, tokens: torch.Tensor, start_pos: int, cache_k: list[torch.Tensor],
                cache_v: list[torch.Tensor]) -> torch.Tensor:
        """tokens (B, T) at positions start_pos.. -> float32 logits of the last one (B, V).
        cache_k, cache_v: each layer's (B, Hkv, L, D) cache, views made once per cache."""
        T = tokens.shape[1]
        end = start_pos + T
        h = F.embedding(tokens, self.tok_embeddings)  # (B, T, dim)
        freqs_cis = self.freqs_cis[start_pos:end]  # (T, D/2)
        mask = None  # one token, or a prompt from position 0 (is_causal below)
        if T > 1 and start_pos > 0:  # a chunk after a cached prefix: see the prefix, not ahead
            q_pos = torch.arange(start_pos, end, device=tokens.device)
            mask = torch.arange(end, device=tokens.device)[None, :] <= q_pos[:, None]  # (T, end)
        for i, lw in enumerate(self.layers):
            q, k, v = self._qkv(h, lw, lambda x: rotate(x, freqs_cis))  # (B, heads, T, D)
            cache_k[i][:, :, start_pos:end] = k
            cache_v[i][:, :, start_pos:end] = v
            keys, values = cache_k[i][:, :, :end], cache_v[i][:, :, :end]
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask,
                                                 is_causal=T > 1 and start_pos == 0,
                                                 enable_gqa=True)  # (B, H, T, D)
            h = self._block_rest(h, out, lw)
        return self._head(h[:, -1])

    def _qkv(self, h, lw, rope):
        B, T, _ = h.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        x = rms_norm(h, lw["attention_norm"], self.eps)  # (B, T, dim)
        qkv = self.linear(x, lw["wqkv"])  # (B, T, (H + 2 Hkv) D)
        qk = rope(qkv[..., : (H + Hkv) * D].view(B, T, H + Hkv, D))  # q and k at once
        v = qkv[..., (H + Hkv) * D:].view(B, T, Hkv, D)
        q, k = qk[:, :, :H], qk[:, :, H:]
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)

    def _block_rest(self, h, attn, lw):
        B, _, T, _ = attn.shape
        h = h + self.linear(attn.transpose(1, 2).reshape(B, T, -1), lw["wo"])  # (B, T, dim)
        gate, up = self.linear(rms_norm(h, lw["ffn_norm"], self.eps), lw["w13"]).chunk(2, dim=-1)
        return h + self.linear(F.silu(gate) * up, lw["w2"])  # (B, T, dim)

    def _head(self, h_last: torch.Tensor) -> torch.Tensor:
        return self.linear(rms_norm(h_last, self.norm, self.eps), self.output).float()  # (B, V)

    def linear(self, x: torch.Tensor, w) -> torch.Tensor:
        return linear(x, w, self.transposed)

    # ------------------------------------------------------------------ one token, static shapes
    def static_step(self, token: torch.Tensor, pos: torch.Tensor, cache_k: list[torch.Tensor],
                    cache_v: list[torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
        """One token per row: token (B,) at position `pos` (a 0-d long tensor on the device),
        attending over the whole cache with the future masked. Shapes never change from step
        to step, so the step can be compiled or recorded as a CUDA graph."""
        h = F.embedding(token[:, None], self.tok_embeddings)  # (B, 1, dim)
        cos, sin = self.rope_cos[pos[None]], self.rope_sin[pos[None]]  # (1, D/2): a gather
        visible = (positions <= pos)[None, :]  # (1, L): the past and now
        for i, lw in enumerate(self.layers):
            q, k, v = self._qkv(h, lw, lambda x: rope_real(x, cos, sin))  # (B, heads, 1, D)
            cache_k[i].index_copy_(2, pos[None], k)
            cache_v[i].index_copy_(2, pos[None], v)
            out = F.scaled_dot_product_attention(q, cache_k[i], cache_v[i],
                                                 attn_mask=visible, enable_gqa=True)
            h = self._block_rest(h, out, lw)
        return self._head(h[:, -1])

    def _step(self, token: torch.Tensor, start_pos: int, storage: dict) -> torch.Tensor:
        storage["pos"].fill_(start_pos)
        storage["token"].copy_(token)  # one tensor, one stride: no recompile per generation length
        if storage["step"] is None:  # this batch size's first single-token step
            if self._compiled is None:  # on the CPU: cpu_compile.py
                self._compiled = compile_cpu_step(self) if self.device.type == "cpu" else \
                    torch.compile(self.static_step, fullgraph=True, dynamic=False)
            step = self._compiled_or_eager
            if self.device.type == "cuda":
                step = CUDAGraphStep(step, lambda fn: storage.update(step=fn))
            storage["step"] = step
        args = (storage["ks"], storage["vs"], storage["positions"])
        return storage["step"](storage["token"], storage["pos"], *args)

    def _compiled_or_eager(self, *args) -> torch.Tensor:
        if self._compiled != self.static_step:  # (a bound method is a new object each time)
            try:
                return self._compiled(*args)
            except Exception as e:  # an unsupported platform or backend: run eagerly instead
                fallback_warning("torch.compile of the decode step", e, "decoding eagerly")
                self._compiled = self.static_step
        return self.static_step(*args)

    @property
    def compiled(self) -> bool:
        """True while the compiled step is in use (not a fallback to the eager one)."""
        return self.compile and self._compiled not in (None, self.static_step)
