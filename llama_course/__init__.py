"""llama_course: Llama 3 built from scratch in plain PyTorch, one concept per module.

The modules follow the course's notebooks:

    config     ModelArgs, presets, parameter and memory arithmetic   (notebook 01)
    tokenizer  CharTokenizer with Llama 3's special tokens            (notebook 07)
    norm       RMSNorm                                                (notebook 02)
    rope       rotary position embeddings, both layouts               (notebook 03)
    attention  grouped-query attention and the KV cache               (notebook 04)
    ffn        the SwiGLU feed-forward network                        (notebook 05)
    model      TransformerBlock and Transformer                       (notebook 06)
    generate   sampling and the decoding loop                         (notebooks 06-07)
    fast       FastDecoder, the opt-in fast decoding path (fused weights, CUDA graphs)
    data       Tiny Shakespeare, the split, next-token batches        (notebook 07)
    optim      Muon, and the optimizer of a run (groups, set_lr)      (notebook 07)
    train_config  TrainConfig and the training presets                (notebook 07)
    training   the schedule, train_step, evaluation, train()          (notebook 07)
    runtime    device, precision, torchrun, stop signals (plumbing)   (notebook 07)
    run_folder checkpoints, metrics.csv, the loss plot, the summary   (notebook 07)
    checkpoint loading and saving real checkpoints: the front door   (notebook 08)
    convert    Meta <-> Hugging Face names, q/k layout, config files  (notebook 08)
    formats    one unit per format: hf, meta, course, gguf (plumbing) (notebook 08)
    gguf_tokenizer  a GGUF file's byte-level BPE and chat format      (notebook 08)
    tensor_io  lazy tensor sources, safetensors writing, atomic writes (plumbing)
    llama3_tokenizer  Meta's Llama 3 BPE tokenizer and chat format     (notebook 08)
    artifacts  the real SmolLM2 GGUF and Meta's tokenizer, fetched once (notebook 08)
    checks     the exercises' checkers, one module per notebook       (notebooks 01-08)
    viz        the architecture drawing, plots, sliders               (notebooks 01-08)
    classroom  student copies and autograding with nbgrader (instructors; not imported here)
"""

from .attention import Attention, KVCache, causal_mask, explicit_attention, repeat_kv, sdpa_attention
from .checkpoint import (args_from_hf_config, args_to_hf_config, hf_to_meta_state_dict,
                         meta_to_hf_state_dict)
from .config import (PRESETS, ModelArgs, get_preset, kv_cache_bytes, kv_cache_bytes_per_token,
                     num_parameters, parameter_breakdown, weight_bytes)
from .data import (encode_text, epoch_window_starts, eval_windows, get_batch,
                   load_tiny_shakespeare, train_val_split)
from .ffn import FeedForward, ffn_hidden_dim
from .generate import generate, next_token_probs, sample_next, stream
from .fast import FastDecoder
from .model import Transformer, TransformerBlock
from .norm import RMSNorm
from .rope import (apply_rotary_emb, apply_rotary_emb_rotate_half, apply_scaling,
                   permute_qk_hf_to_meta, permute_qk_meta_to_hf, precompute_cos_sin,
                   precompute_freqs_cis, rotate_half)
from .tokenizer import CharTokenizer
from .llama3_tokenizer import Llama3Tokenizer  # needs tiktoken only when used
from .gguf_tokenizer import GGUFTokenizer  # a GGUF file's own vocabulary (needs regex)
from . import artifacts  # the real SmolLM2 GGUF and Meta's tokenizer, fetched once
from .checkpoint import args_from_meta_params, detect_format, save_meta
from .train_config import TRAIN_PRESETS, TrainConfig, train_config_for
from .training import (TrainResult, estimate_loss, evaluate, lr_at, next_token_loss, train,
                       train_step)

from . import checks, viz  # (lc.checks.check_..., lc.viz.explore in the notebooks)

__version__ = "0.1.0"

__all__ = [
    # the model and its pieces (notebooks 01-06)
    "ModelArgs", "PRESETS", "get_preset", "num_parameters", "parameter_breakdown",
    "weight_bytes", "kv_cache_bytes", "kv_cache_bytes_per_token", "RMSNorm",
    "precompute_freqs_cis", "precompute_cos_sin", "apply_scaling", "apply_rotary_emb",
    "apply_rotary_emb_rotate_half", "rotate_half", "permute_qk_meta_to_hf",
    "permute_qk_hf_to_meta", "Attention", "KVCache", "causal_mask", "explicit_attention",
    "sdpa_attention", "repeat_kv", "FeedForward", "ffn_hidden_dim", "Transformer",
    "TransformerBlock",
    # generation (06-07), and the opt-in fast path
    "generate", "stream", "sample_next", "next_token_probs", "FastDecoder",
    # data and training (07)
    "CharTokenizer", "load_tiny_shakespeare", "encode_text", "train_val_split", "get_batch",
    "epoch_window_starts",
    "eval_windows", "TrainConfig", "TRAIN_PRESETS", "train_config_for", "lr_at",
    "next_token_loss", "train_step", "estimate_loss", "evaluate", "train", "TrainResult",
    # real checkpoints and tokenizers (08)
    "detect_format", "save_meta", "args_from_hf_config", "args_to_hf_config",
    "args_from_meta_params", "meta_to_hf_state_dict", "hf_to_meta_state_dict",
    "Llama3Tokenizer", "GGUFTokenizer", "artifacts",
    # notebook helpers
    "checks", "viz",
]
