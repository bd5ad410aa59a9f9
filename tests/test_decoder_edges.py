"""Edges of the fast path (llama_course/fast/decoder.py) that tests/test_decoder.py leaves open:
its pieces at settings where a slip shows (a large eps, every matrix layout), the bf16 path
batched, the KV cache's sizes and the errors at their exact limits, a decoder that follows
the model's weights (part of one matrix, unfused, `refresh()` in place), the threads it runs
on (recorded, never really changed: a real OpenMP team would hang mutmut's forked children),
and the compile=True routing with torch.compile replaced (no compiler run)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import llama_course as lc
from llama_course.fast import FastDecoder, cpu_compile, rms_norm
from llama_course.fast.decoder import FastCache, linear

from references import CONFIGS, small_args


def model_for(name="gqa", std=0.3, seed=0, **overrides):
    torch.manual_seed(seed)
    m = lc.Transformer(small_args(**{**CONFIGS[name], **overrides})).eval()
    for p in m.parameters():  # peaked distributions: greedy ties are impossible in practice
        torch.nn.init.normal_(p, std=std)
    return m


def last_logits(fast, tokens):
    """The decoder's logits of the last position after one prefill, (B, V)."""
    return fast(tokens, 0, fast.new_cache(tokens.shape[0], tokens.shape[1]))[:, 0]


# ---------------------------------------------------------------------------- its pieces
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_with_a_large_eps_equals_torch_rmsnorm(dtype):
    """eps = 0.5 on values of size 0.3: eps is half the denominator, so an eps left out,
    doubled or moved outside the square root shows (1e-5 hides all of these)."""
    torch.manual_seed(0)
    x, g = 0.3 * torch.randn(4, 3, 32), torch.randn(32)
    ref = torch.nn.RMSNorm(32, eps=0.5)
    with torch.no_grad():
        ref.weight.copy_(g)
    want = ref(x.to(dtype).float())  # fp32 arithmetic on the same inputs
    got = rms_norm(x.to(dtype), torch.cat([g, g]).to(dtype), 0.5)
    assert got.dtype == dtype and got.shape == x.shape
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


def test_bf16_rms_norm_rounds_exactly_like_the_models_norm():
    """In bf16 the model normalises in fp32, rounds to bf16, then multiplies by the gain: the
    fast path gives the same bits (the fp32 LayerNorm trick would round once, differently)."""
    torch.manual_seed(0)
    x, g = torch.randn(4, 3, 32).bfloat16(), torch.randn(32).bfloat16()
    norm = lc.RMSNorm(32, eps=1e-5).bfloat16()
    with torch.no_grad():
        norm.weight.copy_(g)
    assert torch.equal(rms_norm(x, torch.cat([g, g]), 1e-5), norm(x))


def test_linear_equals_f_linear_in_every_layout():
    """x W^T for the three ways the decoder holds a matrix: (in, out) transposed, (out, in)
    (one token as a matrix-vector product, several as F.linear), and the model's own matrices
    as a tuple whose outputs are concatenated."""
    torch.manual_seed(0)
    w1, w2 = torch.randn(5, 8), torch.randn(7, 8)  # (out, in)
    w = torch.cat([w1, w2])  # (12, 8)
    for shape in [(2, 3, 8), (1, 1, 8), (3, 1, 8), (1, 8)]:
        x = torch.randn(shape)
        want = F.linear(x, w)  # (..., 12)
        for got in (linear(x, w.t().contiguous(), True), linear(x, w, False),
                    linear(x, (w1, w2), False), linear(x, (w1, w2), True)):
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- bf16
def test_bf16_batched_steps_follow_the_bf16_model():
    """bf16 keeps (out, in) matrices: several rows of one token each go through F.linear, one
    row through torch.mv. Both follow the bf16 model's own forward at every position."""
    model = model_for("gqa", std=0.1).to(torch.bfloat16)
    tokens = torch.randint(0, model.vocab_size, (2, 12))
    full = model(tokens).float()  # (B, T, V), the model's own bf16 arithmetic
    fast = FastDecoder(model)
    assert not fast.transposed and fast.layers[0]["wqkv"].shape == (64 + 2 * 16, 64)  # (out, in)
    for rows in (2, 1):
        cache = fast.new_cache(rows, 12)
        got = [fast(tokens[:rows, :4], 0, cache)[:, 0]]
        got += [fast(tokens[:rows, t:t + 1], t, cache)[:, 0] for t in range(4, 12)]
        want = full[:rows, 3:]
        assert (torch.stack(got, 1) - want).abs().max() < 0.05 * want.abs().max()


