"""Checkers for the notebooks' exercises: pass your function, get a verdict.

Each `check_*` calls the learner's code on random inputs, compares with the package (and,
where there is one, an independent reference such as `torch.nn.RMSNorm`), prints a one-line
verdict and returns True. A wrong answer raises AssertionError with what differed, so that a
notebook cell stops right there.
"""

from __future__ import annotations

from typing import Callable

import torch

from . import attention, config, ffn, generate, rope


def _close(name: str, got, expected, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{name}: expected a tensor, got {type(got).__name__}")
    if got.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    try:
        torch.testing.assert_close(got.to(expected.dtype), expected, atol=atol, rtol=rtol)
    except AssertionError as e:
        raise AssertionError(f"{name}: values differ from the reference\n{e}") from None


def _ok(what: str) -> bool:
    print(f"✓ {what}: correct")
    return True


def check_num_parameters(fn: Callable[[config.ModelArgs], int]) -> bool:
    """fn(args) -> total parameter count; checked on the real Llama 3 presets."""
    for name in ("llama3-8b", "llama3.2-1b", "llama3.2-3b", "tiny"):
        args = config.get_preset(name)
        got, want = fn(args), config.num_parameters(args)
        if got != want:
            raise AssertionError(f"{name}: got {got:,} parameters, expected {want:,}"
                                 + (" (tied embeddings?)" if args.tie_word_embeddings else ""))
    return _ok("parameter count")


def check_kv_cache_bytes(fn: Callable[[config.ModelArgs, int, int, int], float]) -> bool:
    """fn(args, seq_len, batch_size, bytes_per_element) -> bytes of K and V for all layers."""
    for name in ("llama3-8b", "llama3.2-1b"):
        args = config.get_preset(name)
        for seq_len, batch, nbytes in ((1, 1, 2), (8192, 4, 2), (1000, 1, 4)):
            got = fn(args, seq_len, batch, nbytes)
            want = config.kv_cache_bytes_per_token(args, "fp32") / 4 * nbytes * seq_len * batch
            if got != want:
                raise AssertionError(f"{name}, seq_len={seq_len}, batch={batch}, "
                                     f"{nbytes} bytes: got {got:,}, expected {want:,}")
    return _ok("KV-cache size")


def check_rmsnorm(fn: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]) -> bool:
    """fn(x, weight, eps) -> normalised x; compared with torch.nn.RMSNorm."""
    x = torch.randn(4, 10, 32) * 3 + 0.5
    ref = torch.nn.RMSNorm(32, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(torch.rand(32) + 0.5)
        _close("rmsnorm", fn(x, ref.weight.detach(), 1e-5), ref(x))
    return _ok("RMSNorm")


def check_rope(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> bool:
    """fn(x, freqs_cis) -> x rotated, x: (B, T, H, D) in Meta's interleaved layout."""
    x = torch.randn(2, 12, 3, 16)
    freqs_cis = rope.precompute_freqs_cis(16, 12, 10000.0)
    want, _ = rope.apply_rotary_emb(x, x, freqs_cis)
    _close("rope", fn(x, freqs_cis), want)
    return _ok("rotary embedding")


def check_causal_mask(fn: Callable[[int, int], torch.Tensor]) -> bool:
    """fn(seqlen, start_pos) -> bool (seqlen, start_pos + seqlen), True where attending is allowed."""
    for T, start in ((1, 0), (5, 0), (3, 4)):
        got, want = fn(T, start), attention.causal_mask(T, start)
        if got.dtype != torch.bool or not torch.equal(got, want):
            raise AssertionError(f"seqlen={T}, start_pos={start}: got\n{got}\nexpected\n{want}")
    return _ok("causal mask")


def check_repeat_kv(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> bool:
    """fn(x, n_rep) with x (B, n_kv_heads, S, D) -> (B, n_kv_heads * n_rep, S, D)."""
    x = torch.randn(2, 3, 5, 4)
    for n_rep in (1, 2, 4):
        _close(f"repeat_kv(n_rep={n_rep})", fn(x, n_rep), torch.repeat_interleave(x, n_rep, dim=1))
    return _ok("repeat_kv")


def check_ffn_hidden_dim(fn: Callable[[int, int, float | None], int]) -> bool:
    """fn(dim, multiple_of, ffn_dim_multiplier) -> the SwiGLU width (14336 for Llama 3 8B)."""
    for case in ((4096, 1024, 1.3), (2048, 256, 1.5), (3072, 256, 1.0), (4096, 256, None),
                 (128, 32, None), (100, 7, 1.1)):
        got, want = fn(*case), ffn.ffn_hidden_dim(*case)
        if got != want:
            raise AssertionError(f"dim, multiple_of, ffn_dim_multiplier = {case}: "
                                 f"got {got}, expected {want}")
    return _ok("FFN hidden size")


def check_swiglu(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
                              torch.Tensor]) -> bool:
    """fn(x, w1, w2, w3) -> SwiGLU output, with weights in nn.Linear's (out, in) layout."""
    module = ffn.FeedForward(16, 40)
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        _close("swiglu", fn(x, module.w1.weight, module.w2.weight, module.w3.weight), module(x))
    return _ok("SwiGLU")


def check_targets(fn: Callable[[torch.Tensor, torch.Tensor, int],
                               tuple[torch.Tensor, torch.Tensor]]) -> bool:
    """fn(data, ix, block_size) -> (x, y): windows starting at ix and the next tokens."""
    data = torch.arange(100)
    ix = torch.tensor([0, 7, 90])
    x, y = fn(data, ix, 8)
    want_x = torch.stack([data[i:i + 8] for i in ix])
    if not torch.equal(x, want_x):
        raise AssertionError(f"inputs are wrong: got\n{x}\nexpected\n{want_x}")
    if not torch.equal(y, want_x + 1):
        raise AssertionError(f"targets must be the inputs shifted by exactly one: got\n{y}\n"
                             f"expected\n{want_x + 1}")
    return _ok("next-token targets")


def check_top_p(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> bool:
    """fn(probs, p) -> probabilities with everything outside the nucleus zeroed (not renormalised
    or renormalised: both accepted)."""
    probs = torch.softmax(torch.randn(4, 50) * 2, dim=-1)
    for p in (0.1, 0.5, 0.9, 1.0):
        got = fn(probs, p)
        want = generate.filter_top_p(probs, p)
        got = got / got.sum(-1, keepdim=True)
        _close(f"top_p(p={p})", got, want / want.sum(-1, keepdim=True))
    return _ok("top-p filter")
