"""Every notebook opens the same way and is committed with the outputs of one clean run."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
COURSE = ["01_model_config", "02_rmsnorm", "03_rope", "04_attention_kv_cache",
          "05_feedforward_swiglu", "06_llama_model", "07_training_tiny_shakespeare"]
BONUS = ["08_loading_real_llama3"]


def load(name):
    return json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())


def source(cell):
    return "".join(cell["source"])


def test_the_seven_notebooks_and_nothing_unexpected():
    present = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert present[:7] == COURSE
    assert set(present) <= set(COURSE + BONUS)


@pytest.mark.parametrize("name", COURSE + BONUS)
def test_structure(name):
    nb = load(name)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    cells = nb["cells"]
    head = source(cells[0])
    assert cells[0]["cell_type"] == "markdown" and head.startswith("# ")
    badge = f"https://colab.research.google.com/github/llama-course/llama-course/blob/main/notebooks/{name}.ipynb"
    assert "colab-badge.svg" in head and badge in head, "the first cell needs the Colab badge"
    code = [c for c in cells if c["cell_type"] == "code"]
    setup = source(code[0])
    assert "google.colab" in setup and "pip install" in setup, "the first code cell is the setup"
    assert any("import llama_course as lc" in source(c) for c in code[:3])


@pytest.mark.parametrize("name", COURSE + BONUS)
def test_committed_with_a_clean_run(name):
    code = [c for c in load(name)["cells"] if c["cell_type"] == "code" and source(c).strip()]
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), "run top to bottom once, in a fresh kernel"
    errors = [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors


@pytest.mark.parametrize("name", COURSE)
def test_exercises_with_hidden_solutions(name):
    cells = load(name)["cells"]
    solutions = [c for c in cells if c["cell_type"] == "code" and "@title Solution" in source(c)]
    assert len(solutions) >= 2, "two or three exercises, each with a collapsed solution"
    for c in solutions:
        assert c["metadata"].get("jupyter", {}).get("source_hidden") is True
        assert c["metadata"].get("cellView") == "form"
        assert "lc.checks.check_" in source(c), "a solution proves itself with a checker"
