"""Autoregressive generation: sampling rules and the decoding loop with a KV cache.

Decoding predicts one token, appends it, and predicts again. Without a cache every step
re-runs the whole sequence through the model (quadratic work); with the KV cache of notebook 04
the prompt is processed once (prefill) and each later step feeds only the newest token
(decode), reading the keys and values of the past from the cache. Both run the model itself:
`model(tokens)` without a cache, `model(tokens, start_pos, cache)` with one from
`model.new_cache`. A faster decoder (`llama_course.fast.FastDecoder`) can be passed as
`decoder=`: it answers the same calls with the same numbers, and generation is otherwise
unchanged. Sampling stays on the device.

Prompts of different lengths are handled the way Meta's reference code does it: all sequences
advance together from the shortest prompt's end, and a row whose prompt is longer simply
copies its next prompt token instead of the sampled one. No padding is ever attended to, so
every row gets exactly the logits it would get alone.

Past the model's context (`max_seq_len`) the window slides: the last half of the context is
processed again from position 0 and decoding continues (the cache path and the no-cache path
slide identically, so they produce the same tokens).
"""

from __future__ import annotations

import operator
from typing import Iterator, Optional, Protocol, Sequence

import torch

from .model import Transformer, eval_mode


# ---------------------------------------------------------------------------- sampling
def next_token_probs(logits: torch.Tensor, temperature: float = 0.6, top_p: float = 1.0,
                     top_k: Optional[int] = None) -> torch.Tensor:
    """The distribution the next token is drawn from: (B, V) logits -> (B, V) probabilities.

    Temperature divides the logits (< 1 sharpens, > 1 flattens); top-k keeps the k likeliest
    tokens; top-p (nucleus) keeps the smallest set whose probability reaches p. Each filter
    renormalises what it keeps.
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (B, V)
    if top_k is not None and top_k < probs.shape[-1]:
        kth = torch.topk(probs, top_k, dim=-1).values[..., -1:]  # (B, 1)
        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    if top_p < 1.0:
        probs = filter_top_p(probs, top_p)
    return probs / probs.sum(dim=-1, keepdim=True)


def filter_top_p(probs: torch.Tensor, p: float) -> torch.Tensor:
    """Zero every token outside the nucleus: sorted by probability, a token stays if the mass
    before it is below p (so the most likely token always stays)."""
    probs_sort, probs_idx = torch.sort(probs, dim=-1, descending=True)  # (B, V)
    mass_before = torch.cumsum(probs_sort, dim=-1) - probs_sort  # (B, V)
    probs_sort = torch.where(mass_before < p, probs_sort, torch.zeros_like(probs_sort))
    return torch.zeros_like(probs).scatter(-1, probs_idx, probs_sort)  # back to vocab order


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, top_k: Optional[int],
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids, on the logits' device. temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = next_token_probs(logits, temperature, top_p, top_k)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)


# ---------------------------------------------------------------------------- checks
def _check_args(model: Transformer, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                temperature: float, top_p: float, top_k: Optional[int]) -> list[list[int]]:
    """Validate everything up front; return the prompts as plain lists of Python ints."""
    if not isinstance(model, Transformer):
        raise ValueError(f"model must be an lc.Transformer, got {type(model).__name__}")
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a non-empty list of token-id lists")
    if not isinstance(prompts[0], (list, tuple, torch.Tensor)):
        raise ValueError("prompts must be a list of token-id lists: wrap a single prompt as [ids]")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens ({max_new_tokens!r}) must be a non-negative integer")
    if not temperature >= 0:
        raise ValueError(f"temperature ({temperature}) must be >= 0 (0 means greedy)")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p ({top_p}) must be in (0, 1]")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k ({top_k!r}) must be a positive integer or None")
    p = model.params
    if len(prompts) > p.max_batch_size:
        raise ValueError(f"{len(prompts)} prompts exceed max_batch_size ({p.max_batch_size})")
    out = []
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty: give at least one token (e.g. BOS)")
        if len(prompt) > p.max_seq_len:
            raise ValueError(f"prompt {i} has {len(prompt)} tokens, more than the model's "
                             f"context max_seq_len ({p.max_seq_len})")
        try:
            ids = [operator.index(t) for t in prompt]
        except TypeError:
            raise ValueError(f"prompt {i} holds a non-integer token") from None
        bad = [t for t in ids if not 0 <= t < p.vocab_size]
        if bad:
            raise ValueError(f"prompt {i} holds token {bad[0]}, not an id in "
                             f"0..{p.vocab_size - 1}")
        out.append(ids)
    return out


# ---------------------------------------------------------------------------- decoding loop
class Decoder(Protocol):
    """What `decoder=` must provide: the model's own cached calls (a `Transformer` is one)."""

    def new_cache(self, batch_size: int, max_seq_len: Optional[int] = None) -> object: ...

    def __call__(self, tokens: torch.Tensor, start_pos: int, cache) -> torch.Tensor: ...


