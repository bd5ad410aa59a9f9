"""Grading a made-up class with nbgrader (llama_course/classroom): the verdicts and the why.

One notebook (02, small and quick) and four students, graded once by the command line in a
child process: alice hands in the course's own solutions, bob one answer 1% off, carol one
answer that never returns, dave a notebook with a stray cell that raises. The time limit per
cell is short so that carol costs seconds; the whole run has a hard limit and every process it
started is killed in a finally.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

pytest.importorskip("nbgrader")
psutil = pytest.importorskip("psutil")

from llama_course.classroom.assign import write_student_copies
from llama_course.classroom.demo import demo_class, learner_function, wrong_answer
from llama_course.classroom.exercises import find_exercises, read_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "02_rmsnorm.ipynb"
CELL_LIMIT = 20  # seconds per cell: the slowest cell of 02 takes about 3 s on a loaded CPU
PID_CELL = 'import os\nopen("kernel_pid.txt", "w").write(str(os.getpid()))'


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill the grader and every process it started (the kernels)."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for p in [*children]:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("class")
    exercises = {NOTEBOOK.stem: find_exercises(read_notebook(NOTEBOOK), NOTEBOOK.stem)}
    write_student_copies([NOTEBOOK], tmp / "student", tmp / "work")
    subs = demo_class(tmp / "student", exercises, tmp / "submissions", (NOTEBOOK.stem,))
    dave = next((subs / "dave").glob("*.ipynb"))
    nb = nbformat.read(dave, as_version=4)
    nb.cells.insert(1, nbformat.v4.new_code_cell(PID_CELL))  # where does the code run?
    nbformat.write(nb, dave)
    cmd = [sys.executable, "-m", "llama_course.classroom", "--notebooks",
           str(NOTEBOOK.parent), "--workdir", str(tmp / "work"), "grade", str(subs),
           "--out", str(tmp / "grades"), "--timeout", str(CELL_LIMIT)]
    proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=900)
    finally:
        _kill_tree(proc)
    assert proc.returncode == 0, out
    table = pd.read_csv(tmp / "grades" / "grades.csv", keep_default_na=False)
    return dict(tmp=tmp, table=table, pid=proc.pid, exercises=exercises[NOTEBOOK.stem])


def _rows(graded, student):
    return graded["table"][graded["table"].student == student].set_index("exercise")


def test_the_course_solutions_score_full_marks(graded):
    alice = _rows(graded, "alice")
    assert list(alice.index) == [e.id for e in graded["exercises"]]
    assert alice.passed.all() and (alice.score == 1).all() and (alice.message == "").all()


def _expected_message(ex) -> str | None:
    """The checker's own message for the wrong answer, computed here (checkers are seeded)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    import llama_course as lc
    namespace = {"torch": torch, "lc": lc, "F": F, "nn": nn}
    try:
        exec(wrong_answer(ex), namespace)
        for call in ex.checks:
            eval(call, namespace)
    except AssertionError as e:
        return f"AssertionError: {e}"
    except Exception:  # the solution needs the notebook's own cells: compare the kind only
        return None
    raise AssertionError(f"the wrong answer to {ex.id} passed its checks in-process")


def test_a_wrong_answer_loses_exactly_that_exercise_with_the_checkers_message(graded):
    bob = _rows(graded, "bob")
    first = graded["exercises"][0]
    assert not bob.loc[first.id, "passed"] and bob.loc[first.id, "score"] == 0
    assert bob.drop(index=first.id).passed.all()
    message = bob.loc[first.id, "message"]
    assert message.startswith("AssertionError: ")
    expected = _expected_message(first)
    if expected is not None:  # the first line: the numbers after it depend on random inputs
        assert message.splitlines()[0] == expected.splitlines()[0]
    assert learner_function(first) in wrong_answer(first)


def test_a_submission_that_hangs_is_stopped_and_graded_zero(graded):
    carol = _rows(graded, "carol")
    first = graded["exercises"][0]
    assert carol.loc[first.id, "score"] == 0
    assert carol.loc[first.id, "message"].startswith(
        f"stopped: the cell ran past the time limit of {CELL_LIMIT} s")
    assert carol.drop(index=first.id).passed.all()  # the cells after it still ran


def test_a_cell_that_raises_does_not_stop_the_other_exercises(graded):
    dave = _rows(graded, "dave")
    assert dave.passed.all()
    autograded = graded["tmp"] / "work" / "autograded" / "dave" / NOTEBOOK.stem
    nb = nbformat.read(autograded / f"{NOTEBOOK.stem}.ipynb", as_version=4)
    errors = [o.ename for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert errors == ["RuntimeError"]  # it did raise, and nothing else failed
    kernel_pid = int((autograded / "kernel_pid.txt").read_text())
    assert kernel_pid not in (graded["pid"], os.getpid())  # a kernel of its own


def test_the_class_report(graded):
    grades = graded["tmp"] / "grades"
    scores = pd.read_csv(grades / "scores.csv", index_col="student")
    assert list(scores.index) == ["alice", "bob", "carol", "dave"]
    n = len(graded["exercises"])
    assert scores.total.tolist() == [n, n - 1, n - 1, n]
    assert (grades / "class.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
