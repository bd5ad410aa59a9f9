"""Attention at its edges: devices and dtypes of masks and caches, a cache filled to the last
slot, the CPU's fp32 attention for low-precision inputs, dropout (training only) against
F.scaled_dot_product_attention with the same random numbers. Public API only."""

import pytest
import torch
import torch.nn.functional as F

import llama_course as lc

from references import small_args


def test_masks_and_caches_follow_device_and_dtype():
    meta = torch.device("meta")
    assert lc.causal_mask(3, 2, device=meta).device == meta
    cache = lc.KVCache(2, 8, 1, 4, dtype=torch.bfloat16, device=meta)
    assert cache.cache_k.device == cache.cache_v.device == meta
    assert cache.cache_k.dtype == cache.cache_v.dtype == torch.bfloat16


def test_cache_fills_to_its_last_slot_and_serves_a_smaller_batch():
    cache = lc.KVCache(3, 4, 1, 2)
    k, v = torch.randn(2, 1, 4, 2), torch.randn(2, 1, 4, 2)
    keys, values = cache.update(0, k, v)  # positions 0..3 of a 4-slot cache: fits exactly
    assert keys.shape == (2, 1, 4, 2) and torch.equal(keys, k) and torch.equal(values, v)
    with pytest.raises(ValueError, match=r"^KV cache overflow: positions up to 5 do not fit "
                                         r"in max_seq_len \(4\)$"):
        cache.update(2, k[:, :, :3], v[:, :, :3])


def test_a_new_attention_records_no_weights():
    attn = lc.Attention(small_args())
    assert attn.keep_weights is False and attn.last_weights is None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_attend_in_fp32_on_cpu(dtype):
    q, k, v = (torch.randn(2, 4, 6, 8).to(dtype) for _ in range(3))
    for mask, kw in ((lc.causal_mask(6), dict(is_causal=True)), (None, {})):
        out = lc.sdpa_attention(q, k, v, mask)
        ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kw)
        assert out.dtype == dtype
        torch.testing.assert_close(out, ref.to(dtype), atol=0, rtol=0)  # one rounding


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("start_pos", [0, 3])
def test_attention_dropout_uses_the_kernels_random_numbers(dtype, start_pos):
    q = torch.randn(1, 2, 4, 8).to(dtype)
    k, v = (torch.randn(1, 2, 4 + start_pos, 8).to(dtype) for _ in range(2))
    mask = lc.causal_mask(4, start_pos)
    torch.manual_seed(1)
    out = lc.sdpa_attention(q, k, v, mask, dropout_p=0.5)
    torch.manual_seed(1)
    kw = dict(is_causal=True) if start_pos == 0 else dict(attn_mask=mask)
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), dropout_p=0.5, **kw)
    torch.testing.assert_close(out, ref.to(dtype), atol=0, rtol=0)
    assert not torch.equal(out, lc.sdpa_attention(q, k, v, mask))


def reference_attention(attn, x, freqs, p, training):
    """Attention.forward written out with torch's own pieces, the same random draws."""
    B, T, _ = x.shape
    H, Hkv, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
    xq, xk = lc.apply_rotary_emb(attn.wq(x).view(B, T, H, D), attn.wk(x).view(B, T, Hkv, D),
                                 freqs)
    xv = attn.wv(x).view(B, T, Hkv, D)
    q, k, v = xq.transpose(1, 2), xk.transpose(1, 2), xv.transpose(1, 2)
    k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                         dropout_p=p if training else 0.0)
    return F.dropout(attn.wo(out.transpose(1, 2).reshape(B, T, H * D)), p, training)


@pytest.mark.parametrize("training", [True, False])
def test_dropout_only_in_training_at_both_places(training):
    args = small_args(dropout=0.3)
    attn = lc.Attention(args).train(training)
    x = torch.randn(2, 5, args.dim)
    freqs = lc.precompute_freqs_cis(args.head_dim, 5, args.rope_theta)
    torch.manual_seed(3)
    out = attn(x, 0, freqs, lc.causal_mask(5))
    torch.manual_seed(3)
    ref = reference_attention(attn, x, freqs, 0.3, training)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    plain = reference_attention(attn, x, freqs, 0.0, False)
    assert torch.allclose(out, plain, atol=1e-6) != training  # dropout changed it iff training


@pytest.mark.parametrize("attend", [lc.sdpa_attention, lambda q, k, v, m: lc.explicit_attention(
    q, k, v, m)[0]], ids=["sdpa", "explicit"])
def test_causal_request_with_unequal_lengths_explains_what_to_pass(attend):
    q, k = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 5, 8)
    with pytest.raises(ValueError, match=r'^mask="causal" needs as many queries as keys '
                                         r"\(got 3 and 5\); after a cached prefix pass "
                                         r"causal_mask\(T, start_pos\)$"):
        attend(q, k, k, "causal")


def test_inputs_without_a_batch_dimension_work_like_torchs():
    """(heads, T, D) inputs, as F.scaled_dot_product_attention accepts them: the causal
    triangle and the scores use the last two dimensions, whatever comes before them."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    out, weights = lc.explicit_attention(q, k, v, "causal")
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    assert weights.shape == (2, 5, 5)
    torch.testing.assert_close(lc.sdpa_attention(q, k, v, "causal"), ref)
    q1 = torch.randn(2, 3, 8)  # 3 queries after 2 cached keys: scores (2, 3, 5)
    mask = lc.causal_mask(3, 2)
    torch.testing.assert_close(lc.explicit_attention(q1, k, v, mask)[0],
                               F.scaled_dot_product_attention(q1, k, v, attn_mask=mask),
                               atol=1e-6, rtol=1e-5)


def test_the_causal_request_takes_dropout_too():
    q, k, v = (torch.randn(1, 2, 6, 8) for _ in range(3))
    torch.manual_seed(1)
    out = lc.sdpa_attention(q, k, v, "causal", dropout_p=0.5)
    torch.manual_seed(1)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=0.5)
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    assert not torch.equal(out, lc.sdpa_attention(q, k, v, "causal"))


def test_the_causal_triangle_is_built_on_the_inputs_device():
    meta = torch.device("meta")  # stands in for a GPU: a mask left on the CPU fails there
    q, k, v = (torch.randn(1, 2, 4, 8, device=meta) for _ in range(3))
    out, weights = lc.explicit_attention(q, k, v, "causal")
    assert out.device == weights.device == meta and weights.shape == (1, 2, 4, 4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_off_the_cpu_the_kernel_gets_the_inputs_dtype(dtype, monkeypatch):
    """The fp32 detour is for the CPU only: on a GPU (the meta device stands in for one) bf16
    attention goes to the fused kernel in bf16, where its fast kernels are."""
    seen = []
    sdpa = F.scaled_dot_product_attention

    def recording(q, k, v, **kw):
        seen.append((q.dtype, q.device.type))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    q, k, v = (torch.randn(1, 2, 4, 8, device="meta", dtype=dtype) for _ in range(3))
    for mask in ("causal", None, lc.causal_mask(4, device="meta")):
        assert lc.sdpa_attention(q, k, v, mask).dtype == dtype
    assert seen == [(dtype, "meta")] * 3
    seen.clear()
    cpu = torch.randn(1, 2, 4, 8, dtype=dtype)
    lc.sdpa_attention(cpu, cpu, cpu, None)  # the CPU: always fp32
    assert seen == [(torch.float32, "cpu")]
