"""The fast path (llama_course/fast/): its logits equal the model's own forward at every
position, its tokens equal the plain path's, and it keeps no state on the model."""

import re

import pytest
import torch

import llama_course as lc
from llama_course.fast import CUDAGraphStep, FastDecoder, rms_norm, rope_real

from references import CONFIGS, small_args


def model_for(name, **overrides):
    m = lc.Transformer(small_args(**CONFIGS[name], **overrides)).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return m


@pytest.fixture
def model():
    m = lc.Transformer(small_args()).eval()
    for p in m.parameters():  # peaked distributions: greedy ties are impossible in practice
        torch.nn.init.normal_(p, std=0.3)
    return m


# ---------------------------------------------------------------------------- its pieces
def test_rms_norm_equals_torch_rmsnorm():
    x, g = torch.randn(3, 5, 48), torch.randn(48)
    ref = torch.nn.RMSNorm(48, eps=1e-5)
    with torch.no_grad():
        ref.weight.copy_(g)
    torch.testing.assert_close(rms_norm(x, torch.cat([g, g]), 1e-5), ref(x), atol=1e-5,
                               rtol=1e-5)
    xb = x.bfloat16()  # the bf16 branch: normalise in fp32, cast back, then the gain
    want = (torch.nn.functional.rms_norm(x.bfloat16().float(), (48,), eps=1e-5).bfloat16()
            * g.bfloat16())
    torch.testing.assert_close(rms_norm(xb, torch.cat([g, g]).bfloat16(), 1e-5), want)


def test_rope_real_equals_the_course_rotation():
    x = torch.randn(2, 6, 3, 16)  # (B, T, heads, D)
    freqs_cis = lc.precompute_freqs_cis(16, 20, 10000.0)[7:13]  # positions 7..12
    torch.testing.assert_close(rope_real(x, freqs_cis.real, freqs_cis.imag),
                               lc.rope.rotate(x, freqs_cis), atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------- logits
@pytest.mark.parametrize("fuse", [True, False], ids=["fused-transposed", "model-matrices"])
@pytest.mark.parametrize("name", ["mha", "gqa", "mqa", "tied", "rope_scaling", "odd_ffn"])
def test_prefill_then_steps_equal_full_forward(name, fuse):
    model = model_for(name)
    tokens = torch.randint(0, model.vocab_size, (3, 30))
    full = model(tokens)  # (B, T, V)
    fast = FastDecoder(model, fuse=fuse)
    cache = fast.new_cache(3, 40)
    got = [fast(tokens[:, :10], 0, cache)]  # prefill: logits of position 9
    got += [fast(tokens[:, 10:14], 10, cache)]  # a chunk after a cached prefix
    got += [fast(tokens[:, t:t + 1], t, cache) for t in range(14, 30)]
    want = torch.stack([full[:, 9], full[:, 13], *[full[:, t] for t in range(14, 30)]])
    torch.testing.assert_close(torch.stack(got)[:, :, 0], want, atol=1e-5, rtol=1e-5)


def test_static_step_equals_full_forward():
    model = model_for("gqa")
    tokens = torch.randint(0, model.vocab_size, (2, 20))
    full = model(tokens)
    fast = FastDecoder(model)
    cache = fast.new_cache(2, 32)
    fast(tokens[:, :5], 0, cache)
    s = cache.storage
    steps = [fast.static_step(tokens[:, t], torch.tensor(t), s["ks"], s["vs"], s["positions"])
             for t in range(5, 20)]
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 5:], atol=1e-5, rtol=1e-5)


