# Second-party data pipeline. `make help` lists the targets.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt pyproject.toml | cksum | cut -d' ' -f1)

.DEFAULT_GOAL := help
.PHONY: help install chromium postgres demo run analyst airflow s3 lint test test-fast generate bench bench-scale bench-cosmos clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	@# --compile-bytecode: uv writes no .pyc (pip does); where PYTHONDONTWRITEBYTECODE is set nothing ever
	@# would, and every task, dbt and test process would compile Airflow, dbt and pandas again (~4 s each)
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -r requirements.txt
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python --no-deps -e .
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP) ## create .venv with the pinned dependencies (requirements.txt)

demo: install ## generate partner drops, run the nightly DAG on embedded defaults, print what it did
	$(BIN)/python -m partner_pipeline_dev.demo

run: install ## run the nightly DAG for DATE=YYYY-MM-DD on your drops (UPLOAD=folder laid out <bucket>/<key>)
	@test -n "$(DATE)" || { echo "usage: make run DATE=YYYY-MM-DD [UPLOAD=folder]"; exit 2; }
	$(BIN)/python -m partner_pipeline_dev.run --date $(DATE) $(if $(UPLOAD),--upload $(UPLOAD))

airflow: install ## Airflow 3 (UI on 127.0.0.1:8080, scheduler, dag-processor, triggerer) and the local S3 until Ctrl-C
	$(BIN)/python -m partner_pipeline_dev.local_airflow $(or $(PORT),8080)

s3: install ## serve the embedded S3 store (data/s3) on 127.0.0.1:8333 until Ctrl-C
	$(BIN)/python -m partner_pipeline_dev.local_s3 --port $(or $(PORT),8333)

# Debian packages the tests need, installed with apt-get when missing (as root or with passwordless
# sudo; otherwise the command to run is printed). $(1): the package, $(2): a shell test that it is
# there, $(3): what the tests use it for.
define apt_install
	@$(2) || { \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else \
	    echo "The tests need Debian's $(1) ($(3)) and this user cannot install it. Run:"; \
	    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends $(1)"; \
	    echo "then make test again."; exit 1; fi; \
	  echo "installing Debian's $(1) for the tests: $(3) (apt-get) ..."; \
	  $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(1); }
endef

chromium: ## install Debian's chromium (the browser the run-report test uses), if missing
	$(call apt_install,chromium,test -x /usr/bin/chromium,the run report's browser test)

postgres: ## install Debian's postgresql (the DuckLake catalog the lake tests start on loopback), if missing
	$(call apt_install,postgresql,ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1,the DuckLake catalog of the lake tests)

# sqlfluff's dbt templater compiles every model, and some models query their inputs while compiling:
# it runs against a warehouse with the schema and no rows (tests/schema_warehouse.py), in data/lint.
LINT_DIR := data/lint

analyst: install ## the DuckDB CLI on the published marts, read-only (NIGHT=YYYY-MM-DD: a night the lake still keeps; SQL=...: run it and exit; EXPORT=file.duckdb: write them to a file)
	$(BIN)/python -m partner_pipeline_dev.analyst $(if $(NIGHT),--night $(NIGHT)) $(if $(SQL),-c "$$SQL") $(if $(EXPORT),--export "$$EXPORT")

lint: install ## ruff on the Python tree, sqlfluff (dbt templater) on the dbt project
	$(BIN)/ruff check .
	$(BIN)/python tests/schema_warehouse.py $(LINT_DIR) >/dev/null
	PIPELINE_WAREHOUSE_PATH=$(abspath $(LINT_DIR))/warehouse.duckdb PIPELINE_MARTS_PATH=$(abspath $(LINT_DIR))/marts.duckdb \
	  $(BIN)/sqlfluff lint dbt_project

test-fast: install ## the fast tier (< 2 min): DAG integrity, unit tests, dbt unit tests; no S3 server, no scenario builds
	$(BIN)/python -m pytest -m "not e2e and not slow"

# Two workers (pytest-xdist), a test file each at a time, the longest files first (tests/conftest.py): one
# process leaves a core idle while it waits on servers and Airflow's scheduler, two keep both busy (the
# suite is then CPU-bound); each worker has its own servers and Airflow home.
test: install chromium postgres lint ## lint, then the whole test suite (real S3 server, PostgreSQL, DuckDB files, Airflow, headless Chromium)
	$(BIN)/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=15

generate: install ## rebuild the files generated from the agreements (expectations/, enriched_profiles docs)
	$(BIN)/python -m partner_pipeline.codegen

bench-scale: install ## the scale curve: one night at PROFILES (default "1000000 10000000 50000000") profiles against ROWS (default 10000000) partner rows, on WAREHOUSE (default lake); writes bench/results/scale-*.svg
	$(BIN)/python -m partner_pipeline_dev.bench --rows $(or $(ROWS),10000000) --profiles $(or $(PROFILES),1000000 10000000 50000000) --warehouse $(or $(WAREHOUSE),lake)

bench: install ## the whole night vs its single-DuckDB floor at ROWS (default "1000000 10000000") on WAREHOUSE (default "lake lake-postgres"; or file), checked against ground truth
	$(BIN)/python -m partner_pipeline_dev.bench --rows $(or $(ROWS),1000000 10000000) --warehouse $(or $(WAREHOUSE),lake lake-postgres)

# Cosmos is not a dependency of the pipeline: the measurement gets an environment of its own.
COSMOS_VENV := .venv-cosmos

bench-cosmos: install ## the night's dbt step as today's one task vs Cosmos watcher mode, under a real scheduler (own .venv-cosmos)
	@test -x $(COSMOS_VENV)/bin/python || $(PYTHON) -m venv $(COSMOS_VENV)
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(COSMOS_VENV)/bin/python -r requirements.txt -r bench/cosmos/requirements.txt
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(COSMOS_VENV)/bin/python --no-deps -e .
	$(COSMOS_VENV)/bin/python bench/cosmos/run.py $(if $(ROUNDS),--rounds $(ROUNDS))

clean: ## remove generated data (data/), keep .venv
	rm -rf data
