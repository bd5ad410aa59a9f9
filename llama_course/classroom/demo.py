"""A small made-up class, to try the grader before the real one (and to test it).

Four students hand in work made from the student copies: alice answers every exercise with the
course's own solutions; bob gets one answer 1% off; carol's answer never returns (an endless
loop); dave answers everything right but leaves a cell that raises elsewhere in the notebook.
Graded, alice and dave score full marks, bob and carol lose exactly the one exercise.
"""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat

from .exercises import Exercise

_OFF = '''

def _one_percent_off(result):
    """A known wrong answer: every number 1% too large."""
    if isinstance(result, (tuple, list)):
        return type(result)(_one_percent_off(r) for r in result)
    return result * 1.01


_right_{name} = {name}


def {name}(*args, **kwargs):
    return _one_percent_off(_right_{name}(*args, **kwargs))'''

_HANG = '''

def {name}(*args, **kwargs):
    while True:  # never returns: the grader's time limit must stop it
        pass'''

RAISE = 'raise RuntimeError("a mistake in a cell that no exercise depends on")'


def learner_function(ex: Exercise) -> str:
    """The name of the learner's function: the first argument of the first check."""
    call = ast.parse(ex.checks[0], mode="eval").body
    if not call.args or not isinstance(call.args[0], ast.Name):
        raise ValueError(f"{ex.id}: its check {ex.checks[0]} does not take a function by name")
    return call.args[0].id


def wrong_answer(ex: Exercise) -> str:
    """The course's solution, wrapped so that every number it returns is 1% too large."""
    return ex.solution_body + _OFF.format(name=learner_function(ex))


def hanging_answer(ex: Exercise) -> str:
    return ex.solution_body + _HANG.format(name=learner_function(ex))


def answered(student_copy: Path, exercises: list[Exercise], answers: dict[str, str] | None = None,
             raise_after: int | None = None):
    """The student copy with its exercise cells filled in, as a student would hand it in.

    Each exercise's cell gets `answers[id]`, or the course's solution. `raise_after`: insert,
    after that code cell, a new cell that raises.
    """
    nb = nbformat.read(student_copy, as_version=4)
    answers = answers or {}
    for cell in nb.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        for ex in exercises:
            if grade_id == ex.id:
                cell.source = cell.source.rstrip("\n") + "\n" + answers.get(ex.id,
                                                                            ex.solution_body)
    if raise_after is not None:
        code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        nb.cells.insert(code[raise_after] + 1, nbformat.v4.new_code_cell(RAISE))
    return nb


def demo_class(student_dir: Path, exercises: dict[str, list[Exercise]], out: Path,
               notebooks: tuple[str, ...]) -> Path:
    """Write the four demo submissions for `notebooks` (stems) into `out`; returns `out`.

    Layouts as a class hands them in: alice, carol and dave one folder each, bob one file.
    """
    out = Path(out)
    first, last = notebooks[0], notebooks[-1]
    copies = {stem: Path(student_dir) / f"{stem}.ipynb" for stem in notebooks}
    for stem in notebooks:  # alice: everything right
        _write(answered(copies[stem], exercises[stem]), out / "alice" / f"{stem}.ipynb")
    ex = exercises[first][0]  # bob: one answer 1% off
    _write(answered(copies[first], exercises[first], {ex.id: wrong_answer(ex)}),
           out / "bob.ipynb")
    ex = exercises[last][0]  # carol: one answer loops forever
    _write(answered(copies[last], exercises[last], {ex.id: hanging_answer(ex)}),
           out / "carol" / f"{last}.ipynb")
    _write(answered(copies[first], exercises[first], raise_after=1),  # dave: a stray raise
           out / "dave" / f"Copy of {first}.ipynb")
    return out


def _write(nb, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
