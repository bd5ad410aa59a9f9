"""Mutation testing of the course's modules: do the tests notice a planted bug?

mutmut 3 rewrites every function of a module into many copies, each with one small change (a
`+` for a `-`, `< ` for `<=`, a constant off by one, an argument dropped...), then runs the
tests that call that function once per copy. A copy that no test fails on is a *survivor*:
either a gap in the tests or an equivalent change (the same behaviour by construction).
`benchmarks/results/mutants_survivors.md` lists the survivors and what was done with each.

    python benchmarks/mutants.py                 # every module (about an hour on 2 busy cores)
    python benchmarks/mutants.py norm rope       # some modules
    python benchmarks/mutants.py --label after   # the results file's name
    make mutants                                 # the same as the first line

Each module runs in its own folder, build/mutants/<module>/ (a copy of llama_course/ and
tests/ plus the mutmut settings), with ONLY the test files of TARGETS below: that is what keeps
a module to minutes. mutmut keeps one warm process (torch imported once) and forks it per
mutant, running only the tests that reach the mutated function. After a restructuring of the
package, edit TARGETS and nothing else.

Not mutated, by the tool's design (mutmut 3): code outside functions (module constants such as
checkpoint's name maps, dataclass defaults) and decorated functions other than static- and
classmethods (`@torch.no_grad()`, `@torch.inference_mode()`, `@property`,
`@contextlib.contextmanager`). The JSON lists those functions per module ("not_mutated") so the
gap stays visible.

Writes benchmarks/results/mutants_<label>.json and prints a table.
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "llama_course"

# ---------------------------------------------------------------------------------------------
# THE table: module -> the source file(s) it mutates, the tests that guard it, and (optionally)
# the only functions to mutate ("Class.method" or "function"). Test entries are files or pytest
# node ids. After the restructuring only this table changes.
TARGETS: dict[str, dict] = {
    "config": dict(files=["config.py"], tests=["tests/test_config.py", "tests/test_config_edges.py"]),
    "norm": dict(files=["norm.py"], tests=["tests/test_norm.py", "tests/test_norm_edges.py"]),
    "rope": dict(files=["rope.py"], tests=["tests/test_rope.py", "tests/test_rope_edges.py",
                                          "tests/test_internals_defaults.py"]),
    "attention": dict(files=["attention.py"],
                      tests=["tests/test_attention.py", "tests/test_attention_edges.py",
                             # Attention's cache, weights and dropout paths run inside the model
                             "tests/test_model.py",
                             "tests/test_train.py::test_cpu_attention_runs_in_fp32_under_autocast"]),
    "ffn": dict(files=["ffn.py"], tests=["tests/test_ffn.py", "tests/test_ffn_edges.py"]),
    "model": dict(files=["model.py"], tests=["tests/test_model.py", "tests/test_model_edges.py"]),
    "generate": dict(files=["generate.py"],
                     tests=["tests/test_generate.py", "tests/test_sampling_rules.py",
                            "tests/test_generate_eos.py", "tests/test_generate_args.py", "tests/test_generate_edges.py"]),
    "fast": dict(files=["fast/decoder.py", "fast/cpu_compile.py"],
                 tests=["tests/test_decoder.py", "tests/test_sampling_rules.py",
                        "tests/test_decoder_edges.py", "tests/test_cpu_compile.py"]),
    "data": dict(files=["data.py"],
                 tests=["tests/test_data.py", "tests/test_data_edges.py",
                        *(f"tests/test_data_order.py::{t}" for t in (
                            "test_an_epoch_visits_every_window_of_its_phase_once",
                            "test_epochs_differ_in_order_and_phase",
                            "test_a_window_is_the_same_whoever_asks_for_it",
                            "test_the_order_of_a_seed_stays_the_same_from_version_to_version",
                            "test_bad_arguments_are_clear_errors",
                            "test_a_count_of_zero_is_no_windows",
                            "test_training_draws_the_epoch_windows_in_order"))]),
    # the training step, its schedule, loss and evaluation; not the plumbing around them
    # (runtime.py, run_folder.py: progress bar, metrics CSV, plot, torchrun, summary)
    "training": dict(files=["training.py"],
                     tests=["tests/test_train.py::test_learning_rate_schedule",
                            "tests/test_train.py::test_gradient_accumulation_equals_the_big_batch",
                            "tests/test_train.py::test_untrained_loss_is_ln_vocab",
                            "tests/test_train.py::test_evaluation_turns_dropout_off_and_restores_the_mode",
                            "tests/test_accumulation.py", "tests/test_training_edges.py",
                            "tests/test_data_order.py::test_training_draws_the_epoch_windows_in_order"],
                     functions=["lr_at", "run_progress", "next_token_loss", "train_step",
                                "estimate_loss", "evaluate", "_batch"]),
    "optim": dict(files=["optim.py"],
                  tests=["tests/test_optim.py", "tests/test_optim_edges.py",
                         "tests/test_train.py::test_weight_decay_only_on_matrices"]),
    "tokenizer": dict(files=["tokenizer.py"],
                      tests=["tests/test_tokenizer.py", "tests/test_tokenizer_edges.py"]),
    "llama3_tokenizer": dict(files=["llama3_tokenizer.py"],
                             tests=["tests/test_llama3_tokenizer.py",
                                    "tests/test_llama3_tokenizer_edges.py"]),
    # the conversions only: name maps, q/k permutations (in rope.py, mutated under "rope"),
    # config.json / params.json <-> ModelArgs
    "convert": dict(files=["convert.py"],
                    tests=["tests/test_checkpoint.py", "tests/test_checkpoint_conversions.py",
                           "tests/test_model.py", "tests/test_convert_edges.py"],
                    functions=["meta_to_hf_name", "hf_to_meta_name", "qk_heads", "to_hf_layout",
                               "to_meta_layout", "meta_to_hf_state_dict", "hf_to_meta_state_dict",
                               "args_to_hf_config", "_hf_rope", "args_from_hf_config",
                               "meta_rope_scaling", "args_from_meta_params", "_meta_ffn_fields",
                               "args_to_meta_params"]),
}

# Tests left out of every run: each takes a minute of torch.compile or a wheel build on this
# machine, and guards the compiler or the packaging rather than the arithmetic (the compiled
# decode step's logic runs, uncompiled, in tests/test_sampling_rules.py).
DESELECT = [
    "tests/test_decoder.py::test_compiled_step_equals_eager",
    "tests/test_decoder.py::test_fast_path_gives_the_plain_paths_tokens[compiled]",
    "tests/test_decoder.py::test_compiled_cpu_step_freezes_its_weights_into_the_matrix_kernels",
    "tests/test_decoder.py::test_compiled_cpu_step_follows_weights_updated_in_place",
    "tests/test_data.py::test_text_loads_from_an_installed_wheel",
    # starts a 3-thread OpenMP pool in mutmut's parent process: every forked child that runs
    # it deadlocks (gdb: gomp_team_barrier_wait_end). tests/test_decoder_edges.py checks the
    # same behaviour by recording torch.set_num_threads calls instead.
    "tests/test_decoder.py::test_decoding_runs_on_the_chosen_threads_and_restores_them",
]

PYTEST_WARNINGS = [  # as in pyproject.toml
    "ignore::DeprecationWarning:jupyter_client.*",
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning",
]
STATUS = {1: "killed", 3: "killed", 0: "survived", 33: "no_tests", 5: "no_tests",
          36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout"}
SEP = "\u01c1"  # mutmut's separator in mangled method names: x<SEP>Class<SEP>method


def mangled(name: str) -> str:
    """'Class.method' -> mutmut's 'xǁClassǁmethod'; 'function' -> 'x_function'."""
    if "." in name:
        cls, meth = name.split(".")
        return f"x{SEP}{cls}{SEP}{meth}"
    return f"x_{name}"