def test_compiled_step_equals_eager():
    """torch.compile of the static step (on CUDA it also becomes a CUDA graph)."""
    model = model_for("gqa")
    tokens = torch.randint(0, model.vocab_size, (1, 12))
    full = model(tokens)
    fast = FastDecoder(model, compile=True)
    cache = fast.new_cache(1, 16)
    fast(tokens[:, :4], 0, cache)
    steps = [fast(tokens[:, t:t + 1], t, cache)[:, 0] for t in range(4, 12)]
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 4:], atol=1e-4, rtol=1e-4)
    assert fast.compiled  # still the compiled step: no silent fallback to eager
    with torch._dynamo.config.patch(error_on_recompile=True):  # compiled once per batch size,
        for prompt, n in (([5, 6, 7], 3), ([5], 9)):  # whatever the prompt and the length
            assert (lc.generate(model, [prompt], n, temperature=0, decoder=fast)
                    == lc.generate(model, [prompt], n, temperature=0))


@pytest.mark.filterwarnings("ignore:dynamo_pgo force disabled")  # the caches, off here
def test_compiled_cpu_step_freezes_its_weights_into_the_matrix_kernels():
    """On the CPU the compiled step holds every matrix (4 a layer and the head) as a frozen
    constant of its code, multiplied inside Inductor's own kernels (or oneDNN's prepacked
    ones, whichever its autotuning timed faster on this CPU), never by a library call on a
    weight passed in: read in the code Inductor generates (caches off, so it is generated
    here). Its bf16 logits are the eager step's within bf16 rounding, and its tokens the
    plain path's."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa
    from torch._inductor.utils import run_and_get_code
    model = model_for("gqa").bfloat16()
    eager, fast = FastDecoder(model), FastDecoder(model, compile=True)
    tokens = torch.randint(0, model.vocab_size, (1, 8))
    logits = []
    for decoder in (eager, fast):
        cache = decoder.new_cache(1, 16)
        decoder(tokens[:, :4], 0, cache)
        with torch._inductor.config.patch(force_disable_caches=True):
            first, code = run_and_get_code(decoder, tokens[:, 4:5], 4, cache)
        logits.append(torch.cat([first] + [decoder(tokens[:, t:t + 1], t, cache)
                                           for t in range(5, 8)]))
    assert fast.compiled
    code = "\n".join(code)
    assert "aoti_torch_cpu_mv" not in code and "aoti_torch_cpu_addmv" not in code
    if pick_vec_isa():  # a CPU Inductor writes vector code for (else oneDNN's or a library's)
        assert "aoti_torch_cpu_mm_out(" not in code and "aoti_torch_cpu_addmm" not in code
    frozen = set(re.findall(r"_frozen_param\d+", code))
    assert len(frozen) >= 4 * model.params.n_layers + 1, frozen
    torch.testing.assert_close(logits[1], logits[0], atol=0.05, rtol=0.02)  # bf16 roundings
    assert (lc.generate(model, [[3, 1, 4]], 6, temperature=0, decoder=fast)
            == lc.generate(model, [[3, 1, 4]], 6, temperature=0))


def test_compiled_cpu_step_follows_weights_updated_in_place():
    """The bf16 step's weights are compiled in (frozen): after an in-place update of the model
    (an optimizer step) the decoder compiles its step again and its logits are those of the
    new weights (an eager decoder's, within bf16 rounding), not the old ones."""
    model = model_for("gqa").bfloat16()
    fast, eager = FastDecoder(model, compile=True), FastDecoder(model)
    tokens = torch.randint(0, model.vocab_size, (1, 6))

    def next_logits(decoder):
        cache = decoder.new_cache(1, 16)
        decoder(tokens[:, :5], 0, cache)
        return decoder(tokens[:, 5:], 5, cache)

    before = next_logits(fast)
    first = fast._compiled
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.5)  # new values, same tensors
    after, want = next_logits(fast), next_logits(eager)
    assert fast.compiled and fast._compiled is not first  # compiled again, not the old step
    torch.testing.assert_close(after, want, atol=0.1, rtol=0.05)
    assert not torch.allclose(after, before, atol=0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need an NVIDIA GPU")
def test_cuda_graph_step_equals_full_forward():
    """GPU only (CI has none; run on the H100, see the README): the compiled step, recorded as a
    CUDA graph and replayed, gives the model's logits at every position, batched, and each
    replay returns its own tensor."""
    model = model_for("gqa").cuda()
    tokens = torch.randint(0, model.vocab_size, (2, 24), device="cuda")
    full = model(tokens)  # (B, T, V)
    fast = FastDecoder(model, compile=True)
    cache = fast.new_cache(2, 32)
    fast(tokens[:, :6], 0, cache)
    steps = [fast(tokens[:, t:t + 1], t, cache)[:, 0] for t in range(6, 24)]
    step = cache.storage["step"]
    assert isinstance(step, CUDAGraphStep) and step.graph is not None and fast.compiled
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 6:], atol=1e-4, rtol=1e-4)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    assert (lc.generate(model, prompts, 30, temperature=0, decoder=fast)
            == lc.generate(model, prompts, 30, temperature=0))


