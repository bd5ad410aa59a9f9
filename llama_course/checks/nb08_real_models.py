"""Checkers for the exercises of notebook 08 (real models: a GGUF SmolLM2, Llama 3's tokenizer)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .common import close, ok

# SmolLM2-135M-Instruct's chat template, as its GGUF file's tokenizer.chat_template holds it
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}")
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
Q4_1_BLOCK = 20  # bytes: fp16 d, fp16 m, 16 bytes holding 32 four-bit values


def _render_template(messages, add_generation_prompt: bool) -> str:
    """The reference: Jinja itself when installed (transformers brings it), else the package."""
    try:
        import jinja2
    except ImportError:
        from ..gguf_tokenizer import chat_format
        return chat_format(SMOLLM2_TEMPLATE)(messages, add_generation_prompt)
    return jinja2.Environment().from_string(SMOLLM2_TEMPLATE).render(
        messages=messages, add_generation_prompt=add_generation_prompt)


def check_chatml(fn: Callable[[Sequence[dict], bool], str]) -> bool:
    """fn(messages, add_generation_prompt) -> the prompt SmolLM2's chat template writes."""
    cases = [
        ([{"role": "user", "content": "What is the capital of France?"}], True),
        ([{"role": "system", "content": "Answer in French."},
          {"role": "user", "content": "  Hello!\n"}], True),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
          {"role": "user", "content": "2+2?"}], False),
    ]
    for messages, gen in cases:
        got, want = fn(messages, gen), _render_template(messages, gen)
        if not isinstance(got, str):
            raise AssertionError(f"return the prompt as a str, got {type(got).__name__}")
        if got == want:
            continue
        system = f"<|im_start|>system\n{SMOLLM2_SYSTEM}<|im_end|>\n"
        hint = _chatml_hint(got, want, messages, gen, system)
        raise AssertionError(f"{hint}\nmessages={messages}, add_generation_prompt={gen}\n"
                             f"got:      {got!r}\nexpected: {want!r}")
    return ok("ChatML prompt (SmolLM2's chat template)")


def _chatml_hint(got: str, want: str, messages, gen: bool, system: str) -> str:
    opener = "<|im_start|>assistant\n"
    if gen and not got.endswith(opener):
        return ("with add_generation_prompt the prompt ends with an open assistant turn, "
                "'<|im_start|>assistant\\n', so the model's continuation is the answer")
    if not gen and got.endswith(opener):
        return "add_generation_prompt=False: no open assistant turn at the end"
    if SMOLLM2_SYSTEM in want and SMOLLM2_SYSTEM not in got:
        return ("the template adds its default system message when the first message is "
                "not a system one")
    if SMOLLM2_SYSTEM in got and SMOLLM2_SYSTEM not in want:
        return "the default system message is added only when there is no system message first"
    if "<|im_end|><|im_start|>" in got:
        return "each turn ends with '<|im_end|>' and a newline '\\n'"
    if any(m["content"] != m["content"].strip() and m["content"] not in got for m in messages):
        return "the template does not strip the content: keep it as it is"
    return "the prompt differs from what the template writes"


def dequantize_q4_1_reference(data: bytes) -> torch.Tensor:
    """llama.cpp's Q4_1 (block_q4_1): per 32 weights, fp16 d and m, then 16 bytes whose low
    nibbles are weights 0-15 and high nibbles weights 16-31; weight = q * d + m."""
    raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, Q4_1_BLOCK)
    d = raw[:, 0:2].copy().view(np.float16).astype(np.float32)  # (blocks, 1)
    m = raw[:, 2:4].copy().view(np.float16).astype(np.float32)  # (blocks, 1)
    qs = raw[:, 4:]                                              # (blocks, 16)
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)  # (blocks, 32)
    return torch.from_numpy((q * d + m).reshape(-1))


def _gguf_dequantize(data: bytes) -> Optional[torch.Tensor]:
    try:
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize
    except ImportError:
        return None
    out = dequantize(np.frombuffer(data, dtype=np.uint8), GGMLQuantizationType.Q4_1)
    return torch.from_numpy(np.asarray(out, dtype=np.float32).reshape(-1))


def random_q4_1_blocks(n: int, seed: int = 0) -> bytes:
    g = np.random.default_rng(seed)
    d = g.uniform(0.001, 0.05, (n, 1)).astype(np.float16).view(np.uint8)
    m = g.uniform(-0.4, -0.05, (n, 1)).astype(np.float16).view(np.uint8)
    qs = g.integers(0, 256, (n, 16), dtype=np.uint8)
    return np.concatenate([d, m, qs], axis=1).tobytes()


def check_dequantize_q4_1(fn: Callable[[bytes], torch.Tensor]) -> bool:
    """fn(one 20-byte Q4_1 block) -> its 32 weights (float32 tensor)."""
    data = random_q4_1_blocks(8)
    want = dequantize_q4_1_reference(data)
    theirs = _gguf_dequantize(data)  # llama.cpp's own Python code, when installed
    if theirs is not None:
        torch.testing.assert_close(want, theirs, rtol=0, atol=0)
    blocks = [data[i:i + Q4_1_BLOCK] for i in range(0, len(data), Q4_1_BLOCK)]
    got = [torch.as_tensor(np.asarray(fn(b)), dtype=torch.float32).reshape(-1) for b in blocks]
    if any(g.numel() != 32 for g in got):
        raise AssertionError(f"a block holds 32 weights: got {got[0].numel()} values")
    got = torch.cat(got)
    if not torch.allclose(got, want, atol=1e-6):
        raise AssertionError(_q4_1_hint(got, data) + "\n(first block) got "
                             f"{got[:6].tolist()}..., expected {want[:6].tolist()}...")
    close("dequantised Q4_1 block", got, want, atol=1e-6, rtol=0)
    return ok("Q4_1 dequantisation")


def _q4_1_hint(got: torch.Tensor, data: bytes) -> str:
    raw = np.frombuffer(data, dtype=np.uint8).reshape(-1, Q4_1_BLOCK)
    d = torch.from_numpy(raw[:, 0:2].copy().view(np.float16).astype(np.float32))  # (blocks, 1)
    m = torch.from_numpy(raw[:, 2:4].copy().view(np.float16).astype(np.float32))  # (blocks, 1)
    qs = torch.from_numpy(raw[:, 4:].astype(np.int64))                            # (blocks, 16)
    lo, hi = (qs & 15).float(), (qs >> 4).float()
    q = torch.cat([lo, hi], 1)

    def same(x):
        return torch.allclose(got, x.reshape(-1), atol=1e-6)
    if same(torch.stack([lo, hi], 2).reshape(-1, 32) * d + m):
        return ("looks like you interleaved the nibbles: the low nibbles of the 16 bytes are "
                "weights 0-15, the high nibbles weights 16-31")
    if same(torch.cat([hi, lo], 1) * d + m):
        return "low and high nibbles swapped: the LOW nibbles are weights 0-15"
    if same(q * d):
        return "the minimum m is missing: weight = q * d + m"
    if same((q - 8) * d) or same((q - 8) * d + m):
        return "that is Q4_0's rule (q - 8) * d; Q4_1 stores a minimum: weight = q * d + m"
    if same(q * m + d):
        return "d and m swapped: the block starts with the scale d, then the minimum m"
    return "the weights differ from llama.cpp's Q4_1 dequantisation"