def functions_of(path: Path) -> tuple[list[str], list[str]]:
    """(functions mutmut mutates, functions it skips because they are decorated)."""
    tree = ast.parse(path.read_text())
    mutated, skipped = [], []

    def visit(body, prefix=""):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                decos = [d.id for d in node.decorator_list if isinstance(d, ast.Name)]
                plain = not node.decorator_list or (
                    len(node.decorator_list) == 1 and decos in (["staticmethod"], ["classmethod"]))
                (mutated if plain else skipped).append(prefix + node.name)
            elif isinstance(node, ast.ClassDef) and not prefix:
                visit(node.body, node.name + ".")

    visit(tree.body)
    return mutated, skipped


def prepare(name: str, target: dict, work: Path) -> list[str]:
    """The module's folder: package, tests, mutmut settings. Returns mutmut's name filters."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / PACKAGE, work / PACKAGE, ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    shutil.copytree(ROOT / "data", work / "data")  # tests compare the shipped text with it
    tests = [t for t in target["tests"] if (ROOT / t.split("::")[0]).exists()]
    lines = ["[mutmut]", f"source_paths = {PACKAGE}", "also_copy = data",
             "only_mutate = " + "\n    ".join(f"{PACKAGE}/{f}" for f in target["files"]),
             "pytest_add_cli_args = -p\n    no:nbval\n    -p\n    no:cacheprovider\n    "
             + "\n    ".join(f"--deselect\n    {d}" for d in DESELECT),
             "pytest_add_cli_args_test_selection = " + "\n    ".join(tests),
             "", "[tool:pytest]", "filterwarnings =",
             *(f"    {w}" for w in PYTEST_WARNINGS), ""]
    (work / "setup.cfg").write_text("\n".join(lines))
    if not target.get("functions"):
        return []
    filters = []
    for f in target["files"]:
        module = f"{PACKAGE}." + f.removesuffix(".py").replace("/", ".")
        filters += [f"{module}.{mangled(fn)}__mutmut_*" for fn in target["functions"]]
    return filters


def wanted(key: str, target: dict) -> bool:
    if not target.get("functions"):
        return True
    func = key.rsplit("__mutmut_", 1)[0].rsplit(".", 1)[-1]
    return func in {mangled(fn) for fn in target["functions"]}


def run_module(name: str, target: dict, workers: int) -> dict:
    work = ROOT / "build" / "mutants" / name
    filters = prepare(name, target, work)
    mutmut = Path(sys.executable).with_name("mutmut")
    log = work / "mutmut.log"
    # One torch thread: mutmut forks its warm process per mutant, and an OpenMP thread pool
    # started before a fork deadlocks in the child (seen: every forked test of rope.py that
    # multiplies a larger matrix hung until the timeout). It also keeps to one core per worker.
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.call([str(mutmut), "run", "--max-children", str(workers), *filters],
                             cwd=work, stdout=out, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    counts = {"mutants": 0, "killed": 0, "survived": 0, "timeout": 0, "no_tests": 0,
              "other": 0}
    survivors = []
    for f in target["files"]:
        meta = work / "mutants" / PACKAGE / (f + ".meta")
        if not meta.exists():
            continue
        for key, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if not wanted(key, target) or code is None:
                continue
            status = STATUS.get(code, "other")
            counts["mutants"] += 1
            counts[status] += 1
            if status in ("survived", "no_tests", "other"):
                survivors.append(f"{key} ({status})")
    mutated, skipped = [], []
    for f in target["files"]:
        m, s = functions_of(ROOT / PACKAGE / f)
        mutated += m
        skipped += s
    if target.get("functions"):
        skipped = [s for s in skipped if s in target["functions"]]
    n = counts["mutants"]
    error = None
    if rc != 0 or not n:  # e.g. the clean run failed: say so instead of a silent 0
        error = log.read_text(errors="replace").replace("\r", "\n").strip().splitlines()[-3:]
    return {**counts, "error": error,
            "rate": round((counts["killed"] + counts["timeout"]) / n, 4) if n else None,
            "seconds": round(seconds, 1), "mutmut_exit": rc,
            "files": target["files"], "tests": target["tests"],
            "functions": target.get("functions") or "all",
            "not_mutated": skipped, "survivors": sorted(survivors),
            "log": str(log.relative_to(ROOT))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("modules", nargs="*", help=f"some of: {', '.join(TARGETS)}")
    ap.add_argument("--label", default="run", help="results/mutants_<label>.json")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                    help="mutants tested at once (default: half the cores)")
    opts = ap.parse_args()
    unknown = [m for m in opts.modules if m not in TARGETS]
    if unknown:
        ap.error(f"unknown module(s) {unknown}; choose from {list(TARGETS)}")
    out_file = ROOT / "benchmarks" / "results" / f"mutants_{opts.label}.json"
    report = json.loads(out_file.read_text()) if out_file.exists() else {"modules": {}}
    report.update({"tool": f"mutmut {version('mutmut')}", "torch": version("torch"),
                   "python": sys.version.split()[0], "workers": opts.workers,
                   "deselected": DESELECT, "cpu_count": os.cpu_count()})
    for name in opts.modules or list(TARGETS):
        load = os.getloadavg()[0]
        print(f"{name}: running (load {load:.1f}) ...", flush=True)
        result = run_module(name, TARGETS[name], opts.workers)
        result["date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        result["loadavg_before"] = round(load, 2)
        report["modules"][name] = result
        report["date"] = result["date"]
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        print(f"  {result['mutants']} mutants, {result['killed']} killed, "
              f"{result['survived']} survived, {result['timeout']} timeout, "
              f"{result['no_tests']} untested, {result['seconds']:.0f} s", flush=True)
    print_table(report)
    print(f"written: {out_file.relative_to(ROOT)}")


def print_table(report: dict) -> None:
    print(f"\n{report['tool']}, {report['date']}")
    print(f"{'module':<18}{'mutants':>8}{'killed':>8}{'surv.':>7}{'t/o':>5}{'untested':>9}"
          f"{'rate':>8}{'time':>8}")
    for name, r in report["modules"].items():
        rate = f"{100 * r['rate']:.1f}%" if r["rate"] is not None else "-"
        print(f"{name:<18}{r['mutants']:>8}{r['killed']:>8}{r['survived']:>7}{r['timeout']:>5}"
              f"{r['no_tests']:>9}{rate:>8}{r['seconds']:>7.0f}s")


if __name__ == "__main__":
    main()
