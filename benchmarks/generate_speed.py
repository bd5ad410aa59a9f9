"""Generation speed: our two decoding paths against transformers, on the same weights.

    python benchmarks/generate_speed.py                      # CPU: the 0.8M and 10M models
    python benchmarks/generate_speed.py --device cuda        # + a Llama 3.2 1B-shaped model, bf16
    python benchmarks/generate_speed.py --compile            # + FastDecoder(compile=True)
                                                             #   (on CUDA: replayed as a CUDA graph)

"plain" is `lc.generate(model, ...)`: the model the notebooks build, through its own
`forward(tokens, start_pos, cache)`. "fast" is `lc.generate(model, ..., decoder=FastDecoder(model))`
(llama_course/fast/), the decoder built once, as a user would.

For each model: greedy decoding of 200 tokens after a 10-token prompt, the same random weights
loaded into `transformers.LlamaForCausalLM` (SDPA attention), the same tokens checked, the
median of several runs. Prefill is timed as generating one token; decode tokens/s is the
remaining tokens over the remaining time. Then the KV cache's speedup over re-running the whole
sequence, as the number of generated tokens grows from 64 to 1024 (plot). On a GPU every
model's decode speed is also set against the memory-bandwidth limit: the bytes a token must
read (weights and KV cache) over the bandwidth of a large device-to-device copy.

Every figure is printed with the machine's load: on a shared machine one other busy process can
slow a 2-thread PyTorch process many times over.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import llama_course as lc
from llama_course.checkpoint import meta_to_hf_state_dict

RESULTS = Path(__file__).parent / "results"

MODELS = {  # name: (preset, ModelArgs overrides)
    "0.8M": ("shakespeare-cpu", dict(max_seq_len=1024)),
    "10M": ("shakespeare-gpu", dict(max_seq_len=1024)),
    "1B-shaped": ("llama3.2-1b", dict(max_seq_len=2048, max_batch_size=1)),
}


def build(name: str, device: str, dtype: torch.dtype):
    """Our model with seeded random weights, wide enough that greedy choices are clear-cut,
    and transformers' LlamaForCausalLM holding the same weights."""
    import transformers
    transformers.logging.set_verbosity_error()
    preset, overrides = MODELS[name]
    args = lc.get_preset(preset, **overrides)
    torch.manual_seed(0)
    model = lc.Transformer(args)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(std=0.5 / p.shape[1] ** 0.5)  # peaked next-token distributions
    model = model.to(device=device, dtype=dtype).eval()
    a = args
    config = transformers.LlamaConfig(
        hidden_size=a.dim, intermediate_size=a.ffn_hidden_dim, num_hidden_layers=a.n_layers,
        num_attention_heads=a.n_heads, num_key_value_heads=a.kv_heads, vocab_size=a.vocab_size,
        rms_norm_eps=a.norm_eps, rope_theta=a.rope_theta,
        rope_scaling=None if a.rope_scaling is None else {"rope_type": "llama3", **a.rope_scaling},
        max_position_embeddings=a.max_seq_len, tie_word_embeddings=a.tie_word_embeddings,
        attn_implementation="sdpa")
    hf = transformers.LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    missing, unexpected = hf.load_state_dict(meta_to_hf_state_dict(model.state_dict(), args),
                                             strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    hf.generation_config.eos_token_id = None  # random weights: never stop early,
    hf.generation_config.bos_token_id = None  # and no min-length logits processor
    return model, hf


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> tuple[float, list]:
    times, out = [], None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def ours(model, prompt, n, use_cache=True, decoder=None):
    return lc.generate(model, [prompt], n, temperature=0, use_cache=use_cache, decoder=decoder)[0]


@torch.inference_mode()
def theirs(hf, prompt, n, use_cache=True):
    ids = torch.tensor([prompt], device=hf.device)
    out = hf.generate(ids, max_new_tokens=n, do_sample=False, use_cache=use_cache,
                      pad_token_id=0)
    return out[0, len(prompt):].tolist()


def agreeing(a: list[int], b: list[int]) -> int:
    """How many tokens two greedy generations share before they first differ. In bf16 two
    correct implementations round differently, and a near-tie between two tokens can then go
    either way: from there on the texts differ, so the count says where, not whether."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def measure(name: str, device: str, dtype: torch.dtype, repeats: int, new_tokens: int,
            compile: bool, no_uncached: bool = False) -> list[dict]:
    model, hf = build(name, device, dtype)
    prompt = list(range(1, 11))
    fast = lc.FastDecoder(model)
    runs = {
        "ours, fast path": lambda n: ours(model, prompt, n, decoder=fast),
        "ours, plain path": lambda n: ours(model, prompt, n),
        "ours, no cache": lambda n: ours(model, prompt, n, use_cache=False),
        "transformers, KV cache": lambda n: theirs(hf, prompt, n),
        "transformers, no cache": lambda n: theirs(hf, prompt, n, use_cache=False),
    }
    if compile:
        compiled = lc.FastDecoder(model, compile=True)
        runs["ours, fast path, compiled"] = lambda n: ours(model, prompt, n, decoder=compiled)
    if name == "1B-shaped" or no_uncached:  # e.g. 200 tokens of a 1B model without a cache
        runs = {k: v for k, v in runs.items() if "no cache" not in k}
    for fn in runs.values():
        fn(new_tokens)  # warm-up (and compilation)
    # Interleaved: every repeat times each run once, back to back, so that a drift in the
    # machine's speed hits all of them alike; the ratios are taken within a repeat.
    first = {label: [] for label in runs}
    total = {label: [] for label in runs}
    tokens = {}
    for _ in range(repeats):
        for label, fn in runs.items():
            first[label].append(timed(lambda: fn(1), device, 1)[0])
            t, tokens[label] = timed(lambda: fn(new_tokens), device, 1)
            total[label].append(t)
    decode = {label: [(new_tokens - 1) / max(t - f, 1e-9) for f, t in zip(first[label], total[label])]
              for label in runs}
    hf = decode["transformers, KV cache"]
    reference = tokens["ours, plain path"]
    rows = []
    for label in runs:
        rows.append({
            "model": name, "parameters": model.num_parameters(), "dtype": str(dtype)[6:],
            "run": label, "prefill_tok_s": len(prompt) / statistics.median(first[label]),
            "decode_tok_s": statistics.median(decode[label]),
            "vs_transformers": statistics.median(d / h for d, h in zip(decode[label], hf)),
            "total_s": statistics.median(total[label]), "same_tokens": tokens[label] == reference,
            "agreeing_tokens": agreeing(tokens[label], reference),
        })
        r = rows[-1]
        r["loadavg_1min"] = round(os.getloadavg()[0], 2)
        print(f"  {name:>9} {label:<26} prefill {r['prefill_tok_s']:9,.0f} tok/s   decode "
              f"{r['decode_tok_s']:9,.0f} tok/s = {r['vs_transformers']:4.2f}x transformers'   "
              f"same tokens: {r['same_tokens']} ({r['agreeing_tokens']} agree)   "
              f"load {r['loadavg_1min']}", flush=True)
    if device.startswith("cuda"):
        bandwidth_report(rows, model, device, len(prompt), new_tokens)
    return rows


def copy_bandwidth(device: str, gib: float = 1.0, repeats: int = 10) -> float:
    """Bytes per second of a large device-to-device copy (bytes read + bytes written): the
    memory bandwidth a decoder can hope for, measured instead of taken from a datasheet."""
    src = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    seconds, _ = timed(lambda: dst.copy_(src), device, repeats)
    return 2 * src.numel() / seconds


def bytes_per_token(model, prompt_len: int, new_tokens: int) -> tuple[int, int]:
    """The least a decode step must read from memory: every weight once (the embedding table
    only if the output head reuses it; otherwise one row of it, nothing) and the keys and
    values of the positions so far, on average over the generation. Returns (weights, cache)."""
    a = model.params
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if not a.tie_word_embeddings:
        weights -= model.tok_embeddings.weight.numel() * model.tok_embeddings.weight.element_size()
    per_position = 2 * a.n_layers * a.kv_heads * a.head_dim * model.tok_embeddings.weight.element_size()
    return weights, per_position * (prompt_len + new_tokens // 2)


def bandwidth_report(rows: list[dict], model, device: str, prompt_len: int,
                     new_tokens: int) -> None:
    """Decode tokens/s against the memory-bandwidth limit: bytes per token / bandwidth."""
    bandwidth = copy_bandwidth(device)
    weights, cache = bytes_per_token(model, prompt_len, new_tokens)
    limit = bandwidth / (weights + cache)
    print(f"  bandwidth limit: {weights / 1e9:.3f} GB of weights + {cache / 1e6:.1f} MB of KV "
          f"cache per token, copy bandwidth {bandwidth / 1e12:.2f} TB/s -> at most "
          f"{limit:,.0f} tok/s", flush=True)
    for r in rows:
        r.update(bytes_per_token=weights + cache, copy_bandwidth=bandwidth, limit_tok_s=limit,
                 of_limit=r["decode_tok_s"] / limit)
        print(f"  {r['model']:>9} {r['run']:<26} {r['decode_tok_s']:9,.0f} tok/s = "
              f"{r['of_limit']:.0%} of the bandwidth limit", flush=True)


def cache_speedup(device: str, dtype: torch.dtype, lengths: list[int]) -> list[dict]:
    """Seconds to generate n tokens with and without the cache (our generate, 0.8M model)."""
    model, _ = build("0.8M", device, dtype)
    prompt = list(range(1, 11))
    rows = []
    for n in lengths:
        t_cache, a = timed(lambda: ours(model, prompt, n), device, 3)
        t_none, b = timed(lambda: ours(model, prompt, n, use_cache=False), device, 1)
        rows.append({"tokens": n, "cache_s": t_cache, "no_cache_s": t_none,
                     "speedup": t_none / t_cache, "same_tokens": a == b})
        print(f"  {n:5d} tokens: cache {t_cache:7.3f} s, no cache {t_none:7.3f} s, "
              f"speedup {t_none / t_cache:5.1f}x, same tokens: {a == b}", flush=True)
    return rows


def plot_speedup(rows: list[dict], path: Path, machine: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    n = [r["tokens"] for r in rows]
    ax1.plot(n, [r["no_cache_s"] for r in rows], "o-", label="no cache: the whole sequence again")
    ax1.plot(n, [r["cache_s"] for r in rows], "o-", label="KV cache: one new token per step")
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_xlabel("tokens generated")
    ax1.set_ylabel("seconds")
    ax1.legend()
    ax1.grid(alpha=0.3)
    ax2.plot(n, [r["speedup"] for r in rows], "o-", color="C2")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("tokens generated")
    ax2.set_ylabel("speedup of the KV cache (x)")
    ax2.grid(alpha=0.3)
    fig.suptitle(f"KV cache vs recomputation, 0.8M-parameter Llama ({machine})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def machine(device: str) -> dict:
    load = os.getloadavg()
    info = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "loadavg_1min": round(load[0], 2), "cpu_count": os.cpu_count()}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=200)
    p.add_argument("--compile", action="store_true", help="also time the compiled decode step")
    p.add_argument("--models", nargs="*", help="subset of: " + ", ".join(MODELS))
    p.add_argument("--lengths", type=int, nargs="*", default=[64, 128, 256, 512, 1024])
    p.add_argument("--tag", default=None, help="suffix of the result files (default: device)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for every run (default: PyTorch's); the fast path "
                   "keeps its own setting (1 thread for a small CPU model)")
    p.add_argument("--no-uncached", action="store_true", help="skip the runs without a cache")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    cuda = a.device.startswith("cuda")
    names = a.models or ([*MODELS] if cuda else ["0.8M", "10M"])
    info = machine(a.device)
    print(f"machine: {info}")
    rows = []
    for name in names:
        dtype = torch.bfloat16 if name == "1B-shaped" else torch.float32
        rows += measure(name, a.device, dtype, a.repeats, a.new_tokens, a.compile,
                        a.no_uncached)
    growth = cache_speedup(a.device, torch.float32, a.lengths) if a.lengths else []
    info["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    tag = a.tag or ("cuda" if cuda else "cpu")
    RESULTS.mkdir(exist_ok=True)
    out = {"machine": info, "command": "python benchmarks/generate_speed.py " +
           " ".join(os.sys.argv[1:]), "decode": rows, "cache_speedup": growth}
    (RESULTS / f"generate_speed_{tag}.json").write_text(json.dumps(out, indent=1))
    if growth:
        plot_speedup(growth, RESULTS / f"kv_cache_speedup_{tag}.png",
                     info.get("gpu", f"{info['threads']} CPU threads"))
    print(f"results in {RESULTS}/generate_speed_{tag}.json")


if __name__ == "__main__":
    main()
