"""Checkers for the exercises of notebook 01 (model config)."""

from __future__ import annotations

import numbers
from typing import Callable

from .. import config
from .common import ok


def check_num_parameters(fn: Callable[[config.ModelArgs], int]) -> bool:
    """fn(args) -> total parameter count; checked on the real Llama 3 presets."""
    for name in ("llama3-8b", "llama3.2-1b", "llama3.2-3b", "tiny"):
        args = config.get_preset(name)
        got, want = fn(args), config.num_parameters(args)
        if got != want:
            raise AssertionError(f"{name}: got {got:,} parameters, expected {want:,}"
                                 + (" (tied embeddings?)" if args.tie_word_embeddings else ""))
    return ok("parameter count")


# ---------------------------------------------------------------------------- Llama 3 70B, 405B
# Published parameter counts (Hugging Face model cards of meta-llama/Meta-Llama-3-70B and
# Llama-3.1-405B; the safetensors index of each repository).
PUBLISHED_BIG = {"70B": 70_553_706_496, "405B": 405_853_388_800}
_BIG_SHAPES = {  # field -> (70B, 405B, the config.json name it comes from)
    "dim": (8192, 16384, "hidden_size"),
    "n_layers": (80, 126, "num_hidden_layers"),
    "n_heads": (64, 128, "num_attention_heads"),
    "kv_heads": (8, 8, "num_key_value_heads"),
    "vocab_size": (128256, 128256, "vocab_size"),
    "ffn_hidden_dim": (28672, 53248, "intermediate_size"),
}


def _diagnose_big(label: str, args: config.ModelArgs, col: int) -> None:
    if not isinstance(args, config.ModelArgs):
        raise AssertionError(f"Llama 3 {label}: expected an lc.ModelArgs, got {type(args).__name__}")
    if args.tie_word_embeddings:
        raise AssertionError(
            f"Llama 3 {label}: tie_word_embeddings is True, but only Llama 3.2 1B/3B tie the "
            "output head to the embeddings; 70B and 405B have their own output matrix "
            "(\"tie_word_embeddings\": false in their config.json)")
    for field, (*want, hf_name) in _BIG_SHAPES.items():
        got = getattr(args, field)
        if got == want[col]:
            continue
        if field == "ffn_hidden_dim":
            raise AssertionError(
                f"Llama 3 {label}: the FFN width is {got:,}, expected {want[col]:,}. "
                f"intermediate_size is the width itself: pass hidden_dim={want[col]} (the rule "
                f"with multiple_of={args.multiple_of} and ffn_dim_multiplier="
                f"{args.ffn_dim_multiplier} gives {got:,})")
        if field == "kv_heads" and got == args.n_heads:
            raise AssertionError(
                f"Llama 3 {label}: n_kv_heads is {got} (= n_heads): these models use grouped-query "
                f"attention with {want[col]} key/value heads (num_key_value_heads)")
        raise AssertionError(f"Llama 3 {label}: {field} is {got:,}, expected {want[col]:,} "
                             f"(config.json: {hf_name})")


def check_big_llamas(args_70b: config.ModelArgs, args_405b: config.ModelArgs) -> bool:
    """The learner's ModelArgs for Llama 3 70B and 405B: every shape field, then the count
    against the published one."""
    if isinstance(args_70b, config.ModelArgs) and isinstance(args_405b, config.ModelArgs) \
            and args_70b.dim == 16384 and args_405b.dim == 8192:
        raise AssertionError("the two configs are swapped: the first argument is the 70B model")
    for label, args, col in (("70B", args_70b, 0), ("405B", args_405b, 1)):
        _diagnose_big(label, args, col)
        n = config.num_parameters(args)
        if n != PUBLISHED_BIG[label]:
            raise AssertionError(f"Llama 3 {label}: {n:,} parameters, published "
                                 f"{PUBLISHED_BIG[label]:,}")
        print(f"Llama 3 {label}: {n:,} parameters = the published count")
    return ok("Llama 3 70B and 405B configs")


# ---------------------------------------------------------------------------- GPT-2
def _gpt2_reference(cfg) -> int:
    """Parameters held by transformers' GPT2LMHeadModel, built on the meta device (no memory)."""
    import torch
    import transformers

    with torch.device("meta"):
        model = transformers.GPT2LMHeadModel(cfg)
    return sum(p.numel() for p in model.parameters())  # a tied matrix is yielded once


def _gpt2_configs():
    import transformers

    small = dict(bos_token_id=0, eos_token_id=0)
    return [("GPT-2 small", transformers.GPT2Config()),
            ("GPT-2 medium", transformers.GPT2Config(n_embd=1024, n_layer=24, n_head=16)),
            ("a small untied GPT-2 with n_inner=100",
             transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=32,
                                     vocab_size=100, n_inner=100, tie_word_embeddings=False,
                                     **small))]


def _gpt2_slips(cfg) -> dict[int, str]:
    """What the count is off by for each typical slip (got - expected -> explanation)."""
    d, L, V, P = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.n_positions
    F = 4 * d if cfg.n_inner is None else cfg.n_inner
    linear_biases = L * (3 * d + d + F + d)  # c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj
    ln_biases = (2 * L + 1) * d
    slips = {
        -P * d: "you forgot the learned position embeddings wpe (n_positions x n_embd): GPT-2 "
                "adds a trained vector per position, Llama has none (RoPE)",
        -linear_biases: "you forgot the biases of the linear layers: every one in GPT-2 has a "
                        "bias (c_attn, c_proj, c_fc), Llama's have none",
        -ln_biases: "you forgot LayerNorm's bias (beta): GPT-2's LayerNorms have a gain AND a "
                    "bias, RMSNorm only a gain",
        -(linear_biases + ln_biases): "you forgot every bias (linear layers and LayerNorms)",
        -2 * d: "you forgot the final LayerNorm ln_f (gain and bias)",
        -(2 * L + 1) * 2 * d: "you forgot the LayerNorms (two per block and ln_f, each a gain "
                              "and a bias)",
    }
    if cfg.tie_word_embeddings:
        slips[V * d] = "you counted the output head, but GPT-2 ties it to the embedding table wte"
    else:
        slips[-V * d] = ("this config has tie_word_embeddings=False: the output head is its "
                         "own (vocab_size x n_embd) matrix")
    if cfg.n_inner is not None:
        slips[L * (2 * d + 1) * (4 * d - F)] = ("n_inner, when set, is the MLP width; 4 x n_embd "
                                                "is only its default (n_inner=None)")
    return slips


def check_gpt2_num_parameters(fn: Callable) -> bool:
    """fn(cfg: transformers.GPT2Config) -> parameter count; compared with GPT2LMHeadModel."""
    for label, cfg in _gpt2_configs():
        got, want = fn(cfg), _gpt2_reference(cfg)
        if not isinstance(got, numbers.Integral) or isinstance(got, bool):
            raise AssertionError(f"{label}: expected an int, got {type(got).__name__}")
        if got != want:
            why = _gpt2_slips(cfg).get(got - want)
            raise AssertionError(f"{label}: got {got:,} parameters, transformers' GPT2LMHeadModel "
                                 f"holds {want:,} ({got - want:+,})" + (f": {why}" if why else ""))
    return ok("GPT-2 parameter count")
