"""Running the course for a class: student copies and autograding, with nbgrader.

Plumbing around the course, not part of it: the notebooks stay the single source. `assign`
turns each notebook's exercises into nbgrader's format and writes the student copies;
`grade` autogrades a folder of submissions (each in its own kernel, with a time limit per
cell) and reports per student and exercise; `demo` makes a small made-up class to try it.
Command line: `python -m llama_course.classroom --help`. Needs the `classroom` extra.
"""
