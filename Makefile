# Second-party data pipeline. `make help` lists the targets.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)

.DEFAULT_GOAL := help
.PHONY: help install demo test generate bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements.txt
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP) ## create .venv with the pinned dependencies (requirements.txt)

demo: install ## generate partner drops, run the nightly DAG on embedded defaults, print what it did
	$(BIN)/python -m partner_pipeline.demo

test: install ## run the whole test suite (real S3 server, DuckDB files, Airflow in-process)
	$(BIN)/python -m pytest

generate: install ## rebuild the files generated from the agreements (expectations/, enriched_profiles docs)
	$(BIN)/python -m partner_pipeline.codegen

bench: install ## load and validate one large drop; ROWS=10000000 by default
	$(BIN)/python -m partner_pipeline.bench --rows $(or $(ROWS),10000000)

clean: ## remove generated data (data/), keep .venv
	rm -rf data
