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


def test_each_block_knows_its_layer_index():
    """Meta's TransformerBlock.layer_id: block i is layer i (per-layer hooks and plots use it)."""
    m = lc.Transformer(small_args(n_layers=3))
    assert [block.layer_id for block in m.layers] == [0, 1, 2]


def test_the_range_check_names_the_id_past_the_vocabulary_when_the_lowest_is_zero():
    m = lc.Transformer(small_args())
    with pytest.raises(ValueError, match=r"^token id 97 is outside the vocabulary \(vocab_size 97\)$"):
        m(torch.tensor([[0, 97, 3]]))


def test_tables_masks_and_caches_follow_the_models_device():
    """On another device (the meta device stands in for a GPU here) the RoPE table, the chunk
    mask and the KV cache are built there: nothing is left behind on the CPU."""
    meta = torch.device("meta")
    m = lc.Transformer(small_args()).to(meta)
    assert m.freqs_cis(meta).device == meta and m.freqs_cis(meta).dtype == torch.complex64
    tokens = torch.zeros(2, 6, dtype=torch.long, device=meta)
    assert m(tokens).device == meta  # no range check: it would read (sync) the device
    caches = m.new_cache(2)
    assert all(c.cache_k.device == c.cache_v.device == meta for c in caches)
    assert m(tokens[:, :3], 0, caches).shape == (2, 3, 97)
    assert m(tokens[:, 3:5], 3, caches).device == meta  # a chunk after a cached prefix: mask
    assert m(tokens[:, 5:], 5, caches).device == meta  # one token


@pytest.mark.parametrize("T", [1, 2, 3])
def test_a_forward_without_cache_at_a_later_position(T):
    """Without a cache, tokens at positions start_pos.. attend among themselves, causally: each
    prefix gives the logits of the longer call for the positions it covers, and since RoPE
    scores depend only on distances, those of the same tokens at position 0."""
    torch.manual_seed(0)
    m = lc.Transformer(small_args())
    tokens = torch.randint(0, 97, (2, 3))
    full = m(tokens, 10)
    torch.testing.assert_close(m(tokens[:, :T], 10), full[:, :T], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, m(tokens), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prefix", [1, 2])
def test_a_two_token_chunk_after_a_short_prefix_equals_the_full_forward(prefix):
    torch.manual_seed(0)
    m = lc.Transformer(small_args())
    tokens = torch.randint(0, 97, (2, prefix + 2))
    full = m(tokens)
    caches = m.new_cache(2)
    first = m(tokens[:, :prefix], 0, caches)
    chunk = m(tokens[:, prefix:], prefix, caches)
    torch.testing.assert_close(torch.cat([first, chunk], 1), full, atol=1e-5, rtol=1e-5)


def test_save_and_load_through_the_model_class(tmp_path):
    """Transformer.save_pretrained / from_pretrained pass every argument on: the dtype stored,
    the shard size, and on loading the class, the device and the dtype."""
    torch.manual_seed(0)
    m = lc.Transformer(small_args())
    path = m.save_pretrained(tmp_path / "ckpt", dtype=torch.bfloat16, max_shard_size=40_000)
    assert (tmp_path / "ckpt" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "ckpt").glob("model-0000*-of-*.safetensors"))) > 1
    loaded = lc.Transformer.from_pretrained(path)
    assert type(loaded) is lc.Transformer
    for name, p in loaded.state_dict().items():
        assert p.dtype == torch.bfloat16, name
        torch.testing.assert_close(p, m.state_dict()[name].to(torch.bfloat16), atol=0, rtol=0)

    class Mine(lc.Transformer):
        pass

    other = Mine.from_pretrained(tmp_path / "ckpt", device="meta", dtype=torch.float64)
    assert type(other) is Mine
    assert {(p.device.type, p.dtype) for p in other.parameters()} == {("meta", torch.float64)}


def test_attention_weights_are_layer_zeros_softmax_and_leave_no_trace():
    """The maps of layer 0 are softmax(q k^T / sqrt(d)) over the causal triangle, from the
    embeddings written out here; the call builds no graph, and every layer is back on the
    fused path afterwards, also after an error."""
    torch.manual_seed(0)
    m = lc.Transformer(small_args())
    tokens = torch.randint(0, 97, (2, 7))
    maps = m.attention_weights(tokens)
    assert len(maps) == 2 and not any(w.requires_grad for w in maps)
    attn = m.layers[0].attention
    x = m.layers[0].attention_norm(m.tok_embeddings(tokens))
    q = attn.wq(x).view(2, 7, attn.n_heads, attn.head_dim)
    k = attn.wk(x).view(2, 7, attn.n_kv_heads, attn.head_dim)
    q, k = lc.apply_rotary_emb(q, k, m.freqs_cis(tokens.device)[:7])
    q, k = q.transpose(1, 2), k.transpose(1, 2).repeat_interleave(attn.n_rep, 1)
    scores = (q @ k.transpose(-2, -1)) / attn.head_dim ** 0.5
    scores = scores.masked_fill(~torch.ones(7, 7, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(maps[0], scores.softmax(-1), atol=1e-6, rtol=1e-5)
    assert not torch.allclose(maps[0], maps[1])  # each layer its own maps
    for layer in m.layers:
        assert layer.attention.keep_weights is False and layer.attention.last_weights is None
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.attention_weights(torch.tensor([[1, 97]]))
    for layer in m.layers:
        assert layer.attention.keep_weights is False and layer.attention.last_weights is None