def test_a_failed_cuda_graph_capture_falls_back_with_a_warning(monkeypatch):
    """Where a graph cannot be recorded, the step says so once and runs its kernels one by one,
    with the same logits. (The failure is forced, so that it happens with or without a GPU.)"""

    def no_streams(*args, **kwargs):
        raise RuntimeError("no CUDA streams here")

    monkeypatch.setattr(torch.cuda, "Stream", no_streams)
    model = model_for("gqa")
    tokens = torch.randint(0, model.vocab_size, (1, 8))
    full = model(tokens)
    fast = FastDecoder(model, compile=True)
    cache = fast.new_cache(1, 16)
    s = cache.storage
    s["step"] = CUDAGraphStep(fast.static_step, lambda fn: s.update(step=fn))
    fast(tokens[:, :4], 0, cache)
    with pytest.warns(RuntimeWarning, match="capturing the decode step as a CUDA graph failed"):
        first = fast(tokens[:, 4:5], 4, cache)
    rest = [fast(tokens[:, t:t + 1], t, cache) for t in range(5, 8)]  # no second warning
    assert s["step"] == fast.static_step  # the recording is no longer asked for
    torch.testing.assert_close(torch.cat([first, *rest], 1), full[:, 4:], atol=1e-5, rtol=1e-5)


def test_bf16_decoder_stays_close():
    model = model_for("gqa")
    tokens = torch.randint(0, model.vocab_size, (2, 16))
    full = model(tokens)[:, -1]
    fast = FastDecoder(model.to(torch.bfloat16))  # (out, in) matrices, torch.mv per token
    out = fast(tokens, 0, fast.new_cache(2, 16))[:, 0]
    assert out.dtype == torch.float32 and (out - full).abs().max() < 0.05
    cache = fast.new_cache(1, 16)
    fast(tokens[:1, :15], 0, cache)
    step = fast(tokens[:1, 15:], 15, cache)[:, 0]  # one token: the matrix-vector path
    assert (step - full[:1]).abs().max() < 0.03 * full.abs().max()


# ---------------------------------------------------------------------------- tokens
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_fast_path_gives_the_plain_paths_tokens(model, compile):
    """Greedy and seeded sampling, a batch of different prompt lengths, EOS."""
    fast = FastDecoder(model, compile=compile)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [8], [9, 10, 11]]
    plain = lc.generate(model, prompts, 20, temperature=0)
    assert lc.generate(model, prompts, 20, temperature=0, decoder=fast) == plain
    sampled = dict(temperature=1.0, top_p=0.9, top_k=20, seed=3)
    assert (lc.generate(model, prompts, 20, decoder=fast, **sampled)
            == lc.generate(model, prompts, 20, **sampled))
    eos = plain[0][5]
    stopped = lc.generate(model, prompts, 20, temperature=0, eos_id=eos, decoder=fast)
    assert stopped == lc.generate(model, prompts, 20, temperature=0, eos_id=eos)
    assert stopped[0] == plain[0][:plain[0].index(eos)]
    assert list(lc.stream(model, [1, 2], 10, temperature=0, decoder=fast)) == \
        lc.generate(model, [[1, 2]], 10, temperature=0)[0]


