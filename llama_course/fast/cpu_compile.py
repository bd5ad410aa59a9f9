"""Compiling the one-token step for the CPU: in bf16, weights frozen into Inductor's kernels.

`FastDecoder(model, compile=True)` on the CPU compiles its static step through `compile_step`
below. Always with Inductor's C++ wrapper (`cpp_wrapper`): the step's kernels are called from
generated C++, not one Python call each; eagerly those calls cost SmolLM2-135M 4 - 5 ms of a
20 ms token. In bf16 (and fp16) also:

* Freezing: the step is a module (`FrozenStep`) that owns the decoder's matrices as buffers,
  compiled with Inductor's `freezing` under inference mode, so they become constants of the
  compiled code. Only a constant matrix can be repacked, once, into the blocked layout of
  Inductor's C++ matrix kernel (its "GEMM template", AMX tiles on CPUs that have them).
* `max_autotune`: Inductor times that kernel against oneDNN's for each matrix shape while it
  compiles and keeps the faster. Every `torch.mv(W, x)` of the traced step is first rewritten
  as `F.linear(x, W)`, the matrix product those kernels serve.

Why: a one-token step is nothing but matrix-vector products over every weight. For SmolLM2's
matrices in bf16, PyTorch's eager `torch.mv` reads 18.5 GB/s, the frozen kernels 23.7 GB/s;
in fp32 `x @ W` on the transposed layout (what the fp32 step runs) reads 28.8 GB/s and the
frozen kernels 26.3, so fp32 is compiled without freezing (`benchmarks/matvec_kernels.py`).
The price in bf16: compiling takes about a minute for SmolLM2 (timing the kernels included),
the frozen constants are one more copy of the weights, and new weights need a new compilation:
`FastDecoder.refresh` drops the compiled step when the weights change.
"""

from __future__ import annotations

import types
import warnings

import torch
import torch.nn.functional as F
from torch import fx, nn


def mv_as_linear(matrix: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """`torch.mv(matrix, vector)` as a one-row matrix product: (out, in) @ (in,) -> (out,)."""
    return F.linear(vector[None], matrix)[0]  # (1, in) x (out, in)^T -> (out,)


def rewrite_matvecs(gm: fx.GraphModule) -> int:
    """Rewrite every `torch.mv` node of a traced graph into `mv_as_linear`, in place; returns
    how many it rewrote."""
    count = 0
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is torch.mv:
            node.target = mv_as_linear
            count += 1
    gm.recompile()
    return count


def backend(gm: fx.GraphModule, example_inputs: list) -> object:
    """A `torch.compile` backend: Inductor with its C++ wrapper and autotuned matrix kernels,
    after `rewrite_matvecs`. Used through `compile_frozen`, which turns freezing on."""
    from torch._inductor.compile_fx import compile_fx
    rewrite_matvecs(gm)
    options = {"cpp_wrapper": True, "max_autotune": True,  # freezing: set by compile_frozen
               "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}
    with warnings.catch_warnings():  # Inductor's autotuner calls a deprecated storage API
        warnings.filterwarnings("ignore", message="TypedStorage is deprecated")
        return compile_fx(gm, example_inputs, config_patches=options)


class FrozenStep(nn.Module):
    """A FastDecoder's `static_step` as a module that holds the decoder's matrices and gains
    as buffers (the same tensors, not copies), which freezing turns into constants."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = [decoder]  # in a list: a plain attribute, not a submodule
        weights = {"output": decoder.output, "norm": decoder.norm}
        for i, lw in enumerate(decoder.layers):
            weights.update({f"layer{i}_{name}": w for name, w in lw.items()})
        for name, w in weights.items():  # an unfused decoder holds tuples of matrices
            for j, part in enumerate(w if isinstance(w, tuple) else (w,)):
                self.register_buffer(f"{name}_{j}", part)

    def forward(self, token, pos, cache_k, cache_v, positions) -> torch.Tensor:
        return self.decoder[0].static_step(token, pos, cache_k, cache_v, positions)


def compile_frozen(module: nn.Module):
    """`module` compiled with `backend`, its buffers frozen: call the result under inference
    mode (freezing needs gradients off while the step is traced, and Dynamo reads the option
    then, so every call runs with it on).

    Dynamo keeps what it compiled per Python code object, and frozen weights are checked by
    identity only, not by value. So every compilation gets a code object of its own: the
    compiled code lives and dies with the function returned here, one decoder's entries never
    crowd another's (Dynamo keeps at most 8 per code object), and a decoder whose weights
    changed in place (`FastDecoder.refresh`) cannot find its old step still valid."""
    def call(*args):
        return module(*args)

    own = types.FunctionType(call.__code__.replace(), call.__globals__, "frozen_step",
                             closure=call.__closure__)  # the same function, a new code object
    compiled = torch.compile(own, fullgraph=True, dynamic=False, backend=backend)

    def frozen_step(*args):
        with torch._inductor.config.patch(freezing=True):  # read while tracing, not after
            return compiled(*args)
    return frozen_step


def compile_step(decoder):
    """The decoder's static step compiled: fp32 with the C++ wrapper only, bf16 (and fp16)
    with its weights frozen (`compile_frozen`). Call it under inference mode."""
    if decoder.dtype == torch.float32:  # freezing does not pay in fp32 (see the top)
        return torch.compile(decoder.static_step, fullgraph=True, dynamic=False,
                             options={"cpp_wrapper": True})
    return compile_frozen(FrozenStep(decoder))
