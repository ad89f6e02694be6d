# retain: `make help` lists the targets. Every target installs what it needs first (make setup).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
RETAIN := $(VENV)/bin/retain
DATA ?= data/demo
DEMO_MEMBERS ?= 50000
DEMO_DAYS ?= 730
DEMO_SEED ?= 42
DATE ?=
OUT ?= exports

export MLFLOW_DISABLE_TELEMETRY := true
export BENTOML_DO_NOT_TRACK := true
export GIT_PYTHON_REFRESH := quiet
export DO_NOT_TRACK := 1

.PHONY: help setup lock demo test test-fast lint simulate train export monitor backtest-cdnow serve bento bench bench-serve bench-policy bench-readout bench-export bench-engine bench-monitor

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-15s %s\n", $$1, $$2}'

# Bytecode is compiled once at install: every `retain` process then starts in about half the time (the
# imports of MLflow, LightGBM and scikit-learn; more where PYTHONDONTWRITEBYTECODE is set, as in CI).
$(VENV)/.installed: requirements.lock pyproject.toml
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
	@test -d $(VENV) || uv venv --quiet --python 3.11 $(VENV)
	uv pip sync --quiet --compile-bytecode --python $(PY) requirements.lock
	uv pip install --quiet --python $(PY) --no-deps -e .
	@touch $@

setup: $(VENV)/.installed ## Install uv (if missing), create .venv and install the locked dependencies

lock: ## Re-resolve the dependencies into requirements.lock (versions and hashes only)
	@command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv
	uv pip compile pyproject.toml --group dev --python-version 3.11 --generate-hashes -o requirements.lock

$(DATA)/dataset.json: | setup
	$(RETAIN) simulate --members $(DEMO_MEMBERS) --days $(DEMO_DAYS) --seed $(DEMO_SEED) --out $(DATA)

simulate: setup ## Simulate the demo shop into data/demo (50,000 members over 730 days, seed 42)
	$(RETAIN) simulate --members $(DEMO_MEMBERS) --days $(DEMO_DAYS) --seed $(DEMO_SEED) --out $(DATA)

demo: setup $(DATA)/dataset.json ## Install, build the demo dataset, train and register the models, export the day's list
	$(RETAIN) features --data $(DATA) --as-of $$($(PY) -c "import json; print(json.load(open('$(DATA)/dataset.json'))['observed_until'][:10])") --out $(DATA)/features_latest.parquet
	$(RETAIN) train --data $(DATA)
	$(RETAIN) export --data $(DATA) --out $(OUT) --force

train: setup $(DATA)/dataset.json ## Fit, backtest, log to MLflow and gate the models (make train DATA=data/shop)
	$(RETAIN) train --data $(DATA)

export: setup ## Write the day's at-risk list, summary and report to exports/DATE/ (DATE defaults to the data's end)
	$(RETAIN) export --data $(DATA) --out $(OUT) $(if $(DATE),--date $(DATE))

monitor: setup ## Is the model still right? Realised accuracy of past exports, drift; exit 4 on an alert (for cron)
	$(RETAIN) monitor --data $(DATA) --exports $(OUT)

serve: setup ## Serve the champions over HTTP on 127.0.0.1:3000 (needs RETAIN_API_TOKEN; after make train)
	$(RETAIN) serve

data/cdnow/dataset.json: | setup
	$(RETAIN) ingest --orders examples/cdnow/CDNOW_master.txt --mapping examples/cdnow_mapping.toml --currency USD --out data/cdnow

backtest-cdnow: setup data/cdnow/dataset.json ## Backtest on the real CDNOW log (classic split and later cutoffs)
	$(RETAIN) backtest --data data/cdnow --task repurchase --cutoffs 1997-10-01 --repurchase-horizon 273 --json bench/out/cdnow_273.json
	$(RETAIN) backtest --data data/cdnow --task repurchase --cutoffs 1997-10-01,1998-01-01,1998-04-01 --repurchase-horizon 90 --json bench/out/cdnow_90.json

test: setup ## Run the whole test suite
	$(PY) -m pytest

test-fast: setup ## The tests that are not marked slow (no training runs, servers, Dask or wheel): about 25 s
	$(PY) -m pytest -m "not slow"

lint: setup ## Check the code with ruff
	$(VENV)/bin/ruff check src training serving tests bench

bench: setup ## Run the benchmarks (simulator, features, training); figures go to bench/README.md
	$(PY) bench/bench_simulate.py
	$(PY) bench/bench_features.py
	$(PY) bench/bench_train.py

bench-serve: setup ## Serving speed against a bare BentoML endpoint, real server on 127.0.0.1 (after make train)
	$(PY) bench/bench_serve.py

bento: setup ## Build the service as a Bento (retain's wheel in dist/, dependencies from requirements.lock)
	rm -rf dist build && uv build --wheel --quiet -o dist && rm -rf build
	$(VENV)/bin/bentoml build

bench-policy: setup ## The decision policy against three simple rules on the simulator's true profit (after make demo)
	$(PY) bench/bench_policy.py --data $(DATA)

bench-readout: setup ## The campaign readout's intervals against the simulator's true incremental margin (after make demo)
	$(PY) bench/bench_readout.py --data $(DATA)

bench-export: setup ## The daily export of 1,000,000 members: time and memory (after make demo)
	$(PY) bench/bench_export.py

bench-monitor: setup ## retain monitor over monthly exports of the demo shop: alerts, realised ECE, estimated against realised ROC-AUC
	$(PY) bench/bench_monitor.py --data $(DATA) --train-until 2025-07-01 --every 30

bench-engine: setup ## Features and export, local engine against a 2-worker Dask LocalCluster, at 250k/500k/1M members
	$(PY) bench/bench_engine.py
