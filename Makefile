# tenantflow: `make demo` runs the lab demo, `make test` the whole suite.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: deps ovs demo test unit bench soak lint clean

deps:
	@bash scripts/bootstrap.sh

ovs: deps
	@bash scripts/start-ovs.sh

demo: ovs
	$(PY) -m apps.cli demo

# The API suites again with the topology in etcd: everything the API promises holds on both stores.
API_SUITES = tests/test_api.py tests/test_api_l3.py tests/test_api_secgroups.py tests/test_api_ipam.py \
	tests/test_api_collections.py tests/test_api_events.py tests/test_openapi.py tests/test_api_limits.py

test: ovs
	$(PY) -m pytest -q --durations=20 tests
	TENANTFLOW_TEST_STORE=etcd $(PY) -m pytest -q $(API_SUITES)

unit: deps
	$(PY) -m pytest -q tests -m "not ovs"

bench: ovs
	$(PY) -m apps.bench --out results/bench.json

# An hour of churn and controller restarts on a lab under ping; `make soak MINUTES=5` for a short one.
MINUTES ?= 60
soak: ovs
	$(PY) -m apps.cli soak --minutes $(MINUTES) --out results/soak.json

lint: deps
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) *.egg-info build results
