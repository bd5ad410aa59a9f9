"""The Llama 3 model: TransformerBlock and Transformer, with Meta's state-dict names.

A block is two pre-norm residual branches:

    h   = x + attention(attention_norm(x))
    out = h + feed_forward(ffn_norm(h))

Normalising the *input* of each branch (pre-norm) instead of the sum (the original
Transformer's post-norm) keeps an unobstructed residual path from the embeddings to the output,
which is what lets deep stacks train without warm-up tricks. After the last block a final
RMSNorm and a linear head turn each position's vector into logits over the vocabulary.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention, KVCache, Mask, causal_mask
from .config import ModelArgs
from .ffn import FeedForward
from .norm import RMSNorm
from .rope import precompute_freqs_cis


class TransformerBlock(nn.Module):
    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden_dim)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.dropout = args.dropout  # 0 for Llama: only the small-data presets train with it

    def forward(self, x: torch.Tensor, start_pos: int, freqs_cis: torch.Tensor,
                mask: Mask, cache: Optional[KVCache] = None) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x), start_pos, freqs_cis, mask, cache)
        ffn = self.feed_forward(self.ffn_norm(h))  # (B, T, dim)
        return h + F.dropout(ffn, self.dropout, self.training)  # (B, T, dim)


class Transformer(nn.Module):
    """Llama 3. `model(tokens)` -> float32 logits (B, T, vocab_size), a full causal forward."""

    def __init__(self, params: ModelArgs):
        super().__init__()
        if not isinstance(params, ModelArgs):
            raise ValueError(f"Transformer expects a ModelArgs, got {type(params).__name__}")
        self.params = params
        self.vocab_size = params.vocab_size
        self.n_layers = params.n_layers
        self.tok_embeddings = nn.Embedding(params.vocab_size, params.dim)
        self.layers = nn.ModuleList(TransformerBlock(i, params) for i in range(params.n_layers))
        self.norm = RMSNorm(params.dim, eps=params.norm_eps)
        self.output = nn.Linear(params.dim, params.vocab_size, bias=False)
        if params.tie_word_embeddings:
            self.output.weight = self.tok_embeddings.weight  # one matrix, used twice
        self._freqs_cis: dict[torch.device, torch.Tensor] = {}
        self.reset_parameters()

    # ------------------------------------------------------------------ initialisation
    def reset_parameters(self) -> None:
        """N(0, 0.02) for every matrix (GPT-2's choice), norms at 1, and the two projections
        that write into the residual stream (wo, w2) scaled by 1/sqrt(2 * n_layers), so the
        stream's variance does not grow with depth."""
        for name, p in self.named_parameters():
            if p.dim() == 1:
                nn.init.ones_(p)
            elif name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.n_layers))
            else:
                nn.init.normal_(p, mean=0.0, std=0.02)

    # ------------------------------------------------------------------ helpers
    def freqs_cis(self, device: torch.device) -> torch.Tensor:
        """RoPE table for every position < max_seq_len, built once per device, always fp32.

        Kept out of the state dict and out of `model.to(dtype)`: rounding angles to bf16
        would shift the positions of far tokens.
        """
        if device not in self._freqs_cis:
            p = self.params
            with torch.inference_mode(False):  # a normal tensor even if first built by generate()
                table = precompute_freqs_cis(p.head_dim, p.max_seq_len, p.rope_theta,
                                             p.rope_scaling)
                self._freqs_cis[device] = table.to(device)
        return self._freqs_cis[device]

    def new_cache(self, batch_size: int, max_seq_len: Optional[int] = None) -> list[KVCache]:
        """A fresh, zeroed KV cache (one per layer) for one generation."""
        p = self.params
        max_seq_len = p.max_seq_len if max_seq_len is None else max_seq_len
        if batch_size > p.max_batch_size:
            raise ValueError(f"batch size ({batch_size}) exceeds max_batch_size "
                             f"({p.max_batch_size})")
        w = self.tok_embeddings.weight
        return [KVCache(batch_size, max_seq_len, p.kv_heads, p.head_dim, w.dtype, w.device)
                for _ in range(p.n_layers)]

    def num_parameters(self) -> int:
        """Parameters actually held (a tied matrix counted once)."""
        return sum(p.numel() for p in self.parameters())

    def _check_tokens(self, tokens: torch.Tensor, start_pos: int) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens)
            raise ValueError(f"tokens must be a 2-D LongTensor (B, T), got {shape}")
        if tokens.dtype not in (torch.long, torch.int32):
            raise ValueError(f"tokens must hold integer ids, got dtype {tokens.dtype}")
        end = start_pos + tokens.shape[1]
        if tokens.shape[1] == 0 or end > self.params.max_seq_len:
            raise ValueError(f"tokens cover positions {start_pos}..{end - 1}, outside the model's "
                             f"context max_seq_len ({self.params.max_seq_len})")
        if torch.compiler.is_compiling():
            return  # the value check below reads the tensor: it would split a compiled graph
        if tokens.device.type == "cpu" and tokens.numel():  # a range check on GPU would sync
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.vocab_size:
                bad = lo if lo < 0 else hi
                raise ValueError(f"token id {bad} is outside the vocabulary "
                                 f"(vocab_size {self.vocab_size})")

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(cls, path, device=None, dtype=None) -> "Transformer":
        """Load a model folder (Hugging Face Llama, Meta, or one this package saved) or a
        llama-architecture GGUF file (llama.cpp, Ollama), dequantised into `dtype`."""
        from .checkpoint import load_pretrained
        return load_pretrained(cls, path, device=device, dtype=dtype)

    def save_pretrained(self, path, dtype=None, max_shard_size=None):
        """Write a Hugging Face-format folder (config.json + model.safetensors)."""
        from .checkpoint import save_pretrained
        return save_pretrained(self, path, dtype=dtype, max_shard_size=max_shard_size)

    # ------------------------------------------------------------------ forward
    def forward(self, tokens: torch.Tensor, start_pos: int = 0,
                cache: Optional[list[KVCache]] = None) -> torch.Tensor:
        """tokens (B, T) at positions start_pos.. -> float32 logits (B, T, vocab_size).

        Without `cache` this is one full causal pass (training, evaluation, prefill). With a
        cache from `new_cache`, keys/values are stored and earlier ones reused: decoding.
        """
        self._check_tokens(tokens, start_pos)
        T = tokens.shape[1]
        h = self.tok_embeddings(tokens)  # (B, T, dim)
        freqs_cis = self.freqs_cis(tokens.device)[start_pos:start_pos + T]  # (T, head_dim/2)
        mask = None  # one new token sees every cached one
        if T > 1 and (cache is None or start_pos == 0):  # the keys are these T tokens alone:
            mask = "causal"  # the plain triangle, which the attention kernel knows
        elif T > 1:  # a chunk after cached positions: it sees all of them, then a triangle
            mask = causal_mask(T, start_pos, tokens.device)  # (T, start_pos + T)
        for i, layer in enumerate(self.layers):
            h = layer(h, start_pos, freqs_cis, mask, None if cache is None else cache[i])
        h = self.norm(h)  # (B, T, dim)
        return self.output(h).float()  # (B, T, vocab_size)

    def attention_weights(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Run a forward through the explicit attention path and return each layer's
        attention maps, (B, n_heads, T, T) per layer: what each head looks at."""
        for layer in self.layers:
            layer.attention.keep_weights = True
        try:
            with torch.no_grad():  # maps for plots: no graph to keep
                self(tokens)
            return [layer.attention.last_weights for layer in self.layers]
        finally:
            for layer in self.layers:
                layer.attention.keep_weights = False
                layer.attention.last_weights = None


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Dropout off while the model predicts (measuring a loss, generating), then the model's
    own mode back. In training mode the output is that of a randomly thinned network: noisy,
    and worse than what the model itself predicts."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