# ---------------------------------------------------------------------------- the KV cache
def test_cache_sizes_are_powers_of_two_within_the_context_and_reused():
    """`new_cache` keeps one cache per batch size, sized for the next generations too: a power
    of two of at least 256, never beyond the model's context; a shorter request reuses it."""
    model = model_for("gqa", max_seq_len=1024)
    fast = FastDecoder(model)
    small = fast.new_cache(1, 10)
    assert isinstance(small, FastCache) and small.max_seq_len == 256
    assert small.storage["k"].shape == (2, 1, 2, 256, 8) == small.storage["v"].shape
    assert fast.new_cache(1, 256).storage["k"] is small.storage["k"]  # 256 fits: kept
    grown = fast.new_cache(1, 257)
    assert grown.max_seq_len == 512 and grown.storage["k"] is not small.storage["k"]
    assert fast.new_cache(1, 300).storage["k"] is grown.storage["k"]
    assert fast.new_cache(1, 513).max_seq_len == 1024
    for n in (256, 512):  # a power of two is room enough: not doubled
        assert FastDecoder(model).new_cache(1, n).max_seq_len == n
    assert fast.new_cache(1).max_seq_len == 1024 == fast.new_cache(3).max_seq_len
    assert fast.new_cache(3).storage["k"].shape[1] == 3
    short = FastDecoder(model_for("gqa", max_seq_len=64))
    assert short.new_cache(2, 5).max_seq_len == 64  # capped at the model's context


def test_cache_limits_are_inclusive_and_errors_name_the_numbers():
    model = model_for("gqa")  # max_batch_size 8, max_seq_len 64
    fast = FastDecoder(model)
    assert fast.new_cache(8, 64).max_seq_len == 64  # both limits themselves are allowed
    with pytest.raises(ValueError, match=r"^batch size \(9\) exceeds max_batch_size \(8\)$"):
        fast.new_cache(9)
    with pytest.raises(ValueError,
                       match=r"^max_seq_len \(65\) exceeds the model's context \(64\)$"):
        fast.new_cache(1, 65)
    tokens = torch.randint(0, model.vocab_size, (2, 64))
    cache = fast.new_cache(2, 64)
    fast(tokens[:, :60], 0, cache)
    last = fast(tokens[:, 60:], 60, cache)[:, 0]  # ends exactly at the cache's end
    torch.testing.assert_close(last, model(tokens)[:, -1], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match=r"^positions up to 65 exceed the cache \(64\)$"):
        fast(tokens[:, :1], 64, cache)
    with pytest.raises(ValueError, match=r"^tokens hold 2 rows, the cache 3$"):
        fast(tokens[:, :3], 0, fast.new_cache(3, 8))


def test_a_cache_from_elsewhere_is_refused():
    model = model_for("gqa")
    fast = FastDecoder(model)
    tokens = torch.zeros(1, 2, dtype=torch.long)
    for cache in (model.new_cache(1, 8), None):  # the model's own cache, or none
        with pytest.raises(ValueError, match=r"^cache must come from this decoder's latest "
                                             r"new_cache\(\) for this batch size \(one "
                                             r"generation at a time per FastDecoder\)$"):
            fast(tokens, 0, cache)
    cache = fast.new_cache(1, 8)
    torch.testing.assert_close(fast(tokens, 0, cache)[:, 0], model(tokens)[:, -1],
                               atol=1e-5, rtol=1e-5)


