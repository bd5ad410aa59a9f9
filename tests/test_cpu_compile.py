"""llama_course/fast/cpu_compile.py: the CPU's compiled step, weights frozen into Inductor's
matrix kernels (the compiled step itself, its code and its refresh: tests/test_decoder.py)."""

import torch
from torch import fx

import llama_course as lc
from llama_course.fast import FastDecoder, cpu_compile

from references import CONFIGS, small_args


def test_mv_as_linear_is_torch_mv():
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        w, x = torch.randn(37, 19, dtype=dtype), torch.randn(19, dtype=dtype)
        got = cpu_compile.mv_as_linear(w, x)
        assert got.shape == (37,) and got.dtype == dtype
        torch.testing.assert_close(got, torch.mv(w, x), atol=tol, rtol=tol)


def test_every_mv_node_is_rewritten_and_nothing_else():
    def f(w, x, y):
        return torch.mv(w, x) + torch.mv(w, torch.relu(y)) + w.sum()

    gm = fx.symbolic_trace(f)
    assert cpu_compile.rewrite_matvecs(gm) == 2
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(cpu_compile.mv_as_linear) == 2 and torch.mv not in targets
    assert torch.relu in targets
    w, x, y = torch.randn(5, 3), torch.randn(3), torch.randn(3)
    torch.testing.assert_close(gm(w, x, y), f(w, x, y))  # the rewritten graph still runs


def test_frozen_step_holds_the_decoders_own_tensors():
    """Every matrix and gain the step reads is a buffer of the module (the same tensor, no
    copy), fused or not: freezing turns exactly those into constants."""
    model = lc.Transformer(small_args(**CONFIGS["gqa"])).eval()
    for fuse, per_layer in ((True, 6), (False, 2 + 3 + 1 + 2 + 1)):  # gains, matrices
        decoder = FastDecoder(model, fuse=fuse)
        buffers = list(cpu_compile.FrozenStep(decoder).buffers())
        assert len(buffers) == 2 + per_layer * model.params.n_layers
        read = [decoder.output, decoder.norm] + [w for lw in decoder.layers for w in lw.values()]
        flat = [t for w in read for t in (w if isinstance(w, tuple) else (w,))]
        assert {id(b) for b in buffers} == {id(t) for t in flat}


def test_frozen_step_is_the_static_step():
    model = lc.Transformer(small_args(**CONFIGS["gqa"])).eval()
    decoder = FastDecoder(model)
    cache = decoder.new_cache(1, 16)
    s = cache.storage
    args = (torch.tensor([5]), torch.tensor(0), s["ks"], s["vs"], s["positions"])
    with torch.inference_mode():
        torch.testing.assert_close(cpu_compile.FrozenStep(decoder)(*args),
                                   decoder.static_step(*args), atol=0, rtol=0)


def test_freezing_in_bf16_only(monkeypatch):
    """fp32 compiles the step as it is with the C++ wrapper; bf16 freezes it through
    `backend`, each compilation under a code object of its own."""
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: seen.append((fn, kwargs)) or fn)
    model = lc.Transformer(small_args(**CONFIGS["gqa"])).eval()
    fp32 = FastDecoder(model)
    cpu_compile.compile_step(fp32)
    assert seen == [(fp32.static_step, dict(fullgraph=True, dynamic=False,
                                            options={"cpp_wrapper": True}))]
    bf16 = FastDecoder(model.bfloat16())
    steps = [cpu_compile.compile_step(bf16) for _ in range(2)]
    (fn1, kw1), (fn2, kw2) = seen[1:]
    assert kw1 == kw2 == dict(fullgraph=True, dynamic=False, backend=cpu_compile.backend)
    assert fn1.__code__ is not fn2.__code__  # Dynamo's entries are per code object
    cache = bf16.new_cache(1, 8)
    s = cache.storage
    args = (torch.tensor([5]), torch.tensor(0), s["ks"], s["vs"], s["positions"])
    with torch.inference_mode():  # (torch.compile replaced: the frozen step runs eagerly)
        torch.testing.assert_close(steps[0](*args), bf16.static_step(*args), atol=0, rtol=0)
