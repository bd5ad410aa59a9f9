# The course's two commands (see README.md). Both install into the active Python environment.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
RUN_DIR ?= runs/shakespeare

.PHONY: run test install install-test

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

test: install-test
	$(PYTHON) -m pytest
