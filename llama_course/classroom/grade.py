"""Grade a class's submissions with `nbgrader autograde`, then tabulate and plot the results.

Each submission runs in its own Jupyter kernel (a separate process), never in this one.
nbgrader restores the hidden checks from its database, runs every cell with a time limit per
cell (a cell that runs past it is interrupted and the notebook goes on), keeps going after a
cell raises, and scores each exercise's test cell: 1 if its checks pass, else 0. The table
adds *why* an exercise failed: the checker's AssertionError (which names the mistake), or the
learner's own cell that raised or ran out of time.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pandas as pd
from sqlalchemy.exc import SAWarning

from .assign import _api, generate
from .exercises import Exercise, read_notebook

COLUMNS = ["student", "notebook", "exercise", "checkers", "score", "max_score", "passed",
           "message"]


@dataclass(frozen=True)
class Submission:
    student: str
    notebook: str  # the course notebook's stem
    path: Path


def _student_id(name: str) -> str:
    """A folder-safe student id (nbgrader keeps one folder per student)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")
    if not cleaned:
        raise ValueError(f"cannot make a student id out of {name!r}")
    return cleaned


def identify(path: Path, exercises: dict[str, list[Exercise]]) -> str:
    """Which course notebook a submitted file is: by its exercise ids, else by its name."""
    owner = {ex.id: stem for stem, exs in exercises.items() for ex in exs}
    owner.update({f"{k}-checks": v for k, v in owner.items()})
    nb = read_notebook(path)
    votes: dict[str, int] = {}
    for cell in nb.cells:
        meta = cell.get("metadata", {})
        for key in (meta.get("nbgrader", {}).get("grade_id"),
                    meta.get("llama_course", {}).get("exercise")):
            if key in owner:
                votes[owner[key]] = votes.get(owner[key], 0) + 1
    if votes:
        return max(votes, key=votes.get)
    named = [stem for stem in exercises if stem in Path(path).name]
    if named:
        return max(named, key=len)
    raise ValueError(f"{path} is not one of the course's notebooks: it holds none of their "
                     "exercises and its name contains none of their names")


def collect(folder: Path, exercises: dict[str, list[Exercise]],
            skipped: list[str] | None = None) -> list[Submission]:
    """Submissions in `folder`: `<student>.ipynb` files and/or `<student>/*.ipynb` folders.

    A file that is none of the course's notebooks is left out, with the reason appended to
    `skipped` (one stray file must not stop a class's grading); without `skipped`, it raises.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"submissions folder {folder} does not exist")
    found: dict[tuple[str, str], Submission] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.suffix == ".ipynb":
            files, student = [entry], _student_id(entry.stem)
        elif entry.is_dir() and not entry.name.startswith("."):
            files = sorted(entry.rglob("*.ipynb"))
            files = [f for f in files if ".ipynb_checkpoints" not in f.parts]
            student = _student_id(entry.name)
        else:
            continue
        for f in files:
            try:
                stem = identify(f, exercises)
            except ValueError as e:
                if skipped is None:
                    raise
                skipped.append(str(e))
                continue
            if (student, stem) in found:
                raise ValueError(f"{student} handed in {stem} twice: {found[student, stem].path}"
                                 f" and {f}; keep one")
            found[student, stem] = Submission(student, stem, f)
    if not found:
        raise FileNotFoundError(f"no notebooks (*.ipynb) in {folder}")
    return list(found.values())


def _error_text(cell, timeout: int) -> str | None:
    """`Name: message` of the cell's error output, or None when it ran cleanly."""
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            name, value = out.get("ename", "Error"), out.get("evalue", "")
            if name in ("KeyboardInterrupt", "CellTimeoutError"):  # nbgrader's time limit
                return (f"stopped: the cell ran past the time limit of {timeout} s "
                        "(an endless loop?)")
            return f"{name}: {value}" if value else name
    return None


def _messages(graded: Path, exercises: list[Exercise], timeout: int) -> dict[str, str]:
    """Why each exercise failed, from the autograded notebook's error outputs."""
    nb = nbformat.read(graded, as_version=4)
    cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in nb.cells}
    found = {}
    for ex in exercises:
        check = _error_text(cells.get(f"{ex.id}-checks", {}), timeout)
        answer = _error_text(cells.get(ex.id, {}), timeout)
        if answer and check:
            found[ex.id] = f"your cell failed: {answer}"
        elif check:
            found[ex.id] = check
    return found


