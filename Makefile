# tenantflow: `make demo` runs the lab demo, `make test` the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: deps ovs demo test unit bench lint clean

deps:
	@bash scripts/bootstrap.sh

ovs: deps
	@bash scripts/start-ovs.sh

demo: ovs
	$(PY) -m apps.cli demo

test: ovs
	$(PY) -m pytest -q tests

unit: deps
	$(PY) -m pytest -q tests -m "not ovs"

bench: ovs
	$(PY) -m apps.bench --out results/bench.json

lint: deps
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) *.egg-info build results
