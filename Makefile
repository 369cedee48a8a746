# The two commands the README promises: `make demo` and `make test`.
# Both create .venv when it is missing and install the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint typecheck bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(STAMP)

demo: $(STAMP)
	$(BIN)/paywire demo

lint: $(TEST_STAMP)
	$(BIN)/ruff check .

typecheck: $(TEST_STAMP)
	$(BIN)/mypy --strict protocol/ gateway/

# Test files run on TEST_WORKERS processes (pytest-xdist), a whole file per worker so that
# a file's shared fixtures start once; TEST_WORKERS=0 runs them all in this process.
TEST_WORKERS ?= 3
test: $(TEST_STAMP) lint typecheck
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The long randomized variant of the fault tests: ROUNDS kills of the hub under load
# (default 50), each with its own printed seed; results in soak-results.json.
ROUNDS ?= 50
soak: $(TEST_STAMP)
	PAYWIRE_SOAK_ROUNDS=$(ROUNDS) PAYWIRE_SOAK_RESULTS=soak-results.json \
		$(BIN)/python -m pytest -q -s tests/test_faults_kill.py tests/test_faults_chaos.py
	cat soak-results.json

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	touch $@ $(STAMP)

# Reproduces BENCHMARKS.md: every baseline in one invocation (about 15 minutes: the memory
# run warms up for the 5-minute replay window, then measures 5 minutes).
# BASELINE=FILE: the result file of another checkout's `make bench` (e.g. the code before a
# change), run in the same hour: CPU per charge is then reported as a ratio against it.
bench: $(BENCH_STAMP)
	$(BIN)/paywire bench all --duration-s 10 --memory-s 300 \
		--plot bench/results/latency.png --markdown bench/results/latest.md \
		$(if $(BASELINE),--baseline $(BASELINE),)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