def test_fast_path_slides_the_window_like_the_plain_path():
    m = model_for("gqa", max_seq_len=16)
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.3)
    prompts = [[1, 2, 3, 4, 5], [6, 7, 8]]
    fast = lc.generate(m, prompts, 50, temperature=0, decoder=FastDecoder(m))
    assert fast == lc.generate(m, prompts, 50, temperature=0) and len(fast[0]) == 50


# ---------------------------------------------------------------------------- ownership
def test_a_reused_decoder_follows_the_models_new_weights(model):
    """The user keeps the decoder; a weight update between generations is copied in."""
    fast = FastDecoder(model)
    first = lc.generate(model, [[1, 2, 3]], 15, temperature=0, decoder=fast)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    again = lc.generate(model, [[1, 2, 3]], 15, temperature=0, decoder=fast)
    assert again == lc.generate(model, [[1, 2, 3]], 15, temperature=0) and again != first
    model.to(torch.float64)
    with pytest.raises(ValueError, match="torch.float64 on cpu, but this FastDecoder was built "
                                         "for torch.float32"):
        lc.generate(model, [[1, 2, 3]], 5, decoder=fast)


def test_caches_are_kept_per_batch_size_and_nothing_lands_on_the_model(model):
    attributes, threads = dict(vars(model)).keys(), torch.get_num_threads()
    fast = FastDecoder(model, threads=1)
    lc.generate(model, [[1, 2, 3]], 5, temperature=0, decoder=fast)
    single = fast._storage[1]["k"]
    lc.generate(model, [[1, 2], [3]], 5, temperature=0, decoder=fast)
    lc.generate(model, [[1, 2, 3]], 5, temperature=0, decoder=fast)
    assert fast._storage[1]["k"] is single and 2 in fast._storage
    assert dict(vars(model)).keys() == attributes and torch.get_num_threads() == threads


def test_decoding_runs_on_the_chosen_threads_and_restores_them(model, monkeypatch):
    seen = []
    forward = FastDecoder.forward
    monkeypatch.setattr(FastDecoder, "forward",
                        lambda self, *a: seen.append(torch.get_num_threads()) or forward(self, *a))
    threads = torch.get_num_threads()
    lc.generate(model, [[1, 2]], 3, temperature=0, decoder=FastDecoder(model, threads=3))
    assert seen == [3, 3, 3] and torch.get_num_threads() == threads


def test_clear_errors():
    model = model_for("gqa")
    fast = FastDecoder(model)
    cache = fast.new_cache(1, 8)
    with pytest.raises(ValueError, match=r"positions up to 70 exceed the cache \(64\)"):
        fast(torch.zeros(1, 70, dtype=torch.long), 0, cache)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        fast.new_cache(1, 1000)
    fast.new_cache(1, 8)  # a later generation with this batch size takes the storage over
    with pytest.raises(ValueError, match="latest new_cache"):
        fast(torch.zeros(1, 1, dtype=torch.long), 0, cache)
    with pytest.raises(ValueError, match=r"threads \(0\) must be a positive integer"):
        FastDecoder(model, threads=0)
    with pytest.raises(ValueError, match="needs an lc.Transformer"):
        FastDecoder(torch.nn.Linear(2, 2))


def test_weights_are_copied_again_only_when_they_changed(model, monkeypatch):
    fast = FastDecoder(model)
    copies = []
    refresh = FastDecoder.refresh
    monkeypatch.setattr(FastDecoder, "refresh", lambda self: copies.append(1) or refresh(self))
    lc.generate(model, [[1, 2, 3]], 3, temperature=0, decoder=fast)
    assert copies == []  # unchanged weights: no copy
    with torch.no_grad():
        model.layers[1].feed_forward.w2.weight.mul_(1.5)  # one matrix, every value
    lc.generate(model, [[1, 2, 3]], 3, temperature=0, decoder=fast)
    assert copies == [1]
    wq = model.layers[0].attention.wq
    wq.weight = torch.nn.Parameter(wq.weight * 2)
    with pytest.raises(ValueError, match="new tensors since this FastDecoder was built"):
        lc.generate(model, [[1, 2, 3]], 3, decoder=fast)
