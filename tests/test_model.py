"""The full model: Meta's state-dict names, logits equal transformers', the KV cache."""

import pytest
import torch

import llama_course as lc

from references import CONFIGS, hf_reference, small_args


def test_state_dict_keys_are_metas():
    model = lc.Transformer(small_args(n_layers=2))
    expected = {"tok_embeddings.weight", "norm.weight", "output.weight"}
    for i in range(2):
        expected |= {f"layers.{i}.attention.{w}.weight" for w in ("wq", "wk", "wv", "wo")}
        expected |= {f"layers.{i}.feed_forward.{w}.weight" for w in ("w1", "w2", "w3")}
        expected |= {f"layers.{i}.attention_norm.weight", f"layers.{i}.ffn_norm.weight"}
    assert set(model.state_dict()) == expected


def test_tied_embeddings_share_one_matrix():
    model = lc.Transformer(small_args(tie_word_embeddings=True))
    assert model.output.weight is model.tok_embeddings.weight
    assert model.num_parameters() == lc.num_parameters(model.params)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_equal_transformers(name):
    model = lc.Transformer(small_args(**CONFIGS[name])).eval()
    for p in model.parameters():  # larger than the init so that differences would show
        torch.nn.init.normal_(p, std=0.1)
    hf = hf_reference(model)
    tokens = torch.randint(0, model.vocab_size, (3, 48))
    with torch.no_grad():
        ours = model(tokens)
        ref = hf(tokens).logits
    assert ours.dtype == torch.float32 and ours.shape == (3, 48, model.vocab_size)
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-5)


def test_init_gives_uniform_predictions():
    """A fresh model knows nothing: its loss is about ln(vocab_size)."""
    model = lc.Transformer(small_args())
    tokens = torch.randint(0, 97, (4, 32))
    logits = model(tokens)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten())
    assert abs(loss.item() - torch.log(torch.tensor(97.0)).item()) < 0.1


@pytest.mark.parametrize("name", ["gqa", "mqa", "rope_scaling"])
def test_token_by_token_decoding_equals_full_forward(name):
    model = lc.Transformer(small_args(**CONFIGS[name])).eval()
    tokens = torch.randint(0, model.vocab_size, (2, 20))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(batch_size=2)
        steps = [model(tokens[:, t:t + 1], start_pos=t, cache=cache) for t in range(20)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_prefill_then_decode_equals_full_forward():
    model = lc.Transformer(small_args()).eval()
    tokens = torch.randint(0, model.vocab_size, (2, 24))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(batch_size=2)
        parts = [model(tokens[:, :10], 0, cache),  # prefill
                 model(tokens[:, 10:15], 10, cache),  # a second chunk after a cached prefix
                 *[model(tokens[:, t:t + 1], t, cache) for t in range(15, 24)]]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_stale_cache_changes_the_answer():
    """A cache that is not reset carries the previous prompt into the next one."""
    model = lc.Transformer(small_args()).eval()
    a, b = torch.randint(0, 97, (1, 8)), torch.randint(0, 97, (1, 4))
    with torch.no_grad():
        cache = model.new_cache(1)
        model(a, 0, cache)
        stale = model(b, 8, cache)  # continues after prompt a
        fresh = model(b, 0, model.new_cache(1))
    torch.testing.assert_close(fresh, model(b))
    assert not torch.allclose(stale, fresh, atol=1e-3)


def test_bf16_model_runs_and_stays_close():
    model = lc.Transformer(small_args()).eval()
    tokens = torch.randint(0, 97, (2, 16))
    ref = model(tokens)
    out = model.to(torch.bfloat16)(tokens)
    assert out.dtype == torch.float32  # logits always come back as fp32
    assert (out - ref).abs().max() < 0.05


def test_attention_weights_are_causal_maps():
    model = lc.Transformer(small_args())
    maps = model.attention_weights(torch.randint(0, 97, (1, 12)))
    assert len(maps) == 2 and maps[0].shape == (1, 4, 12, 12)
    assert torch.triu(maps[0][0, 0], diagonal=1).abs().max() == 0
    torch.testing.assert_close(maps[1].sum(-1), torch.ones(1, 4, 12))


@pytest.mark.parametrize("tokens, message", [
    (torch.zeros(5, dtype=torch.long), r"2-D LongTensor \(B, T\), got \(5,\)"),
    (torch.zeros(1, 5), "integer ids, got dtype torch.float32"),
    (torch.full((1, 5), 97), r"token id 97 is outside the vocabulary \(vocab_size 97\)"),
    (torch.full((1, 5), -1), "token id -1 is outside"),
    (torch.zeros(1, 65, dtype=torch.long), r"positions 0..64, outside the model's context max_seq_len \(64\)"),
])
def test_bad_tokens_are_clear_errors(tokens, message):
    model = lc.Transformer(small_args())
    with pytest.raises(ValueError, match=message):
        model(tokens)


def test_bad_cache_batch():
    model = lc.Transformer(small_args(max_batch_size=2))
    with pytest.raises(ValueError, match=r"batch size \(3\) exceeds max_batch_size \(2\)"):
        model.new_cache(3)


def test_training_forward_after_generate():
    """generate() runs under inference_mode; the RoPE table it builds must still serve a
    training step afterwards."""
    model = lc.Transformer(small_args())
    lc.generate(model, [[1, 2, 3]], 3, temperature=0)
    loss = model(torch.randint(0, 97, (2, 8))).sum()
    loss.backward()
    assert model.tok_embeddings.weight.grad is not None


def test_dropout_only_in_training_mode():
    """The small-data presets train with dropout; evaluation and generation never use it."""
    model = lc.Transformer(small_args(dropout=0.3))
    plain = lc.Transformer(small_args())
    plain.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 97, (2, 16))
    model.eval(), plain.eval()
    torch.testing.assert_close(model(tokens), plain(tokens))
    model.train()
    assert not torch.allclose(model(tokens), plain(tokens), atol=1e-4)
