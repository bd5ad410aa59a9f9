"""Checkers for the notebooks' exercises: pass your function, get a verdict.

Each `check_*` calls the learner's code on random inputs, compares with the package (and,
where there is one, an independent reference such as `torch.nn.RMSNorm`), prints a one-line
verdict and returns True. A wrong answer raises AssertionError with what differed, so that a
notebook cell stops right there.
"""

from __future__ import annotations

from typing import Callable

import torch

from . import attention, config, ffn, rope
from .generate import filter_top_p


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
        want = filter_top_p(probs, p)
        got = got / got.sum(-1, keepdim=True)
        _close(f"top_p(p={p})", got, want / want.sum(-1, keepdim=True))
    return _ok("top-p filter")


def check_permute_qk(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> bool:
    """fn(w, n_heads) -> wq/wk with rows reordered from Meta's interleaved pairs to Hugging
    Face's rotate-half pairs (row 2j -> j, row 2j+1 -> j + head_dim/2, inside each head)."""
    for n_heads, head_dim, dim in ((4, 16, 32), (2, 8, 12), (1, 4, 6)):
        w = torch.randn(n_heads * head_dim, dim)
        got = fn(w, n_heads)
        if (head_dim > 4 and isinstance(got, torch.Tensor) and got.shape == w.shape
                and torch.equal(got, rope.permute_qk_hf_to_meta(w, n_heads))):
            raise AssertionError("this is the inverse permutation (Hugging Face -> Meta); "
                                 "the task is Meta -> Hugging Face")
        _close(f"permute(n_heads={n_heads}, head_dim={head_dim})", got,
               rope.permute_qk_meta_to_hf(w, n_heads), atol=0, rtol=0)
    # what the permutation is for: rotate-half RoPE on the permuted weights gives Meta's scores
    n_heads, head_dim, dim, T = 2, 8, 16, 5
    x = torch.randn(1, T, dim)
    wq, wk = torch.randn(n_heads * head_dim, dim), torch.randn(n_heads * head_dim, dim)

    def project(w: torch.Tensor) -> torch.Tensor:
        return (x @ w.T).view(1, T, n_heads, head_dim)

    q, k = rope.apply_rotary_emb(project(wq), project(wk),
                                 rope.precompute_freqs_cis(head_dim, T, 10000.0))
    cos, sin = rope.precompute_cos_sin(head_dim, T, 10000.0)
    q_hf, k_hf = rope.apply_rotary_emb_rotate_half(project(fn(wq, n_heads)),
                                                   project(fn(wk, n_heads)), cos, sin)
    _close("attention scores (rotate-half on your weights vs Meta's)",
           torch.einsum("bthd,bshd->bhts", q_hf, k_hf), torch.einsum("bthd,bshd->bhts", q, k),
           atol=1e-4, rtol=1e-4)
    return _ok("q/k permutation")


def check_layernorm(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float],
                                 torch.Tensor]) -> bool:
    """fn(x, weight, bias, eps) -> LayerNorm over the last dimension; compared with
    torch.nn.LayerNorm (biased variance, eps inside the square root)."""
    x = torch.randn(4, 10, 32) * 3 + 2.0
    ref = torch.nn.LayerNorm(32, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(torch.rand(32) + 0.5)
        ref.bias.copy_(torch.randn(32))
        _close("layernorm", fn(x, ref.weight.detach(), ref.bias.detach(), 1e-5), ref(x))
        # a row of identical values has zero variance: eps must keep the output finite
        flat = torch.full((2, 32), 7.0)
        _close("layernorm of a constant row", fn(flat, ref.weight.detach(), ref.bias.detach(), 1e-5),
               ref(flat))
    return _ok("LayerNorm")


def check_block(fn: Callable[..., torch.Tensor]) -> bool:
    """fn(block, x, freqs_cis, mask) -> the output of a TransformerBlock, computed from its
    submodules (attention_norm, attention, ffn_norm, feed_forward); compared with
    block(x, 0, freqs_cis, mask)."""
    from .model import TransformerBlock
    args = config.ModelArgs(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=16,
                            multiple_of=16, ffn_dim_multiplier=None, rope_theta=10000.0,
                            max_seq_len=16)
    block = TransformerBlock(0, args)
    T = 7
    with torch.no_grad():
        for p in block.parameters():  # norm gains away from 1, so that a skipped norm shows
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.dim() == 1 else 0.0))
        x = torch.randn(2, T, args.dim)
        freqs_cis = rope.precompute_freqs_cis(args.head_dim, T, args.rope_theta)
        mask = attention.causal_mask(T)
        want = block(x, 0, freqs_cis, mask)
        got = fn(block, x, freqs_cis, mask)

        def attn(t):
            return block.attention(t, 0, freqs_cis, mask)

        h = x + attn(block.attention_norm(x))
        h_post = block.attention_norm(x + attn(x))
        wrong = {  # the usual slips, named when the answer matches one of them
            "post-norm (the original Transformer's norm after the residual add)":
                block.ffn_norm(h_post + block.feed_forward(h_post)),
            "no residual connections":
                block.feed_forward(block.ffn_norm(attn(block.attention_norm(x)))),
            "the feed-forward branch reading x instead of h":
                h + block.feed_forward(block.ffn_norm(x)),
            "a missing residual around the feed-forward branch":
                block.feed_forward(block.ffn_norm(h)),
        }
        if isinstance(got, torch.Tensor) and got.shape == want.shape:
            for what, value in wrong.items():
                if torch.allclose(got.to(value.dtype), value, atol=1e-5, rtol=1e-5):
                    raise AssertionError(
                        f"block: your output matches {what}. Llama's block is pre-norm: "
                        "h = x + attention(attention_norm(x)); out = h + feed_forward(ffn_norm(h))")
        _close("block", got, want)
    return _ok("TransformerBlock")


def check_greedy(fn: Callable[..., list]) -> bool:
    """fn(model, prompt, max_new_tokens) -> the new token ids of greedy decoding without a cache
    (a full forward per step, argmax of the last position); compared with
    `generate(model, [prompt], max_new_tokens, temperature=0)`."""
    from .generate import generate as reference_generate  # the function: `generate` here is shadowed
    from .model import Transformer
    model = Transformer(config.get_preset("tiny")).eval()
    with torch.no_grad():
        for p in model.parameters():  # larger than the init, so that each argmax is clear-cut
            if p.dim() > 1:
                p.normal_(std=0.1)
    for prompt, n in (([1, 2, 3], 10), ([5], 1), ([7, 0, 7, 0, 7, 42], 15)):
        want = reference_generate(model, [prompt], n, temperature=0)[0]
        got = fn(model, list(prompt), n)
        if isinstance(got, torch.Tensor):
            got = got.flatten().tolist()
        if not isinstance(got, (list, tuple)):
            raise AssertionError(f"prompt {prompt}: expected a list of token ids, got "
                                 f"{type(got).__name__}")
        got = [int(t) for t in got]
        if got != want:
            hint = ""
            if got == list(prompt) + want:
                hint = " (return only the new tokens, not the prompt)"
            elif got[:1] == want[:1]:
                hint = " (the first token is right: is each new token appended before the next step?)"
            raise AssertionError(f"prompt {prompt}, {n} new tokens: got {got}, expected {want}{hint}")
    return _ok("greedy decoding")
