"""The fast decoding path, apart from the course's modules: `FastDecoder` (fused weights, a
preallocated KV cache, optionally a compiled step: on a GPU replayed as a CUDA graph, on the
CPU with its weights frozen into Inductor's matrix kernels). Opt-in:

    fast = lc.FastDecoder(model)
    lc.generate(model, prompts, 20, temperature=0, decoder=fast)  # the same tokens, faster
"""

from .cuda_graph import CUDAGraphStep
from .decoder import FastCache, FastDecoder, rms_norm, rope_real

__all__ = ["FastDecoder", "FastCache", "CUDAGraphStep", "rms_norm", "rope_real"]
