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
    decoder    the fast decoding path: fused weights, preallocated cache (notebook 06)
    data       Tiny Shakespeare, the split, next-token batches        (notebook 07)
    optim      Muon, the optimizer of the blocks' matrices            (notebook 07)
    train      the training loop, checkpoints, metrics                (notebook 07)
    checkpoint Meta <-> Hugging Face layouts, loading and saving      (notebook 08)
"""

from .attention import Attention, KVCache, causal_mask, explicit_attention, repeat_kv, sdpa_attention
from .checkpoint import (args_from_hf_config, args_to_hf_config, hf_to_meta_state_dict,
                         meta_to_hf_state_dict)
from .config import (PRESETS, ModelArgs, get_preset, kv_cache_bytes, kv_cache_bytes_per_token,
                     num_parameters, parameter_breakdown, weight_bytes)
from .data import encode_text, eval_windows, get_batch, load_tiny_shakespeare, train_val_split
from .ffn import FeedForward, ffn_hidden_dim
from .generate import generate, next_token_probs, sample_next, stream
from .model import Transformer, TransformerBlock
from .norm import RMSNorm
from .rope import (apply_rotary_emb, apply_rotary_emb_rotate_half, apply_scaling,
                   permute_qk_hf_to_meta, permute_qk_meta_to_hf, precompute_cos_sin,
                   precompute_freqs_cis, rotate_half)
from .tokenizer import CharTokenizer
from .llama3_tokenizer import Llama3Tokenizer  # needs tiktoken only when used
from .checkpoint import args_from_meta_params, detect_format, save_meta
from .train import TrainConfig, TrainResult, evaluate, train_config_for  # lc.train is the module

from . import checks, viz  # (lc.checks.check_..., lc.viz.explore in the notebooks)

__version__ = "0.1.0"
