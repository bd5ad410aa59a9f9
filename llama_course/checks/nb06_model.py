"""Checkers for the exercises of notebook 06 (the full model)."""

from __future__ import annotations

from typing import Callable

import torch

from .. import attention, config, rope

from .common import close, ok


def check_block(fn: Callable[..., torch.Tensor]) -> bool:
    """fn(block, x, freqs_cis, mask) -> the output of a TransformerBlock, computed from its
    submodules (attention_norm, attention, ffn_norm, feed_forward); compared with
    block(x, 0, freqs_cis, mask)."""
    from ..model import TransformerBlock
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
        close("block", got, want)
    return ok("TransformerBlock")


def check_greedy(fn: Callable[..., list]) -> bool:
    """fn(model, prompt, max_new_tokens) -> the new token ids of greedy decoding without a cache
    (a full forward per step, argmax of the last position); compared with
    `generate(model, [prompt], max_new_tokens, temperature=0)`."""
    from ..generate import generate as reference_generate  # the function: `generate` here is shadowed
    from ..model import Transformer
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
    return ok("greedy decoding")