def generate_steps(model: Transformer, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                   temperature: float = 0.6, top_p: float = 0.9, top_k: Optional[int] = None,
                   eos_id: Optional[int] = None, use_cache: bool = True,
                   generator: Optional[torch.Generator] = None,
                   decoder: Optional[Decoder] = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (position, tokens (B,)) for every position after the shortest prompt.

    Tokens stay on the model's device: nothing here waits for the device except the EOS test.
    The model predicts in eval mode (no dropout), whatever mode it is in.
    """
    prompts = _check_args(model, prompts, max_new_tokens, temperature, top_p, top_k)
    if decoder is not None and not use_cache:
        raise ValueError("decoder= decodes with a KV cache: leave use_cache=True")
    if getattr(decoder, "model", model) is not model:
        raise ValueError("decoder was built for another model: build one for this model")
    yield from _steps_without_autograd(model, prompts, max_new_tokens, temperature, top_p,
                                       top_k, eos_id, use_cache, generator, decoder or model)


@torch.inference_mode()
def _steps_without_autograd(model, *args):
    """The loop in inference mode (no autograd graph) and eval mode. torch's decorator enters
    inference mode at each resume and leaves it at each yield, so the caller's own code between
    tokens runs in its usual mode; a `with` block would hold it across the yields."""
    with eval_mode(model):
        yield from _generate_steps(model, *args)


def _generate_steps(model, prompts, max_new_tokens, temperature, top_p, top_k, eos_id,
                    use_cache, generator, decoder):
    device = model.tok_embeddings.weight.device
    B = len(prompts)
    lens = [len(p) for p in prompts]
    total_len = max(lens) + max_new_tokens
    tokens = torch.zeros((B, total_len), dtype=torch.long, device=device)  # (B, total_len)
    in_prompt = torch.zeros((B, total_len), dtype=torch.bool, device=device)
    for b, prompt in enumerate(prompts):
        tokens[b, : lens[b]] = torch.tensor(prompt, dtype=torch.long)
        in_prompt[b, : lens[b]] = True
    ctx = model.params.max_seq_len
    keep = max(1, ctx // 2)  # tokens kept when the window slides
    cache = decoder.new_cache(B, min(ctx, total_len)) if use_cache else None
    done = torch.zeros(B, dtype=torch.bool, device=device)
    window_start, prev_pos = 0, 0  # first token of the context, first token not yet in cache
    for cur_pos in range(min(lens), total_len):
        if cur_pos - window_start > ctx:  # context full: slide the window, refill the cache
            window_start = prev_pos = cur_pos - keep
        if use_cache:  # the new tokens only: the prompt (prefill), then one token a step
            logits = decoder(tokens[:, prev_pos:cur_pos], prev_pos - window_start, cache)
        else:  # the whole context again, every step
            logits = model(tokens[:, window_start:cur_pos])
        next_token = sample_next(logits[:, -1], temperature, top_p, top_k, generator)  # (B,)
        if cur_pos < max(lens):  # some rows are still reading their prompt
            next_token = torch.where(in_prompt[:, cur_pos], tokens[:, cur_pos], next_token)
        tokens[:, cur_pos] = next_token
        prev_pos = cur_pos
        yield cur_pos, next_token
        if eos_id is not None:
            done |= ~in_prompt[:, cur_pos] & (next_token == eos_id)
            if bool(done.all()):  # the one host-device sync per step, only when asked to stop
                return


def _make_generator(model: Transformer, seed: Optional[int]) -> Optional[torch.Generator]:
    if not isinstance(model, Transformer):
        raise ValueError(f"model must be an lc.Transformer, got {type(model).__name__}")
    device = model.tok_embeddings.weight.device
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)


def generate(model: Transformer, prompts: Sequence[Sequence[int]], max_new_tokens: int,
             temperature: float = 0.6, top_p: float = 0.9, top_k: Optional[int] = None,
             eos_id: Optional[int] = None, use_cache: bool = True, seed: Optional[int] = None,
             decoder: Optional[Decoder] = None, compile: bool = False) -> list[list[int]]:
    """Continue each prompt by up to `max_new_tokens` tokens; return only the new tokens.

    temperature=0 is greedy. A sequence stops at `eos_id` (which is not included), like
    Meta's reference `generate`. `seed` makes sampling reproducible. `use_cache=False` re-runs
    the whole context every step (the slow way the KV cache exists to avoid).
    `decoder=lc.FastDecoder(model)` decodes through fused weights (same tokens, faster); build
    it once and pass it to every call. (`compile=True` of earlier versions is now
    `lc.FastDecoder(model, compile=True)`.)
    """
    if compile:
        raise ValueError("generate(compile=True) is gone: pass decoder=lc.FastDecoder(model, "
                         "compile=True), built once and reused")
    generator = _make_generator(model, seed)
    steps = list(generate_steps(model, prompts, max_new_tokens, temperature, top_p, top_k,
                                eos_id, use_cache, generator, decoder))
    if not steps:
        return [[] for _ in prompts]
    first_pos = steps[0][0]
    produced = torch.stack([t for _, t in steps], dim=1).tolist()  # (B, n_steps): one sync
    out = []
    for b, prompt in enumerate(prompts):
        new = produced[b][len(prompt) - first_pos:][:max_new_tokens]
        if eos_id is not None and eos_id in new:
            new = new[: new.index(eos_id)]
        out.append(new)
    return out


def stream(model: Transformer, prompt: Sequence[int], max_new_tokens: int,
           temperature: float = 0.6, top_p: float = 0.9, top_k: Optional[int] = None,
           eos_id: Optional[int] = None, seed: Optional[int] = None,
           decoder: Optional[Decoder] = None) -> Iterator[int]:
    """Yield one prompt's new tokens one at a time, as they are produced (for printing)."""
    generator = _make_generator(model, seed)
    for _, token in generate_steps(model, [list(prompt)], max_new_tokens, temperature, top_p,
                                   top_k, eos_id, True, generator, decoder):
        t = int(token[0])
        if eos_id is not None and t == eos_id:
            return
        yield t