def test_a_chunk_after_a_short_prefix_sees_the_past_not_the_future():
    """Chunks of 2 tokens, and a chunk right after a 1-token prefix, are masked causally: the
    later single-token steps, which read their cached keys and values, give the model's logits."""
    model = model_for("gqa", std=0.1)
    tokens = torch.randint(0, model.vocab_size, (2, 12))
    full = model(tokens)  # (B, T, V)
    fast = FastDecoder(model)
    cache = fast.new_cache(2, 12)
    got = [fast(tokens[:, :1], 0, cache), fast(tokens[:, 1:4], 1, cache),
           fast(tokens[:, 4:6], 4, cache)]
    got += [fast(tokens[:, t:t + 1], t, cache) for t in range(6, 12)]
    want = torch.stack([full[:, 0], full[:, 3], full[:, 5], *full[:, 6:].unbind(1)], 1)
    torch.testing.assert_close(torch.cat(got, 1), want, atol=1e-5, rtol=1e-5)


def test_the_decoders_tensors_live_on_the_models_device_whatever_the_default():
    """Under another default device (here 'meta', which every machine has) the cache, the
    positions and the masks are still made on the model's device: same logits."""
    model = model_for("gqa", std=0.1)
    tokens = torch.randint(0, model.vocab_size, (2, 9))
    full = model(tokens)
    with torch.device("meta"):
        fast = FastDecoder(model)
        cache = fast.new_cache(2, 9)
        got = [fast(tokens[:, :4], 0, cache), fast(tokens[:, 4:7], 4, cache)]
        got += [fast(tokens[:, t:t + 1], t, cache) for t in (7, 8)]
    assert all(t.device.type == "cpu" for t in cache.storage["ks"] + [cache.storage["pos"]])
    torch.testing.assert_close(torch.cat(got, 1), full[:, [3, 6, 7, 8]], atol=1e-5, rtol=1e-5)


