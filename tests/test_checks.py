"""The exercise checkers accept a right answer and reject a wrong one (with a useful message)."""

import pytest
import torch

import llama_course as lc
from llama_course import checks
from llama_course.generate import filter_top_p


def rmsnorm_no_eps(x, w, eps):
    return x / x.pow(2).mean(-1, keepdim=True).sqrt() * w * 1.01


CASES = [  # checker, a correct answer, a wrong answer, what the message must say
    (checks.check_num_parameters, lc.num_parameters,
     lambda a: lc.num_parameters(a) + (a.vocab_size * a.dim if a.tie_word_embeddings else 0),
     "tied embeddings"),
    (checks.check_kv_cache_bytes,
     lambda a, s, b, n: 2 * a.n_layers * a.kv_heads * a.head_dim * n * s * b,
     lambda a, s, b, n: 2 * a.n_layers * a.n_heads * a.head_dim * n * s * b, "expected"),
    (checks.check_rmsnorm, lambda x, w, e: lc.RMSNorm(x.shape[-1], e).requires_grad_(False)(x) * w,
     rmsnorm_no_eps, "values differ"),
    (checks.check_rope, lambda x, f: lc.apply_rotary_emb(x, x, f)[0],
     lambda x, f: lc.apply_rotary_emb_rotate_half(x, x, *lc.precompute_cos_sin(16, 12, 1e4))[0],
     "values differ"),
    (checks.check_causal_mask, lc.causal_mask,
     lambda T, s: torch.tril(torch.ones(T, T, dtype=torch.bool)), "seqlen"),
    (checks.check_repeat_kv, lc.repeat_kv, lambda x, n: x.repeat(1, n, 1, 1), "repeat_kv"),
    (checks.check_ffn_hidden_dim, lc.ffn_hidden_dim,
     lambda d, m, f: int(8 * d / 3), "expected"),
    (checks.check_swiglu,
     lambda x, w1, w2, w3: torch.nn.functional.silu(x @ w1.T) * (x @ w3.T) @ w2.T,
     lambda x, w1, w2, w3: torch.relu(x @ w1.T) * (x @ w3.T) @ w2.T, "values differ"),
    (checks.check_targets,
     lambda d, ix, T: (torch.stack([d[i:i + T] for i in ix]), torch.stack([d[i + 1:i + T + 1] for i in ix])),
     lambda d, ix, T: (torch.stack([d[i:i + T] for i in ix]), torch.stack([d[i:i + T] for i in ix])),
     "shifted by exactly one"),
    (checks.check_top_p, filter_top_p, lambda probs, p: probs, "top_p"),
    (checks.check_permute_qk, lc.permute_qk_meta_to_hf, lc.permute_qk_hf_to_meta, "inverse permutation"),
    (checks.check_layernorm,
     lambda x, w, b, e: torch.nn.functional.layer_norm(x, x.shape[-1:], w, b, e),
     lambda x, w, b, e: (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + e) * w + b,
     "values differ"),
    (checks.check_block, lambda block, x, f, m: block(x, 0, f, m),
     lambda block, x, f, m: block.ffn_norm(x), "values differ"),
]


@pytest.mark.parametrize("checker, right, wrong, message", CASES,
                         ids=[c[0].__name__ for c in CASES])
def test_checker(checker, right, wrong, message, capsys):
    assert checker(right) is True
    assert "correct" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=message):
        checker(wrong)


def test_check_greedy():
    def greedy(model, prompt, n):
        ids = list(prompt)
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
        return ids[len(prompt):]

    assert checks.check_greedy(greedy)
    with pytest.raises(AssertionError, match="return only the new tokens"):
        checks.check_greedy(lambda m, p, n: list(p) + greedy(m, p, n))
