"""Checkers for the exercises of notebook 06 (the full model)."""

from __future__ import annotations

from typing import Callable

import torch

from .. import attention, config, rope

from .common import close, ok


def _test_block():
    """A small TransformerBlock with norm gains away from 1, so that a skipped norm shows."""
    from ..model import TransformerBlock
    args = config.ModelArgs(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=16,
                            multiple_of=16, ffn_dim_multiplier=None, rope_theta=10000.0,
                            max_seq_len=16)
    torch.manual_seed(0)
    block = TransformerBlock(0, args).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.dim() == 1 else 0.0))
    T = 7
    freqs_cis = rope.precompute_freqs_cis(args.head_dim, T, args.rope_theta)
    return block, torch.randn(2, T, args.dim), freqs_cis, attention.causal_mask(T)


def check_parallel_block(fn: Callable[..., torch.Tensor]) -> bool:
    """fn(block, x, freqs_cis, mask) -> the block's submodules arranged in parallel (GPT-J,
    GPT-NeoX, PaLM): both branches read the block's input,
    out = x + attention(attention_norm(x)) + feed_forward(ffn_norm(x))."""
    block, x, freqs_cis, mask = _test_block()
    with torch.no_grad():
        got = fn(block, x, freqs_cis, mask)

        def attn(t):
            return block.attention(t, 0, freqs_cis, mask)

        a = attn(block.attention_norm(x))
        want = x + a + block.feed_forward(block.ffn_norm(x))
        h = x + a
        wrong = {  # the usual slips, named when the answer matches one of them
            "Llama's sequential block (the FFN reads h = x + attention(...)); in the parallel "
            "block both branches read x": h + block.feed_forward(block.ffn_norm(h)),
            "both branches reading attention_norm(x) (GPT-J's single shared norm); here each "
            "branch has its own: ffn_norm for the feed-forward":
                h + block.feed_forward(block.attention_norm(x)),
            "no residual: x itself is missing from the sum":
                a + block.feed_forward(block.ffn_norm(x)),
            "x added twice (x + attention(...) + x + feed_forward(...)): one residual, two branches":
                x + want,
            "the feed-forward branch reading x without its norm":
                h + block.feed_forward(x),
        }
        if isinstance(got, torch.Tensor) and got.shape == want.shape:
            for what, value in wrong.items():
                if torch.allclose(got.to(value.dtype), value, atol=1e-5, rtol=1e-5):
                    raise AssertionError(f"parallel block: your output matches {what}")
        close("parallel block", got, want)
    return ok("parallel TransformerBlock")


def check_top_k(fn: Callable[[torch.Tensor, int, float], torch.Tensor]) -> bool:
    """fn(logits (B, V), k, temperature) -> (B, V) probabilities: softmax(logits / temperature)
    restricted to the k likeliest tokens and renormalised; compared with
    `lc.next_token_probs(logits, temperature, top_p=1.0, top_k=k)`."""
    from ..generate import next_token_probs
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 20, generator=gen) * 2  # (B, V), no ties
    for k, temperature in ((5, 1.0), (3, 0.5), (1, 0.8), (20, 1.3), (8, 2.0)):
        where = f"k={k}, temperature={temperature}"
        want = next_token_probs(logits, temperature, top_p=1.0, top_k=k)
        got = fn(logits.clone(), k, temperature)
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            close(f"top-k ({where})", got, want)
        if torch.isinf(got).any() or (got < 0).any():
            raise AssertionError(f"{where}: your output has negative or infinite entries: return "
                                 "probabilities (softmax after filtering), not filtered logits")
        kept = (got > 0).sum(-1)
        if (kept != k).any():
            raise AssertionError(f"{where}: your output keeps {kept.tolist()} tokens per row, "
                                 f"expected {k}")
        probs = torch.softmax(logits / temperature, -1)
        slips = {
            "the k LEAST likely tokens kept (topk(..., largest=False), or an ascending sort)":
                _keep(probs, -probs, k),
            "no renormalisation: the kept probabilities must sum to 1":
                probs * (want > 0),
            "temperature ignored": next_token_probs(logits, 1.0, top_p=1.0, top_k=k),
            "logits multiplied by the temperature instead of divided":
                next_token_probs(logits * temperature * temperature, temperature, top_p=1.0,
                                 top_k=k),
        }
        for what, value in slips.items():
            if not torch.allclose(value, want, atol=1e-6) and torch.allclose(got, value, atol=1e-6):
                raise AssertionError(f"{where}: your output matches {what}")
        close(f"top-k ({where})", got, want, atol=1e-6, rtol=1e-5)
    return ok("top-k sampling distribution")


def _keep(probs: torch.Tensor, score: torch.Tensor, k: int) -> torch.Tensor:
    idx = score.topk(k, dim=-1).indices  # (B, k)
    kept = torch.zeros_like(probs).scatter(-1, idx, probs.gather(-1, idx))
    return kept / kept.sum(-1, keepdim=True)


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