def test_the_static_step_lives_on_the_models_device_whatever_the_default(monkeypatch):
    """The same for compile=True's static step (torch.compile replaced by the identity): its
    positions and mask are made on the model's device."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    model = model_for("gqa", std=0.1)
    tokens = torch.randint(0, model.vocab_size, (2, 7))
    full = model(tokens)
    with torch.device("meta"):
        fast = FastDecoder(model, compile=True)
        cache = fast.new_cache(2, 7)
        fast(tokens[:, :4], 0, cache)
        got = [fast(tokens[:, t:t + 1], t, cache) for t in (4, 5, 6)]
    assert cache.storage["positions"].device.type == "cpu"
    torch.testing.assert_close(torch.cat(got, 1), full[:, 4:], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- the weights
def test_fused_copies_below_200m_parameters_the_models_own_matrices_otherwise(monkeypatch):
    """fuse=None fuses (a copy) below 200M parameters; fuse=False keeps the model's own
    matrices (no second copy in memory); in fp32 the fused copies are stored (in, out)."""
    model = model_for("gqa")
    wq = model.layers[0].attention.wq.weight
    fused = FastDecoder(model)
    assert fused.fuse and fused.transposed
    assert fused.layers[0]["wqkv"].shape == (64, 64 + 2 * 16)  # (in, out)
    torch.testing.assert_close(fused.layers[0]["wqkv"][:, :64], wq.t())
    own = FastDecoder(model, fuse=False)
    assert all(t.untyped_storage().data_ptr() == w.untyped_storage().data_ptr()
               for t, w in zip(own.layers[0]["wqkv"], (wq, model.layers[0].attention.wk.weight,
                                                      model.layers[0].attention.wv.weight)))
    assert own.output[0].data_ptr() == model.output.weight.data_ptr()
    for n, fuse in [(199_999_999, True), (200_000_000, False)]:
        monkeypatch.setattr(model, "num_parameters", lambda *a, n=n, **k: n)
        assert FastDecoder(model).fuse is fuse
        assert FastDecoder(model, fuse=not fuse).fuse is (not fuse)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
def test_the_decoder_follows_in_place_updates_of_every_weight(fuse, dtype):
    """An optimizer step between generations changes every weight, norms' gains included:
    the reused decoder (fused copies or the model's own matrices) decodes the new model."""
    model = model_for("gqa", std=0.1).to(dtype)
    fast = FastDecoder(model, fuse=fuse)
    tokens = torch.randint(0, model.vocab_size, (2, 9))
    before = last_logits(fast, tokens)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    after = last_logits(fast, tokens)
    want = model(tokens)[:, -1].float()
    tol = 1e-5 if dtype == torch.float32 else 0.05 * want.abs().max().item()
    torch.testing.assert_close(after, want, atol=tol, rtol=tol)
    assert (after - before).abs().max() > 10 * tol


def test_a_change_to_part_of_one_matrix_is_seen():
    """A load or a sparse update can change some rows only (here the second half of one layer's
    wq and a few entries of the final norm): the sample of 64 evenly spaced values per weight
    sees it, and the copy follows."""
    model = model_for("gqa", std=0.1)
    fast = FastDecoder(model)
    tokens = torch.randint(0, model.vocab_size, (1, 7))
    last_logits(fast, tokens)
    with torch.no_grad():
        model.layers[1].attention.wq.weight[32:] += 0.5
        model.norm.weight[-8:] *= 3.0
    torch.testing.assert_close(last_logits(fast, tokens), model(tokens)[:, -1],
                               atol=1e-5, rtol=1e-5)


def test_the_sampled_values_are_evenly_spaced_and_cover_small_weights():
    """The change test compares 64 evenly spaced values of each weight (every numel // 64-th,
    from the first) and every value of a weight of fewer than 128: an edit at one of those
    places is followed without `refresh()`."""
    model = model_for("gqa", std=0.1)
    fast = FastDecoder(model)
    tokens = torch.randint(0, model.vocab_size, (1, 7))
    head = model.output.weight  # 97 * 64 values: every 97th is compared
    assert head.numel() // 64 == 97
    for edit in (lambda: head.view(-1)[97 * 37].add_(3.0),
                 lambda: model.layers[1].ffn_norm.weight[1].add_(3.0)):  # 64 values, all compared
        with torch.no_grad():
            edit()
        torch.testing.assert_close(last_logits(fast, tokens), model(tokens)[:, -1],
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_refresh_copies_a_hand_edit_in_place(dtype):
    """A single edited weight can fall between the sampled values: `refresh()` copies every
    weight again, into the same tensors (a compiled step or CUDA graph keeps pointing at
    them), in both layouts (fp32 transposed, bf16 as the model stores it)."""
    model = model_for("mqa", std=0.1).to(dtype)
    fast = FastDecoder(model)
    tokens = torch.randint(0, model.vocab_size, (2, 6))
    ptrs = [t.data_ptr() for lw in fast.layers for t in lw.values()]
    with torch.no_grad():  # one value of wv, one of w3 and one of a norm: between the samples
        model.layers[0].attention.wv.weight[3, 5] += 4.0
        model.layers[1].feed_forward.w3.weight[7, 1] -= 4.0
        model.layers[1].attention_norm.weight[1] += 4.0
    fast.refresh()
    assert [t.data_ptr() for lw in fast.layers for t in lw.values()] == ptrs
    want = model(tokens)[:, -1].float()
    tol = 1e-5 if dtype == torch.float32 else 0.03 * want.abs().max().item()
    torch.testing.assert_close(last_logits(fast, tokens), want, atol=tol, rtol=tol)


def test_a_moved_model_needs_a_new_decoder():
    model = model_for("gqa")
    fast = FastDecoder(model)
    model.to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"^the model is now torch.bfloat16 on cpu, but this "
                                         r"FastDecoder was built for torch.float32 on cpu: "
                                         r"build a new one$"):
        fast.new_cache(1, 4)
    model.float()  # back to fp32, but new tensors: the copies no longer describe them
    with pytest.raises(ValueError, match=r"^the model's weights are new tensors since this "
                                         r"FastDecoder was built \(not the same weights "
                                         r"updated in place\): build a new one$"):
        fast.new_cache(1, 4)


# ---------------------------------------------------------------------------- threads
@pytest.fixture
def fake_threads(monkeypatch):
    """torch's thread setting, recorded instead of applied (the process starts at 5)."""
    state = {"now": 5, "calls": []}

    def set_num_threads(n):
        state["calls"].append(n)
        state["now"] = n

    monkeypatch.setattr(torch, "get_num_threads", lambda: state["now"])
    monkeypatch.setattr(torch, "set_num_threads", set_num_threads)
    return state


def test_threads_are_set_for_each_call_and_restored(fake_threads, monkeypatch):
    model = model_for("gqa")
    seen = []
    forward = FastDecoder.forward
    monkeypatch.setattr(FastDecoder, "forward",
                        lambda self, *a: seen.append(torch.get_num_threads()) or forward(self, *a))
    lc.generate(model, [[1, 2]], 3, temperature=0, decoder=FastDecoder(model, threads=2))
    assert seen == [2, 2, 2] and fake_threads["now"] == 5
    assert fake_threads["calls"] == [2, 5] * 3
    seen.clear(), fake_threads["calls"].clear()
    lc.generate(model, [[1, 2]], 3, temperature=0, decoder=FastDecoder(model))  # the default
    assert seen == [5, 5, 5] and set(fake_threads["calls"]) <= {5}


def test_threads_are_restored_when_a_call_fails(fake_threads, monkeypatch):
    def broken(self, *args):
        raise RuntimeError("out of memory")

    fast = FastDecoder(model_for("gqa"), threads=1)
    monkeypatch.setattr(FastDecoder, "forward", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        fast(torch.zeros(1, 2, dtype=torch.long), 0, fast.new_cache(1, 4))
    assert fake_threads["now"] == 5


@pytest.mark.parametrize("threads", [0, -2, True, 2.0, "2"])
def test_threads_must_be_a_positive_integer(threads):
    with pytest.raises(ValueError, match=rf"^threads \({threads!r}\) must be a positive "
                                         r"integer or None$"):
        FastDecoder(model_for("gqa"), threads=threads)


def test_the_decoder_needs_a_course_transformer():
    with pytest.raises(ValueError, match=r"^FastDecoder needs an lc.Transformer, got Linear$"):
        FastDecoder(torch.nn.Linear(2, 2))
    assert FastDecoder(model_for("gqa"), threads=1).threads == 1


# ---------------------------------------------------------------------------- compile=True
def test_compile_routes_single_tokens_through_one_compiled_step(monkeypatch):
    """compile=True: prompts run the dynamic forward, every single token the static step,
    compiled once per decoder (with full graph and static shapes) and kept per batch size;
    the tokens are the plain path's. torch.compile is replaced by a recording wrapper."""
    compiled, calls = [], []

    def fake_compile(fn, **kwargs):
        compiled.append(kwargs)

        def step(token, pos, *rest):
            calls.append((token.shape[0], int(pos)))
            return fn(token, pos, *rest)
        return step

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = model_for("gqa")
    lc.generate(model, [[1, 2]], 3, temperature=0, decoder=FastDecoder(model))
    assert compiled == [] and not FastDecoder(model).compile  # the default never compiles
    fast = FastDecoder(model, compile=True)
    assert not fast.compiled  # nothing compiled before the first step
    prompts = [[1, 2, 3, 4, 5], [6, 7, 8]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # on the CPU no CUDA graph is tried, nothing falls back
        assert (lc.generate(model, prompts, 12, temperature=0, decoder=fast)
                == lc.generate(model, prompts, 12, temperature=0))
    # fp32 on the CPU: Inductor's C++ wrapper, no freezing (cpu_compile.py says why)
    assert compiled == [dict(fullgraph=True, dynamic=False, options={"cpp_wrapper": True})]
    assert fast.compiled
    assert calls == [(2, t) for t in range(3, 16)]  # the shortest prompt is the prefill
    lc.generate(model, [[9]], 4, temperature=0, decoder=fast)  # another batch size
    assert len(compiled) == 1 and calls[-4:] == [(1, 0), (1, 1), (1, 2), (1, 3)]
    assert FastDecoder(model).compiled is False  # compile=False never compiles


def test_an_in_place_update_compiles_the_cpu_step_again(monkeypatch):
    """On the CPU the compiled step has the weights in it (bf16: frozen), so new values mean a
    new compilation, for every batch size, at the next generation, and only then; with
    torch's compiler replaced by a recording wrapper (the real one: tests/test_decoder.py)."""
    made = []

    def fake_compile_step(decoder):
        made.append(decoder)
        return lambda *args: decoder.static_step(*args)  # a compiled step of its own

    monkeypatch.setattr("llama_course.fast.decoder.compile_cpu_step", fake_compile_step)
    model = model_for("gqa")
    fast = FastDecoder(model, compile=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to the eager step on the way
        for prompts in ([[1, 2]], [[1, 2], [3, 4]], [[5]]):  # two batch sizes, same weights
            lc.generate(model, prompts, 3, temperature=0, decoder=fast)
        assert made == [fast] and fast.compiled
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(-1.5)  # new values, same tensors
        for prompts in ([[1, 2]], [[1, 2], [3, 4]]):
            assert (lc.generate(model, prompts, 3, temperature=0, decoder=fast)
                    == lc.generate(model, prompts, 3, temperature=0))
    assert made == [fast, fast] and fast.compiled  # once more, shared by both batch sizes


def test_the_frozen_step_is_compiled_on_the_cpu_only(monkeypatch):
    """cpu_compile's frozen step is the CPU's; on any other device the step is compiled as it
    is, with Inductor's default (on CUDA then recorded as a CUDA graph). Checked without a
    GPU: the choice depends on the decoder's device only."""
    made, compiled = [], []
    monkeypatch.setattr("llama_course.fast.decoder.compile_cpu_step",
                        lambda decoder: made.append(decoder) or decoder.static_step)
    monkeypatch.setattr(torch, "compile",
                        lambda fn, **kwargs: compiled.append((fn, kwargs)) or fn)
    model = model_for("gqa")
    fast = FastDecoder(model, compile=True)
    lc.generate(model, [[1, 2]], 2, temperature=0, decoder=fast)
    assert made == [fast] and compiled == []
    fast = FastDecoder(model, compile=True)
    storage = fast.new_cache(1, 8).storage
    fast.device = torch.device("meta")  # any device that is not the CPU (and not CUDA)
    with torch.inference_mode():
        fast._step(torch.tensor([1]), 0, storage)
    assert made == [made[0]]
    assert compiled == [(fast.static_step, dict(fullgraph=True, dynamic=False))]


def test_a_failed_compile_falls_back_to_the_eager_step_once(monkeypatch):
    def unsupported(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: unsupported)
    model = model_for("gqa")
    fast = FastDecoder(model, compile=True)
    tokens = torch.randint(0, model.vocab_size, (1, 8))
    cache = fast.new_cache(1, 8)
    fast(tokens[:, :4], 0, cache)
    with pytest.warns(RuntimeWarning, match=r"torch.compile of the decode step failed "
                                            r"\(RuntimeError: no compiler here\); decoding "
                                            r"eagerly"):
        steps = [fast(tokens[:, 4:5], 4, cache)]
    assert not fast.compiled
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        steps += [fast(tokens[:, t:t + 1], t, cache) for t in range(5, 8)]
    torch.testing.assert_close(torch.cat(steps, 1), model(tokens)[:, 4:], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need an NVIDIA GPU")
def test_on_cuda_a_failed_graph_capture_during_generation_is_said_once(monkeypatch):
    """GPU only: the decoder's own step asks for a CUDA graph; where recording fails it warns
    once, decodes eagerly from then on (the cache no longer holds a graph step) and gives the
    plain path's tokens. (The failure is forced; torch.compile is replaced by the identity.)"""
    from llama_course.fast import CUDAGraphStep

    def no_streams(*args, **kwargs):
        raise RuntimeError("no CUDA streams here")

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    monkeypatch.setattr(torch.cuda, "Stream", no_streams)
    model = model_for("gqa").cuda()
    fast = FastDecoder(model, compile=True)
    prompts = [[1, 2, 3, 4], [5, 6]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = lc.generate(model, prompts, 10, temperature=0, decoder=fast)
    said = [w for w in caught if "capturing the decode step as a CUDA graph failed"
            in str(w.message)]
    assert len(said) == 1 and not isinstance(fast._storage[2]["step"], CUDAGraphStep)
    assert got == lc.generate(model, prompts, 10, temperature=0)
