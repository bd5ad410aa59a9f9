"""Notebook 08's checkers accept the right answers and name the usual mistakes."""

import numpy as np
import pytest
import torch

from llama_course import checks
from llama_course.checks import nb08_real_models as nb08

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chatml(messages, add_generation_prompt=True, *, default=True, newline="\n",
           always_default=False, strip=False, gen_prompt=True):
    text = ""
    if always_default or (default and messages[0]["role"] != "system"):
        text += f"<|im_start|>system\n{SYSTEM}<|im_end|>{newline}"
    for m in messages:
        content = m["content"].strip() if strip else m["content"]
        text += f"<|im_start|>{m['role']}\n{content}<|im_end|>{newline}"
    if add_generation_prompt and gen_prompt:
        text += "<|im_start|>assistant\n"
    return text


def test_chatml_accepts_the_right_answer(capsys):
    assert checks.check_chatml(chatml) is True
    assert "correct" in capsys.readouterr().out


def test_chatml_reference_is_the_files_template():
    jinja2 = pytest.importorskip("jinja2")  # the reference is Jinja on the template's text
    from llama_course.gguf_tokenizer import chat_format
    messages = [{"role": "user", "content": "Hi"}]
    text = jinja2.Environment().from_string(nb08.SMOLLM2_TEMPLATE).render(
        messages=messages, add_generation_prompt=True)
    assert text == chatml(messages) == chat_format(nb08.SMOLLM2_TEMPLATE)(messages, True)


@pytest.mark.parametrize("kwargs, message", [
    (dict(gen_prompt=False), "open assistant turn"),
    (dict(default=False), "adds its default system message"),
    (dict(always_default=True), "only when there is no system message"),
    (dict(newline=""), "and a newline"),
    (dict(strip=True), "does not strip"),
])
def test_chatml_names_the_mistake(kwargs, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_chatml(lambda msgs, gen=True: chatml(msgs, gen, **kwargs))


def test_chatml_rejects_a_generation_prompt_when_not_asked():
    with pytest.raises(AssertionError, match="no open assistant turn"):
        checks.check_chatml(lambda msgs, gen=True: chatml(msgs, True))


def dequantize(block):
    d, m = np.frombuffer(block[:4], dtype=np.float16).astype(np.float32)
    qs = np.frombuffer(block[4:], dtype=np.uint8)
    return torch.tensor(np.concatenate([qs & 15, qs >> 4]) * d + m)


def test_q4_1_reference_equals_gguf_package():
    gguf = pytest.importorskip("gguf")
    from gguf.quants import dequantize as gguf_dequantize
    data = nb08.random_q4_1_blocks(64, seed=3)
    theirs = gguf_dequantize(np.frombuffer(data, dtype=np.uint8), gguf.GGMLQuantizationType.Q4_1)
    assert torch.equal(nb08.dequantize_q4_1_reference(data),
                       torch.from_numpy(np.asarray(theirs, dtype=np.float32).reshape(-1)))


def test_q4_1_accepts_the_right_answer(capsys):
    assert checks.check_dequantize_q4_1(dequantize) is True
    assert checks.check_dequantize_q4_1(lambda b: dequantize(b).numpy()) is True
    assert "correct" in capsys.readouterr().out


def _wrong(rule):
    def fn(block):
        d, m = np.frombuffer(block[:4], dtype=np.float16).astype(np.float32)
        qs = np.frombuffer(block[4:], dtype=np.uint8)
        return torch.tensor(rule(qs & 15, qs >> 4, d, m), dtype=torch.float32)
    return fn


@pytest.mark.parametrize("rule, message", [
    (lambda lo, hi, d, m: np.stack([lo, hi], 1).reshape(-1) * d + m, "interleaved"),
    (lambda lo, hi, d, m: np.concatenate([hi, lo]) * d + m, "swapped: the LOW"),
    (lambda lo, hi, d, m: np.concatenate([lo, hi]) * d, "minimum m is missing"),
    (lambda lo, hi, d, m: (np.concatenate([lo, hi]) - 8.0) * d, "Q4_0"),
    (lambda lo, hi, d, m: np.concatenate([lo, hi]) * m + d, "d and m swapped"),
    (lambda lo, hi, d, m: lo * d + m, "32 weights"),
])
def test_q4_1_names_the_mistake(rule, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_dequantize_q4_1(_wrong(rule))
