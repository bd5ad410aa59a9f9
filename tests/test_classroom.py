"""Student copies (llama_course/classroom): what they keep and what they must never show.

The copies are made by nbgrader's generate_assignment, without executing anything; the
grading itself is tested in test_classroom_grading.py.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

pytest.importorskip("nbgrader")

from llama_course.classroom.assign import (COURSE_COLAB, course_notebooks, master_notebook,
                                           write_student_copies)
from llama_course.classroom.exercises import (course_exercises, derived_id, exercise_table,
                                              find_exercises, read_notebook, split_solution)
from llama_course.classroom.grade import collect, identify

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = course_notebooks(ROOT / "notebooks")


def _code(source, **metadata):
    return nbformat.v4.new_code_cell(source, metadata=metadata)


def _toy(convention: str):
    """A two-exercise notebook in the new convention (tags, ids) or the old (Colab form)."""
    def pair(ex_id, stub, solution):
        if convention == "new":
            meta = {"llama_course": {"exercise": ex_id}}
            return [_code(stub, tags=["exercise"], **meta),
                    _code(solution, tags=["solution"], cellView="form", **meta)]
        return [_code(stub), _code(solution, cellView="form")]
    cells = [nbformat.v4.new_markdown_cell("### Exercise 1: double it\n\nWrite `my_double(x)`. "
                                           "It returns 2x.")]
    cells += pair("toy-double", "def my_double(x):\n    # your code here\n    return None\n\n"
                  "# lc.checks.check_double(my_double)",
                  "# @title Solution\ndef my_double(x):\n    return 2 * x\n\n\n"
                  "assert lc.checks.check_double(my_double)\n"
                  "assert lc.checks.check_sign(my_double)")
    cells += [nbformat.v4.new_markdown_cell("### Exercise 2: halve it\n\nWrite `my_half`.")]
    cells += pair("toy-half", "def my_half(x):\n    return None",
                  "# @title Solution\ndef my_half(x):\n    return x / 2\n\n"
                  "_ = lc.checks.check_half(my_half)  # a comment")
    return nbformat.v4.new_notebook(cells=cells)


@pytest.mark.parametrize("convention", ["new", "old"])
def test_find_exercises_in_both_conventions(convention):
    exs = find_exercises(_toy(convention), "09_toy")
    ids = ["toy-double", "toy-half"] if convention == "new" else ["nb09-double", "nb09-half"]
    assert [e.id for e in exs] == ids
    assert [(e.stub_index, e.solution_index) for e in exs] == [(1, 2), (4, 5)]
    assert exs[0].checks == ("lc.checks.check_double(my_double)",
                             "lc.checks.check_sign(my_double)")
    assert exs[0].checkers == ("check_double", "check_sign")
    assert exs[0].solution_body == "def my_double(x):\n    return 2 * x"
    assert exs[1].checks == ("lc.checks.check_half(my_half)",)
    assert exs[0].task == "Exercise 1: double it: Write `my_double(x)`."


def test_bad_exercises_are_named():
    with pytest.raises(ValueError, match="calls no lc.checks"):
        split_solution("# @title Solution\nx = 1", "nb, cell 3")
    with pytest.raises(ValueError, match="nb, cell 3: the solution cell is not valid Python"):
        split_solution("def f(:\n", "nb, cell 3")
    nb = _toy("new")
    nb.cells[1].metadata["llama_course"]["exercise"] = "other"
    with pytest.raises(ValueError, match="no stub cell tagged 'exercise' with id 'toy-double'"):
        find_exercises(nb, "09_toy")
    assert derived_id("07_training", "check_top_p") == "nb07-top-p"


def test_course_exercises_have_unique_ids_and_a_table():
    exs = course_exercises(NOTEBOOKS)
    assert len(exs) >= 7 and len({e.id for e in exs}) == len(exs)
    table = exercise_table(NOTEBOOKS).splitlines()
    assert len(table) == len(exs) + 2 and all(e.id in "".join(table) for e in exs)


def _solution_only_lines(path: Path) -> set[str]:
    """Lines of solution text that appear nowhere else in the course notebook."""
    nb = read_notebook(path)
    exs = find_exercises(nb, path.stem)
    solutions = {e.solution_index for e in exs}
    elsewhere = "\n".join(c.source for i, c in enumerate(nb.cells) if i not in solutions)
    lines = set()
    for e in exs:
        for line in e.solution_body.splitlines():
            line = line.strip()
            if len(line) > 3 and line not in elsewhere:
                lines.add(line)
    return lines


def _visible_text(nb) -> str:
    """Every cell's source and the text of its outputs, as a learner would read them."""
    parts = []
    for cell in nb.cells:
        parts.append(cell.source)
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts += [v for v in out.get("data", {}).values() if isinstance(v, str)]
    return "\n".join(parts)


