"""Student copies, made by nbgrader from the course notebooks.

nbgrader (https://nbgrader.readthedocs.io) wants an instructor's "source" notebook whose cells
carry its metadata: an *answer* cell with the solution between `### BEGIN SOLUTION` and
`### END SOLUTION`, and a locked *test* cell worth points. The course notebooks stay the only
source; this module translates each exercise into that form:

- the stub cell becomes the answer cell: the learner's stub, then the solution's code in a
  solution region. `nbgrader generate_assignment` deletes the region (the stub it leaves is
  empty), so the student copy shows exactly the course's stub;
- the solution cell becomes the test cell: the checker calls, as `assert`s, inside
  `### BEGIN HIDDEN TESTS`. The student copy shows a one-line comment; `nbgrader autograde`
  puts the checks back from its database, so a student can neither see nor edit them.

Outputs of the exercise cells are cleared; every other cell keeps the learner's notebook's
outputs (nbgrader's ClearOutput is switched off for that).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import nbformat
from traitlets.config import Config

from .exercises import Exercise, find_exercises, read_notebook

COURSE_ID = "llama-course"
COURSE_COLAB = ("https://colab.research.google.com/github/llama-course/llama-course/blob/main/"
                "notebooks/")
CHECK_COMMENT = "# Graded: the autograder runs this exercise's checks here."


def course_notebooks(folder: Path) -> list[Path]:
    """The course's numbered notebooks (01_..., 02_...), in order."""
    paths = sorted(p for p in Path(folder).glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"no course notebooks (NN_name.ipynb) in {folder}")
    return paths


def _nbgrader_meta(grade_id: str, *, grade: bool, solution: bool, locked: bool,
                   points: int = 0) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked,
            "schema_version": 3, "solution": solution, "task": False}
    if grade:
        meta["points"] = points
    return meta


def _clear(cell) -> None:
    cell.outputs = []
    cell.execution_count = None
    cell.metadata.pop("execution", None)


def _answer_cell(cell, ex: Exercise) -> None:
    cell.source = (cell.source.rstrip("\n") + "\n### BEGIN SOLUTION\n" + ex.solution_body
                   + "\n### END SOLUTION")
    cell.metadata["nbgrader"] = _nbgrader_meta(ex.id, grade=False, solution=True, locked=False)
    cell.metadata.setdefault("llama_course", {})["exercise"] = ex.id
    tags = cell.metadata.setdefault("tags", [])
    if "exercise" not in tags:
        tags.append("exercise")
    _clear(cell)


def _test_cell(cell, ex: Exercise) -> None:
    checks = "\n".join(f"assert {call}" for call in ex.checks)
    cell.source = f"{CHECK_COMMENT}\n### BEGIN HIDDEN TESTS\n{checks}\n### END HIDDEN TESTS"
    cell.metadata = nbformat.from_dict({
        "nbgrader": _nbgrader_meta(f"{ex.id}-checks", grade=True, solution=False, locked=True,
                                   points=1),
        "llama_course": {"exercise": ex.id},
        "tags": ["exercise-checks"],
    })
    _clear(cell)


def _point_badges(nb, colab_url: str) -> None:
    """Colab badges open `colab_url`/<notebook> (the student copies) instead of the course's
    notebooks, whose solutions are one click away."""
    pattern = re.compile(re.escape(COURSE_COLAB) + r"(?=\d\d_\w+\.ipynb)")
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = pattern.sub(colab_url.rstrip("/") + "/", cell.source)


def master_notebook(path: Path, colab_url: str | None = None):
    """The nbgrader source version of one course notebook, and its exercises."""
    nb = read_notebook(path)
    exercises = find_exercises(nb, Path(path).stem)
    if colab_url:
        _point_badges(nb, colab_url)
    for ex in exercises:
        _answer_cell(nb.cells[ex.stub_index], ex)
        _test_cell(nb.cells[ex.solution_index], ex)
    return nb, exercises


def nbgrader_config(root: Path, timeout: int | None = None) -> Config:
    """nbgrader's settings for the course folder `root` (no nbgrader_config.py needed)."""
    cfg = Config()
    cfg.CourseDirectory.root = str(Path(root).resolve())
    cfg.CourseDirectory.course_id = COURSE_ID
    cfg.ClearSolutions.code_stub = {"python": ""}
    cfg.ClearOutput.enabled = False  # keep the learner's outputs outside the exercises
    cfg.Execute.kernel_name = "python3"
    if timeout is not None:
        cfg.Execute.timeout = int(timeout)  # seconds per cell; a hung cell is interrupted
    return cfg


def _api(root: Path, timeout: int | None = None):
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory

    # nbgrader runs the `alembic` command when it creates its database: find the one installed
    # next to this Python even when the environment is not activated.
    scripts = str(Path(sys.executable).parent)
    if shutil.which("alembic") is None and scripts not in os.environ.get("PATH", ""):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    cfg = nbgrader_config(root, timeout)
    return NbGraderAPI(coursedir=CourseDirectory(config=cfg), config=cfg)


def generate(notebooks: list[Path], root: Path, timeout: int | None = None,
             colab_url: str | None = None) -> dict:
    """Write each notebook's nbgrader source into `root`, run generate_assignment on it.

    One nbgrader assignment per notebook (named like the notebook), so that students can hand
    in any subset. Returns {notebook stem: its exercises}.
    """
    root = Path(root)
    # A fresh nbgrader course each time: the CSV files are the record, and an old gradebook
    # with submissions in it can make nbgrader refuse a notebook whose exercises changed.
    for old in ("source", "release", "submitted", "autograded"):
        shutil.rmtree(root / old, ignore_errors=True)
    (root / "gradebook.db").unlink(missing_ok=True)
    api = _api(root, timeout)
    found = {}
    for path in notebooks:
        stem = Path(path).stem
        nb, exercises = master_notebook(path, colab_url)
        source = root / "source" / stem
        source.mkdir(parents=True)
        nbformat.write(nb, source / f"{stem}.ipynb")
        result = api.generate_assignment(stem)
        if not result["success"]:
            raise RuntimeError(f"nbgrader generate_assignment failed for {stem}:\n"
                               f"{result.get('error') or result.get('log')}")
        found[stem] = exercises
    return found


def write_student_copies(notebooks: list[Path], out: Path, root: Path,
                         colab_url: str | None = None) -> list[Path]:
    """The student copy of every notebook in `out` (made by nbgrader in `root/release`).

    `colab_url`: where the copies will be published (a folder URL); their Colab badges then
    open the copies rather than the course's notebooks.
    """
    generate(notebooks, root, colab_url=colab_url)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in notebooks:
        stem = Path(path).stem
        released = Path(root) / "release" / stem / f"{stem}.ipynb"
        shutil.copyfile(released, out / released.name)
        written.append(out / released.name)
    return written
