"""Colab as it is: install the course into a copy of Colab's runtime and run every notebook.

What it does, in a fresh virtual environment (default /tmp/llama-course-colab):

1. installs the versions Colab's published pip freeze (August 2026) preinstalls, listed in
   COLAB below (PyTorch: the local CPU wheel, see TORCH);
2. builds the course package from this checkout as a wheel (what `pip install git+https://...`
   does on Colab) and installs it the way each notebook's setup cell does (its own
   `%pip install` line, with the repository URL pointed at the wheel);
3. fails if that install moved any of Colab's versions (pip would ask Colab for a restart);
4. copies the notebooks, and nothing else, into an empty folder (a notebook opened from its
   Colab badge has no repository next to it) and executes each top to bottom in that
   environment's kernel, with live widgets (LLAMA_COURSE_STATIC unset) and notebook 07 in its
   short mode (LLAMA_COURSE_QUICK=1); a notebook that raises fails the check;
5. prints one line per notebook: seconds, widget views produced, errors.

    python benchmarks/colab_check.py [--venv DIR] [--keep] [NOTEBOOK ...]

Differences from Colab that remain: Python is this machine's (3.11; Colab has 3.13, for which
no local CPU wheel of PyTorch exists here), PyTorch is 2.13 instead of 2.11, and there is no
GPU. Needs network access to the package registry for the first install only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # the local CPU wheel; Colab has 2.11 (the package asks for >= 2.5)
COLAB = {  # Colab's pip freeze, August 2026: what our install must not move
    "ipywidgets": "7.7.1", "ipython": "7.34.0", "ipykernel": "6.17.1", "notebook": "6.5.7",
    "pandas": "2.2.3", "numpy": "2.1.3", "matplotlib": "3.10.0", "transformers": "5.15.0",
    "tiktoken": "0.14.0", "tqdm": "4.67.3",
}
REPO_URL = "git+https://github.com/llama-course/llama-course"
WIDGET = "application/vnd.jupyter.widget-view+json"


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("$", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, text=True, **kw)


def freeze(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], check=True,
                         capture_output=True, text=True).stdout
    return {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(out)}


def make_runtime(venv: Path) -> Path:
    """A venv holding Colab's versions; the kernel the notebooks run in lives there too."""
    if venv.exists():
        shutil.rmtree(venv)
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"])
    run([str(python), "-m", "pip", "install", "-q", TORCH])
    run([str(python), "-m", "pip", "install", "-q", *[f"{k}=={v}" for k, v in COLAB.items()]])
    return python


def setup_specs(notebooks: list[Path]) -> list[str]:
    """The package specs the notebooks' setup cells install (the first code cell of each)."""
    specs = set()
    for nb in notebooks:
        cells = json.loads(nb.read_text())["cells"]
        setup = "".join(next(c for c in cells if c["cell_type"] == "code")["source"])
        specs.update(re.findall(r'"(llama-course[^"]*)"', setup))
    return sorted(specs)


def install_course(python: Path, specs: list[str], work: Path) -> None:
    """Build the package from this checkout and install it as the setup cells do."""
    src = work / "source"  # a copy: building in place would leave build/ in the checkout
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "runs", "student", "build", "*.egg-info", "__pycache__", "mutants"))
    run([str(python), "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work), str(src)])
    wheel = next(work.glob("llama_course-*.whl"))
    for spec in specs:
        run([str(python), "-m", "pip", "install", "-q", spec.replace(REPO_URL, wheel.as_uri())])


def moved_versions(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [f"{name} {COLAB[name]} -> {after.get(name, 'removed')}" for name in COLAB
            if after.get(name) != COLAB[name] or before.get(name) != COLAB[name]]


def execute(python: Path, notebook: Path, timeout: int) -> tuple[float, int, list[str]]:
    """Run one notebook in the venv's kernel; return (seconds, widget views, errors)."""
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_COURSE_STATIC"}
    env.update(LLAMA_COURSE_QUICK="1", PATH=f"{python.parent}{os.pathsep}{env['PATH']}")
    start = time.perf_counter()
    proc = subprocess.run([str(python), "-m", "jupyter", "nbconvert", "--to", "notebook",
                           "--execute", "--inplace", f"--ExecutePreprocessor.timeout={timeout}",
                           "--ExecutePreprocessor.kernel_name=python3", str(notebook)],
                          cwd=notebook.parent, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        return seconds, 0, [" | ".join(tail)]
    outputs = [o for c in json.loads(notebook.read_text())["cells"] for o in c.get("outputs", [])]
    widgets = sum(WIDGET in o.get("data", {}) for o in outputs)
    errors = [f"{o['ename']}: {o['evalue']}" for o in outputs if o["output_type"] == "error"]
    return seconds, widgets, errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", help="notebook files (default: all in notebooks/)")
    ap.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "llama-course-colab")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    ap.add_argument("--keep", action="store_true", help="keep the executed copies")
    a = ap.parse_args()
    notebooks = [Path(p) for p in a.notebooks] or sorted((ROOT / "notebooks").glob("*.ipynb"))

    python = make_runtime(a.venv)
    before = freeze(python)
    work = Path(tempfile.mkdtemp(prefix="colab-check-"))
    install_course(python, setup_specs(notebooks), work)
    moved = moved_versions(before, freeze(python))
    for line in moved:
        print(f"MOVED: {line}")

    run_dir = work / "content"  # Colab's working folder: the notebooks and nothing else
    run_dir.mkdir()
    failed = bool(moved)
    print(f"\n{'notebook':40s} {'seconds':>8s} {'widgets':>8s}  result")
    for nb in notebooks:
        copy = Path(shutil.copy(nb, run_dir))
        seconds, widgets, errors = execute(python, copy, a.timeout)
        failed |= bool(errors)
        print(f"{nb.name:40s} {seconds:8.1f} {widgets:8d}  {'; '.join(errors) or 'ok'}",
              flush=True)
    versions = ", ".join(f"{k} {v}" for k, v in COLAB.items())
    print(f"\nColab versions {'MOVED' if moved else 'unchanged'} ({versions}); "
          f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if not a.keep:
        shutil.rmtree(work)
    print("colab check:", "FAILED" if failed else "passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
