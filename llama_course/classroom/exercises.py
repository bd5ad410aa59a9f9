"""Find the exercises of a course notebook: the stub cell, its solution, and the checks.

The course convention (notebooks/README.md) marks them with metadata: a stub cell tagged
`exercise` and a solution cell tagged `solution`, both carrying `llama_course.exercise = <id>`.
Older notebooks only mark the solution (`# @title Solution` + Colab's `cellView: form`) and put
the stub right before it; for those the id is derived from the notebook number and the first
checker, so that the grader works on both and ids stay stable across the rewrite.

Everything here reads notebooks as JSON (nbformat): nothing is executed.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

TITLE = "# @title Solution"
_NB_NUMBER = re.compile(r"^(\d+)_")


@dataclass(frozen=True)
class Exercise:
    """One exercise: where its cells are and what the grader runs to check it."""

    id: str                  # unique in the course, e.g. "nb02-rmsnorm"
    notebook: str            # the notebook's stem, e.g. "02_rmsnorm"
    stub_index: int          # the learner's cell
    solution_index: int      # the course's answer, right after the stub
    checks: tuple[str, ...]  # the checker calls, e.g. "lc.checks.check_rmsnorm(my_rms_norm)"
    solution_body: str       # the solution without its title and its check lines
    task: str                # the task in one line (from the markdown cell before the stub)

    @property
    def checkers(self) -> tuple[str, ...]:
        return tuple(re.match(r"lc\.checks\.(\w+)", c).group(1) for c in self.checks)


def _meta_id(cell) -> str | None:
    return cell.get("metadata", {}).get("llama_course", {}).get("exercise")


def _tags(cell) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def is_solution(cell) -> bool:
    """Tagged `solution` (the convention), or the older Colab form titled Solution."""
    if cell.cell_type != "code":
        return False
    if "solution" in _tags(cell):
        return True
    return cell.source.lstrip().startswith(TITLE) and cell.metadata.get("cellView") == "form"


def _check_call(node: ast.stmt) -> ast.Call | None:
    """The `lc.checks.check_*(...)` call of `assert ...`, `_ = ...` or a bare expression."""
    value = {ast.Assert: "test", ast.Assign: "value", ast.Expr: "value"}.get(type(node))
    call = getattr(node, value) if value else None
    if not isinstance(call, ast.Call):
        return None
    text = ast.unparse(call.func)
    return call if re.fullmatch(r"lc\.checks\.check_\w+", text) else None


def split_solution(source: str, where: str) -> tuple[tuple[str, ...], str]:
    """(the checker calls, the solution code without its title and its check lines)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ValueError(f"{where}: the solution cell is not valid Python ({e.msg}, "
                         f"line {e.lineno})") from None
    lines = source.splitlines()
    checks, drop = [], set()
    for node in tree.body:
        call = _check_call(node)
        if call is not None:
            checks.append(ast.get_source_segment(source, call))
            drop.update(range(node.lineno - 1, node.end_lineno))
    if not checks:
        raise ValueError(f"{where}: the solution cell calls no lc.checks.check_* checker")
    kept = [line for i, line in enumerate(lines) if i not in drop
            and not line.lstrip().startswith(TITLE)]
    return tuple(checks), "\n".join(kept).strip("\n")


def _task_line(markdown: str) -> str:
    """The exercise's heading and the first sentence of its text, as one line."""
    lines = markdown.splitlines()
    starts = [i for i, line in enumerate(lines) if line.lstrip().startswith("#")
              and "exercise" in line.lower()]
    head = lines[starts[-1]].lstrip("# ").strip() if starts else ""
    rest = " ".join(line.strip() for line in lines[(starts[-1] + 1 if starts else 0):])
    sentence = re.split(r"(?<=[.!?])\s", rest.strip(), maxsplit=1)[0] if rest.strip() else ""
    return f"{head}: {sentence}" if head and sentence else head or sentence


def derived_id(notebook: str, checker: str) -> str:
    """The id of an exercise without one: `nb02-rmsnorm` for `check_rmsnorm` in 02_*."""
    m = _NB_NUMBER.match(notebook)
    number = m.group(1) if m else notebook
    return f"nb{number}-{checker.removeprefix('check_').replace('_', '-')}"


def find_exercises(nb, notebook: str) -> list[Exercise]:
    """The exercises of a notebook (a NotebookNode), in order. `notebook` names it in errors."""
    found = []
    for i, cell in enumerate(nb.cells):
        if not is_solution(cell):
            continue
        where = f"{notebook}, cell {i}"
        checks, body = split_solution(cell.source, where)
        ex_id = _meta_id(cell)
        if ex_id is not None:
            stubs = [j for j in range(i) if _meta_id(nb.cells[j]) == ex_id
                     and "exercise" in _tags(nb.cells[j])]
            if not stubs:
                raise ValueError(f"{where}: no stub cell tagged 'exercise' with id {ex_id!r}")
            stub = stubs[-1]
        else:
            stub = i - 1
            if stub < 0 or nb.cells[stub].cell_type != "code":
                raise ValueError(f"{where}: a solution cell must follow the exercise's stub cell")
            ex_id = _meta_id(nb.cells[stub]) or derived_id(
                notebook, re.match(r"lc\.checks\.(\w+)", checks[0]).group(1))
        before = nb.cells[stub - 1] if stub > 0 else None
        task = _task_line(before.source) if before is not None and \
            before.cell_type == "markdown" else ""
        found.append(Exercise(ex_id, notebook, stub, i, checks, body, task))
    return found


def read_notebook(path: Path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"notebook {path} does not exist")
    return nbformat.read(path, as_version=4)


def course_exercises(notebooks: list[Path]) -> list[Exercise]:
    """Every exercise of the course; ids must be unique across notebooks."""
    found: list[Exercise] = []
    seen: dict[str, str] = {}
    for path in notebooks:
        for ex in find_exercises(read_notebook(path), Path(path).stem):
            if ex.id in seen:
                raise ValueError(f"exercise id {ex.id!r} is used in {seen[ex.id]} and "
                                 f"{ex.notebook}: ids must be unique in the course")
            seen[ex.id] = ex.notebook
            found.append(ex)
    return found


def exercise_table(notebooks: list[Path]) -> str:
    """A markdown table (notebook, id, checkers, task) for the instructors' guide."""
    rows = ["| notebook | exercise id | checker | task |", "|---|---|---|---|"]
    for ex in course_exercises(notebooks):
        checkers = ", ".join(f"`{c}`" for c in ex.checkers)
        task = ex.task.replace("|", "\\|")
        rows.append(f"| {ex.notebook[:2]} | `{ex.id}` | {checkers} | {task} |")
    return "\n".join(rows)
