PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast bench clean

# The stamp makes `make venv` idempotent: pip runs again only when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/dfp demo

test: $(STAMP)
	$(BIN)/python -m pytest

# the inner loop: everything but the tests marked slow (end-to-end runs of 10 s and more each)
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/dfp bench all --json bench_out/bench.json

clean:
	rm -rf $(VENV) build *.egg-info
