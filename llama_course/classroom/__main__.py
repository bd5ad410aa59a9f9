"""Instructors' command line: `python -m llama_course.classroom {student,grade,demo,exercises}`."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

DESCRIPTION = """\
Run the course for a class with nbgrader: student copies, autograding, a class report.

examples:
  python -m llama_course.classroom student                    # student/*.ipynb
  python -m llama_course.classroom grade submissions/         # grades/grades.csv, class.png
  python -m llama_course.classroom demo --grade               # a made-up class, graded
  python -m llama_course.classroom exercises                  # what each exercise tests
"""


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1 second")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llama_course.classroom", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--notebooks", default="notebooks", metavar="DIR",
                   help="the course notebooks (default: notebooks)")
    p.add_argument("--workdir", default="build/classroom", metavar="DIR",
                   help="nbgrader's course folder: sources, gradebook.db, graded copies "
                   "(default: build/classroom)")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("student", help="write the student copy of every notebook")
    s.add_argument("--out", default="student", metavar="DIR", help="default: student")
    s.add_argument("--colab-url", metavar="URL",
                   help="the folder the copies will be published in, e.g. https://colab."
                   "research.google.com/github/YOU/FORK/blob/BRANCH/student: their Colab badges "
                   "then open the copies, not the course's notebooks with their solutions")
    s.add_argument("only", nargs="*", metavar="NOTEBOOK",
                   help="only these notebooks (e.g. 02_rmsnorm); default: all")
    g = sub.add_parser("grade", help="autograde a folder of submissions",
                       description="Grade SUBMISSIONS: <student>.ipynb files or <student>/ "
                       "folders of notebooks made from the student copies.")
    g.add_argument("submissions", metavar="SUBMISSIONS")
    g.add_argument("--out", default="grades", metavar="DIR",
                   help="where grades.csv, scores.csv and class.png go (default: grades)")
    g.add_argument("--timeout", type=_seconds, default=120, metavar="S",
                   help="seconds each cell may run before it is stopped (default 120)")
    g.add_argument("--full", action="store_true",
                   help="run notebook 07's full training (default: LLAMA_COURSE_QUICK=1)")
    d = sub.add_parser("demo", help="write (and grade) a made-up class of four")
    d.add_argument("--out", default="demo_class", metavar="DIR", help="default: demo_class")
    d.add_argument("--notebooks-used", nargs="+", default=["02_rmsnorm", "03_rope"],
                   metavar="STEM", help="default: 02_rmsnorm 03_rope")
    d.add_argument("--grade", action="store_true", help="then grade it into OUT/grades")
    d.add_argument("--timeout", type=_seconds, default=20, metavar="S", help="default 20")
    sub.add_parser("exercises", help="print the table of exercises (markdown)")
    return p


def _notebooks(a: argparse.Namespace, only: Sequence[str] = ()) -> list[Path]:
    from .assign import course_notebooks

    paths = course_notebooks(Path(a.notebooks))
    if only:
        unknown = sorted(set(only) - {p.stem for p in paths})
        if unknown:
            raise ValueError(f"no course notebook named {', '.join(unknown)} in {a.notebooks}")
        paths = [p for p in paths if p.stem in only]
    return paths


def _report(table, out: Path) -> None:
    from .grade import write_report

    paths = write_report(table, out)
    show = table.assign(message=table.message.str.split("\n").str[0].str.slice(0, 70))
    print(show.drop(columns=["max_score", "checkers"]).to_string(index=False))
    print(f"\n{table.score.sum():g} of {len(table)} exercises passed; wrote "
          + ", ".join(str(p) for p in paths.values()))


def main(argv: Optional[Sequence[str]] = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        if a.command == "exercises":
            from .exercises import exercise_table
            print(exercise_table(_notebooks(a)))
        elif a.command == "student":
            from .assign import write_student_copies
            for path in write_student_copies(_notebooks(a, a.only), Path(a.out),
                                             Path(a.workdir), a.colab_url):
                print(f"wrote {path}")
        elif a.command == "grade":
            from .grade import grade
            table = grade(Path(a.submissions), _notebooks(a), Path(a.workdir), a.timeout,
                          quick=not a.full)
            _report(table, Path(a.out))
        else:
            _demo(a)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _demo(a: argparse.Namespace) -> None:
    from .assign import write_student_copies
    from .demo import demo_class
    from .exercises import find_exercises, read_notebook
    from .grade import grade

    paths = _notebooks(a, a.notebooks_used)
    with tempfile.TemporaryDirectory() as tmp:
        write_student_copies(paths, Path(tmp), Path(a.workdir))
        exercises = {p.stem: find_exercises(read_notebook(p), p.stem) for p in paths}
        out = demo_class(Path(tmp), exercises, Path(a.out) / "submissions",
                         tuple(a.notebooks_used))
    print(f"wrote the demo submissions in {out}")
    if a.grade:
        _report(grade(out, paths, Path(a.workdir), a.timeout), Path(a.out) / "grades")


if __name__ == "__main__":
    sys.exit(main())