def _rows(sub: Submission, exercises: list[Exercise], root: Path, result: dict,
          timeout: int) -> list[dict]:
    from nbgrader.api import Gradebook

    graded = root / "autograded" / sub.student / sub.notebook / f"{sub.notebook}.ipynb"
    scores, messages = {}, {}
    if result["success"] and graded.is_file():
        with Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
            nb = gb.find_submission_notebook(sub.notebook, sub.notebook, sub.student)
            scores = {g.name: g.auto_score or 0.0 for g in nb.grades}
        messages = _messages(graded, exercises, timeout)
        failure = "its cell is missing from the submission"
    else:
        lines = (result.get("error") or result.get("log") or "").strip().splitlines()
        failure = "grading failed: " + (lines[-1] if lines else "unknown error")
    rows = []
    for ex in exercises:
        score = scores.get(f"{ex.id}-checks")
        rows.append(dict(student=sub.student, notebook=sub.notebook, exercise=ex.id,
                         checkers=" ".join(ex.checkers), score=score or 0.0, max_score=1.0,
                         passed=bool(score), message="" if score else
                         messages.get(ex.id, failure)))
    return rows


def grade(submissions: Path, notebooks: list[Path], root: Path, timeout: int = 60,
          quick: bool = True) -> pd.DataFrame:
    """Autograde every submission in `submissions`; one row per student and exercise.

    `root` is nbgrader's course folder (made from the course notebooks, then filled with the
    submissions and the graded copies); `timeout` is the limit in seconds for each cell.
    `quick` sets LLAMA_COURSE_QUICK=1 for the kernels, so notebook 07 trains for seconds.
    """
    root = Path(root)
    if not Path(submissions).is_dir():
        raise FileNotFoundError(f"submissions folder {submissions} does not exist")
    exercises = generate(notebooks, root, timeout)  # starts nbgrader's folder afresh
    skipped: list[str] = []
    subs = collect(Path(submissions), exercises, skipped)
    for reason in skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    for sub in subs:
        dest = root / "submitted" / sub.student / sub.notebook / f"{sub.notebook}.ipynb"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sub.path, dest)
    api = _api(root, timeout)
    env = {"LLAMA_COURSE_STATIC": "1"} | ({"LLAMA_COURSE_QUICK": "1"} if quick else {})
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernels inherit this environment
    try:
        rows = []
        for sub in subs:
            with warnings.catch_warnings():  # nbgrader's own, harmless SQLAlchemy warnings
                warnings.simplefilter("ignore", SAWarning)
                result = api.autograde(sub.notebook, sub.student)
            rows += _rows(sub, exercises[sub.notebook], root, result, timeout)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(
        ["student", "notebook"], kind="stable").reset_index(drop=True)


def class_plot(table: pd.DataFrame, path: Path) -> None:
    """A bar per exercise: the share of students whose submission passed it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    share = table.groupby("exercise", sort=False)["passed"].mean() * 100  # (exercises,)
    counts = table.groupby("exercise", sort=False)["passed"].agg(["sum", "count"])
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(share) + 1.2))
    ax.barh(share.index[::-1], share.values[::-1], color="tab:green")
    for y, (name, row) in enumerate(counts[::-1].iterrows()):
        ax.text(1, y, f"{row['sum']}/{row['count']}", va="center")
    ax.set_xlim(0, 100)
    ax.set_xlabel("students who passed (%)")
    ax.set_title("Class results per exercise")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(table: pd.DataFrame, out: Path) -> dict[str, Path]:
    """grades.csv (student x exercise rows), scores.csv (one row per student), class.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"grades": out / "grades.csv", "scores": out / "scores.csv",
             "plot": out / "class.png"}
    table.to_csv(paths["grades"], index=False)
    wide = table.pivot_table(index="student", columns="exercise", values="score",
                             aggfunc="sum", sort=False)
    wide["total"] = wide.sum(axis=1)
    wide.to_csv(paths["scores"])
    class_plot(table, paths["plot"])
    return paths
