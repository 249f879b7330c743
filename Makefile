PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast bench clean

# CPU-only machines: `make venv TORCH_INDEX=https://download.pytorch.org/whl/cpu` takes torch, torchvision and
# torchaudio (the versions pyproject.toml pins) from that index first: no CUDA libraries, about 2 GB instead of 6.
TORCH_INDEX ?=
# pip says what it fetches; its progress bars only at a terminal, not in CI logs
PIP_INSTALL := $(BIN)/python -m pip install $(if $(CI),--progress-bar off,)

# The stamp makes `make venv` idempotent: pip runs again only when pyproject.toml changes.
$(STAMP): pyproject.toml
	@echo "== $(VENV): Python environment and pip"
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(if $(TORCH_INDEX),@echo "== torch torchvision torchaudio from $(TORCH_INDEX)")
	$(if $(TORCH_INDEX),$(PIP_INSTALL) --index-url $(TORCH_INDEX) $$(grep -oE 'torch(vision|audio)?==[0-9.]+' pyproject.toml))
	@echo "== dfp and its dependencies ($(if $(TORCH_INDEX),about 2 GB,about 6 GB with torch's CUDA libraries); a few minutes)"
	$(PIP_INSTALL) -e '.[test]'
	touch $(STAMP)
	@echo "== ready: 'source $(VENV)/bin/activate' puts dfp on PATH (or run $(BIN)/dfp)"

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
