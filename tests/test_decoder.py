"""The fast decoding path computes the model's logits: prefill, single steps, static steps."""

import pytest
import torch

import llama_course as lc
from llama_course.decoder import Decoder

from references import CONFIGS, small_args


def model_for(name):
    m = lc.Transformer(small_args(**CONFIGS[name])).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return m


@pytest.mark.parametrize("fuse", [True, False], ids=["fused-transposed", "model-matrices"])
@pytest.mark.parametrize("name", ["mha", "gqa", "mqa", "tied", "rope_scaling", "odd_ffn"])
def test_prefill_then_steps_equal_full_forward(name, fuse):
    model = model_for(name)
    tokens = torch.randint(0, model.vocab_size, (3, 30))
    full = model(tokens)  # (B, T, V)
    dec = Decoder(model, batch_size=3, max_seq_len=40, fuse=fuse)
    got = [dec(tokens[:, :10], 0)]  # prefill: logits of position 9
    got += [dec(tokens[:, 10:14], 10)]  # a chunk after a cached prefix
    got += [dec(tokens[:, t:t + 1], t) for t in range(14, 30)]
    want = torch.stack([full[:, 9], full[:, 13], *[full[:, t] for t in range(14, 30)]])
    torch.testing.assert_close(torch.stack(got), want, atol=1e-5, rtol=1e-5)


def test_static_step_equals_full_forward():
    model = model_for("gqa")
    tokens = torch.randint(0, model.vocab_size, (2, 20))
    full = model(tokens)
    dec = Decoder(model, batch_size=2, max_seq_len=32)
    dec(tokens[:, :5], 0)
    steps = [dec.step(tokens[:, t], torch.tensor(t)) for t in range(5, 20)]
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 5:], atol=1e-5, rtol=1e-5)


def test_compiled_step_equals_eager():
    """torch.compile of the static step (on CUDA it also becomes a CUDA graph)."""
    model = model_for("gqa")
    tokens = torch.randint(0, model.vocab_size, (1, 12))
    full = model(tokens)
    dec = Decoder(model, batch_size=1, max_seq_len=16, compile=True)
    dec(tokens[:, :4], 0)
    steps = [dec.step(tokens[:, t], torch.tensor(t)) for t in range(4, 12)]
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 4:], atol=1e-4, rtol=1e-4)
    assert dec.compiled  # still the compiled step: no silent fallback to eager


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need an NVIDIA GPU")
def test_cuda_graph_step_equals_full_forward():
    """GPU only (CI has none; run on the H100, see the README): the compiled step, recorded as a
    CUDA graph and replayed, gives the model's logits at every position, batched, and each
    replay returns its own tensor."""
    model = model_for("gqa").cuda()
    tokens = torch.randint(0, model.vocab_size, (2, 24), device="cuda")
    full = model(tokens)  # (B, T, V)
    dec = Decoder(model, batch_size=2, max_seq_len=32, compile=True)
    dec(tokens[:, :6], 0)
    steps = [dec.step(tokens[:, t], torch.tensor(t, device="cuda")) for t in range(6, 24)]
    assert dec.cuda_graph and dec.compiled  # replayed, not a silent fallback
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 6:], atol=1e-4, rtol=1e-4)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    assert (lc.generate(model, prompts, 30, temperature=0, compile=True)
            == lc.generate(model, prompts, 30, temperature=0))


def test_a_failed_cuda_graph_capture_falls_back_with_a_warning(monkeypatch):
    """Where a graph cannot be recorded, the step says so once and runs its kernels one by one,
    with the same logits. (The failure is forced, so that it happens with or without a GPU.)"""
    from llama_course.decoder import CUDAGraphStep

    def no_streams(*args, **kwargs):
        raise RuntimeError("no CUDA streams here")

    monkeypatch.setattr(torch.cuda, "Stream", no_streams)
    model = model_for("gqa")
    tokens = torch.randint(0, model.vocab_size, (1, 8))
    full = model(tokens)
    dec = Decoder(model, batch_size=1, max_seq_len=16)
    dec._step = CUDAGraphStep(dec, dec._static_step)
    dec(tokens[:, :4], 0)
    with pytest.warns(RuntimeWarning, match="capturing the decode step as a CUDA graph failed"):
        first = dec.step(tokens[:, 4], torch.tensor(4))
    rest = [dec.step(tokens[:, t], torch.tensor(t)) for t in range(5, 8)]  # no second warning
    assert not dec.cuda_graph
    torch.testing.assert_close(torch.stack([first, *rest], 1), full[:, 4:], atol=1e-5, rtol=1e-5)


def test_bf16_decoder_stays_close():
    model = model_for("gqa")
    tokens = torch.randint(0, model.vocab_size, (2, 16))
    full = model(tokens)[:, -1]
    dec = Decoder(model.to(torch.bfloat16), batch_size=2, max_seq_len=16)
    out = dec(tokens, 0)
    assert out.dtype == torch.float32 and (out - full).abs().max() < 0.05


def test_cache_overflow_is_a_clear_error():
    dec = Decoder(model_for("gqa"), batch_size=1, max_seq_len=8)
    with pytest.raises(ValueError, match=r"positions up to 10 exceed the decoder's cache \(8\)"):
        dec(torch.zeros(1, 10, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        Decoder(model_for("gqa"), batch_size=1, max_seq_len=1000)
