"""SwiGLU feed-forward against transformers' LlamaMLP and the formula."""

import torch
import torch.nn.functional as F

import llama_course as lc


def test_equals_transformers_llama_mlp():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP
    ffn = lc.FeedForward(32, 88)
    mlp = LlamaMLP(LlamaConfig(hidden_size=32, intermediate_size=88))
    with torch.no_grad():
        mlp.gate_proj.weight.copy_(ffn.w1.weight)
        mlp.up_proj.weight.copy_(ffn.w3.weight)
        mlp.down_proj.weight.copy_(ffn.w2.weight)
    x = torch.randn(3, 5, 32)
    torch.testing.assert_close(ffn(x), mlp(x))


def test_formula_and_meta_signature():
    ffn = lc.FeedForward(4096 // 64, 4 * 4096 // 64, multiple_of=16, ffn_dim_multiplier=1.3)
    assert ffn.w1.weight.shape == (lc.ffn_hidden_dim(64, 16, 1.3), 64)
    big = lc.ffn.ffn_hidden_dim(4096, 1024, 1.3)
    assert big == 14336
    x = torch.randn(2, 64)
    expected = ffn.w2.weight @ (F.silu(ffn.w1.weight @ x.T) * (ffn.w3.weight @ x.T))
    torch.testing.assert_close(ffn(x), expected.T)


def test_exact_width_override():
    ffn = lc.FeedForward(64, 100)
    assert ffn.w1.weight.shape == (100, 64) and ffn.w2.weight.shape == (64, 100)
