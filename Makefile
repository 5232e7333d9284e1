# Two commands for a fresh clone: `make demo` and `make test`.
# Both create .venv from the pinned requirements.txt when it is missing or stale.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench quick-demo clean-venv

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23" "setuptools<81" wheel
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cryomap demo -o demo_out --force

quick-demo: $(STAMP)
	$(BIN)/cryomap demo --quick -o demo_out_quick --force

test: $(STAMP)
	OMP_NUM_THREADS=2 $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps -r benchmarks/requirements-bench.txt
	$(BIN)/python -m benchmarks

clean-venv:
	rm -rf $(VENV)
