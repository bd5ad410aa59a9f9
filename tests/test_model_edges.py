"""The model at its edges: initialisation scales, dropout-free training mode, the KV cache it
hands out, its input checks in full. Public API only."""

import math

import pytest
import torch

import llama_course as lc

from references import small_args


def test_initialisation_scales():
    args = small_args(n_layers=4, dim=128, n_heads=4, n_kv_heads=2, vocab_size=500)
    m = lc.Transformer(args)
    residual = 0.02 / math.sqrt(2 * args.n_layers)
    for name, p in m.named_parameters():
        if p.dim() == 1:
            assert torch.equal(p, torch.ones_like(p)), name
            continue
        std = residual if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")) \
            else 0.02
        assert abs(p.std().item() - std) < 0.1 * std, (name, p.std().item(), std)
        assert abs(p.mean().item()) < 0.1 * std, name


def test_training_mode_without_dropout_is_the_eval_forward():
    m = lc.Transformer(small_args())
    tokens = torch.randint(0, 97, (2, 9))
    torch.testing.assert_close(m.train()(tokens), m.eval()(tokens), atol=0, rtol=0)


def test_new_cache_shapes_and_limits():
    m = lc.Transformer(small_args(max_batch_size=3)).to(torch.bfloat16)
    caches = m.new_cache(3, 10)  # the whole batch fits, a shorter context than the model's
    assert len(caches) == 2
    for c in caches:
        assert c.cache_k.shape == (3, 2, 10, 16) and c.cache_k.dtype == torch.bfloat16
        assert c.cache_v.shape == (3, 2, 10, 16) and c.cache_v.dtype == torch.bfloat16
    assert m.new_cache(1)[0].max_seq_len == 64
    with pytest.raises(ValueError, match=r"^batch size \(4\) exceeds max_batch_size \(3\)$"):
        m.new_cache(4)


def test_the_constructor_names_a_wrong_argument():
    with pytest.raises(ValueError, match=r"^Transformer expects a ModelArgs, got dict$"):
        lc.Transformer(dict(dim=64))


@pytest.mark.parametrize("tokens, start_pos, message", [
    ([[1, 2]], 0, r"^tokens must be a 2-D LongTensor \(B, T\), got <class 'list'>$"),
    (torch.zeros(3, dtype=torch.long), 0, r"^tokens must be a 2-D LongTensor \(B, T\), got \(3,\)$"),
    (torch.zeros(1, 2), 0, r"^tokens must hold integer ids, got dtype torch.float32$"),
    (torch.zeros(1, 5, dtype=torch.long), 60,
     r"^tokens cover positions 60..64, outside the model's context max_seq_len \(64\)$"),
    (torch.tensor([[1, -2, 99]]), 0, r"^token id -2 is outside the vocabulary \(vocab_size 97\)$"),
    (torch.tensor([[1, 97, 3]]), 0, r"^token id 97 is outside the vocabulary \(vocab_size 97\)$"),
])
def test_input_errors_in_full(tokens, start_pos, message):
    m = lc.Transformer(small_args())
    with pytest.raises(ValueError, match=message):
        m(tokens, start_pos)


def test_the_last_position_of_the_context_is_usable():
    m = lc.Transformer(small_args())
    assert m(torch.zeros(1, 4, dtype=torch.long), 60).shape == (1, 4, 97)  # positions 60..63
    assert m(torch.zeros(1, 64, dtype=torch.long)).shape == (1, 64, 97)
    assert m(torch.tensor([[0, 96]], dtype=torch.int32)).shape == (1, 2, 97)