@pytest.fixture(scope="module")
def student_copies(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    write_student_copies(NOTEBOOKS, out, tmp_path_factory.mktemp("course"))
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_copy_holds_no_solution(student_copies, path):
    copy = nbformat.read(student_copies / path.name, as_version=4)
    text = _visible_text(copy)
    leaked = sorted(line for line in _solution_only_lines(path) if line in text)
    assert not leaked, f"solution text in the student copy of {path.name}: {leaked}"
    assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
    assert "# @title Solution" not in text
    assert not any("solution" in c.metadata.get("tags", []) for c in copy.cells)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_copy_keeps_stubs_and_the_learners_notebook(student_copies, path):
    course = read_notebook(path)
    copy = nbformat.read(student_copies / path.name, as_version=4)
    exs = find_exercises(course, path.stem)
    assert len(copy.cells) == len(course.cells)
    graded = {c.metadata["nbgrader"]["grade_id"]: c for c in copy.cells if "nbgrader" in c.metadata}
    for e in exs:
        stub = graded[e.id]
        assert stub.source.rstrip() == course.cells[e.stub_index].source.rstrip()
        assert stub.outputs == [] and graded[f"{e.id}-checks"].outputs == []
        assert graded[f"{e.id}-checks"].metadata["nbgrader"]["points"] == 1
    exercise_cells = {i for e in exs for i in (e.stub_index, e.solution_index)}
    for i, (mine, theirs) in enumerate(zip(course.cells, copy.cells)):
        if i not in exercise_cells:
            assert theirs.source == mine.source, f"{path.name}, cell {i} changed"
            assert theirs.get("outputs") == mine.get("outputs"), f"{path.name}, cell {i}"


def test_master_puts_the_solution_in_a_region_and_hides_the_checks():
    path = NOTEBOOKS[1]
    nb, exs = master_notebook(path)
    answer, checks = nb.cells[exs[0].stub_index], nb.cells[exs[0].solution_index]
    assert exs[0].solution_body in answer.source and "### BEGIN SOLUTION" in answer.source
    for call in exs[0].checks:
        assert f"assert {call}" in checks.source
    assert checks.source.index("BEGIN HIDDEN TESTS") < checks.source.index("assert")


def test_colab_badges_can_open_the_student_copies():
    url = "https://colab.research.google.com/github/me/fork/blob/class-2027/student"
    plain, _ = master_notebook(NOTEBOOKS[1])
    moved, _ = master_notebook(NOTEBOOKS[1], colab_url=url)
    assert COURSE_COLAB + NOTEBOOKS[1].name in plain.cells[0].source
    assert COURSE_COLAB not in moved.cells[0].source
    assert f"{url}/{NOTEBOOKS[1].name}" in moved.cells[0].source


def test_submissions_are_found_by_exercise_ids_or_by_name(student_copies, tmp_path):
    exercises = {p.stem: find_exercises(read_notebook(p), p.stem) for p in NOTEBOOKS}
    (tmp_path / "ann").mkdir()
    copy = nbformat.read(student_copies / "02_rmsnorm.ipynb", as_version=4)
    nbformat.write(copy, tmp_path / "ann" / "whatever.ipynb")           # by its ids
    nbformat.write(copy, tmp_path / "Ben Smith.ipynb")
    plain = nbformat.v4.new_notebook()
    nbformat.write(plain, tmp_path / "ann" / "Copy of 05_feedforward_swiglu.ipynb")  # by name
    subs = {(s.student, s.notebook) for s in collect(tmp_path, exercises)}
    assert subs == {("ann", "02_rmsnorm"), ("ann", "05_feedforward_swiglu"),
                    ("Ben_Smith", "02_rmsnorm")}
    nbformat.write(plain, tmp_path / "mystery.ipynb")
    with pytest.raises(ValueError, match="mystery.ipynb is not one of the course's notebooks"):
        identify(tmp_path / "mystery.ipynb", exercises)
    skipped = []
    assert len(collect(tmp_path, exercises, skipped)) == 3  # grading goes on without it
    assert skipped == [f"{tmp_path / 'mystery.ipynb'} is not one of the course's notebooks: it "
                       "holds none of their exercises and its name contains none of their names"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        collect(tmp_path / "nowhere", exercises)
