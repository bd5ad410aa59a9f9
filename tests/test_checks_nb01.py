"""Notebook 01's checkers pass the right answer and name the typical slips."""

import pytest
import torch
import transformers

import llama_course as lc
from llama_course import checks

# the Hugging Face config.json numbers, mapped onto Meta's names
RIGHT_70B = lc.ModelArgs(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, hidden_dim=28672)
RIGHT_405B = lc.ModelArgs(dim=16384, n_layers=126, n_heads=128, n_kv_heads=8, hidden_dim=53248)


def test_big_llamas_right_answers(capsys):
    assert checks.check_big_llamas(RIGHT_70B, RIGHT_405B) is True
    out = capsys.readouterr().out
    assert "70,553,706,496" in out and "405,853,388,800" in out and "correct" in out
    # Meta's params.json route gives the same shapes
    meta_405b = lc.ModelArgs(dim=16384, n_layers=126, n_heads=128, n_kv_heads=8,
                             multiple_of=4096, ffn_dim_multiplier=1.2)
    assert checks.check_big_llamas(RIGHT_70B, meta_405b) is True


def test_big_llamas_published_counts_are_independent_of_the_package():
    # 70.6B and 405.9B on the model cards; the exact figures from the repositories' indexes
    assert checks.nb01_config.PUBLISHED_BIG == {"70B": 70_553_706_496, "405B": 405_853_388_800}


@pytest.mark.parametrize("args_70b, args_405b, message", [
    (RIGHT_70B, RIGHT_405B.replace(hidden_dim=None), "intermediate_size is the width itself"),
    (RIGHT_70B.replace(tie_word_embeddings=True), RIGHT_405B, "their own output matrix"),
    (RIGHT_70B.replace(n_kv_heads=None), RIGHT_405B, "grouped-query attention with 8"),
    (RIGHT_70B.replace(n_layers=70), RIGHT_405B, "n_layers is 70.*num_hidden_layers"),
    (RIGHT_405B, RIGHT_70B, "swapped"),
    ("70B", RIGHT_405B, "expected an lc.ModelArgs"),
])
def test_big_llamas_names_the_slip(args_70b, args_405b, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_big_llamas(args_70b, args_405b)


def gpt2_right(cfg):
    d, L, V, P = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.n_positions
    F = 4 * d if cfg.n_inner is None else cfg.n_inner
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * F + F) + (F * d + d)
    return V * d + P * d + L * block + 2 * d + (0 if cfg.tie_word_embeddings else V * d)


def test_gpt2_right_answer(capsys):
    assert checks.check_gpt2_num_parameters(gpt2_right) is True
    assert "correct" in capsys.readouterr().out
    assert gpt2_right(transformers.GPT2Config()) == 124_439_808  # GPT-2 small, published 124M


def _minus(fn):
    return lambda cfg: gpt2_right(cfg) - fn(cfg)


@pytest.mark.parametrize("wrong, message", [
    (_minus(lambda c: c.n_positions * c.n_embd), "position embeddings wpe"),
    (_minus(lambda c: c.n_layer * (5 * c.n_embd + (c.n_inner or 4 * c.n_embd))),
     "biases of the linear layers"),
    (_minus(lambda c: (2 * c.n_layer + 1) * c.n_embd), "LayerNorm's bias"),
    (_minus(lambda c: 2 * c.n_embd), "final LayerNorm ln_f"),
    (lambda c: gpt2_right(c) + c.vocab_size * c.n_embd, "ties it to the embedding table"),
    (lambda c: gpt2_right(c.__class__(**{**c.to_dict(), "tie_word_embeddings": True})),
     "tie_word_embeddings=False"),
    (lambda c: gpt2_right(c.__class__(**{**c.to_dict(), "n_inner": None})), "n_inner, when set"),
    (lambda c: float(gpt2_right(c)), "expected an int"),
    (lambda c: gpt2_right(c) + 1, r"\+1\)$"),
])
def test_gpt2_names_the_slip(wrong, message):
    with pytest.raises(AssertionError, match=message):
        checks.check_gpt2_num_parameters(wrong)
