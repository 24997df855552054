# Pilothouse: `make demo` runs the main job, `make test` runs every check.
# Both bootstrap what they need (.venv, node_modules, generated code) on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
BUF := node_modules/.bin/buf
TS := clients/typescript

.PHONY: demo test lint typecheck buf check-generated generate test-python test-ts bench clean

# xds-protos ships an old copy of the OpenTelemetry protos into the same package
# directory as opentelemetry-proto; whichever installs last wins. The OTLP exporter needs
# opentelemetry-proto's own, so it is put back last.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --force-reinstall --no-deps \
	  "opentelemetry-proto==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(TS)/node_modules/.installed: $(TS)/package.json $(TS)/package-lock.json
	cd $(TS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

generate: $(BIN)/.installed
	$(PY) scripts/gen_protos.py

# The committed modules must be what the protos generate today.
check-generated: $(BIN)/.installed
	@tmp=$$(mktemp -d) && $(PY) scripts/gen_protos.py --out $$tmp >/dev/null 2>&1 \
	  && diff -r -x __pycache__ $$tmp/pilothouse/v1 clients/python/pilothouse/v1 \
	  && rm -rf $$tmp && echo "generated code is fresh" \
	  || { echo "clients/python/pilothouse/v1 is stale: run 'make generate' and commit"; exit 1; }
	$(PY) scripts/field_reference.py --check

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy controlplane dataplane storekit clients/python/pilothouse

buf: node_modules/.installed
	$(BUF) lint
	bash scripts/buf_breaking.sh

test-python: $(BIN)/.installed
	$(BIN)/pytest -q

test-ts: $(BIN)/.installed $(TS)/node_modules/.installed
	cd $(TS) && PILOTHOUSE_PYTHON=$(abspath $(PY)) npm test --silent

test: lint typecheck buf check-generated test-ts test-python

demo: $(BIN)/.installed
	$(PY) scripts/demo.py

bench: $(BIN)/.installed
	$(BIN)/python -m tests.bench.registry_bench
	$(BIN)/python -m tests.bench.run_bench
	$(BIN)/python -m tests.bench.short_run_bench
	$(BIN)/python -m tests.bench.checkpoint_bench
	$(BIN)/python -m tests.bench.propagation_bench
	$(BIN)/python -m tests.bench.throughput_bench
	$(BIN)/python -m tests.bench.ingest_bench
	$(BIN)/python -m tests.bench.quota_bench
	$(BIN)/python -m tests.bench.tracing_bench
	$(BIN)/python -m tests.bench.analysis_bench
	$(BIN)/python -m tests.bench.hostile_bench

clean:
	rm -rf $(VENV) node_modules $(TS)/node_modules $(TS)/dist .pilothouse
