# Matrix ⇄ SIP bridge. `make demo` and `make test` work on a fresh Debian machine as root.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEBIAN_PACKAGES := kamailio sip-tester baresip-core
PYTEST_ARGS ?=

.PHONY: help demo test lint bench venv debs postgres clean

help:
	@echo "make demo   - local Synapse + the bridge on SQLite; prints how to log in"
	@echo "make test   - install what the tests need and run the whole suite"
	@echo "make lint   - ruff and mypy"
	@echo "make bench  - call ramp, call-setup overhead, message throughput, clock callbacks, receive path (bench/results/)"
	@echo "make clean  - remove the venv and the demo's data"

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { apt-get update -q && apt-get install -y -q python3 python3-venv; }
	@$(PYTHON) -m venv --help >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q python3-venv; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,lint]"
	touch $(STAMP)

venv: $(STAMP)

# Debian packages for the SIP peers the tests run (Kamailio, sipp, baresip). Installing the
# kamailio package may start a system Kamailio; the tests never use or stop it.
debs:
	@missing=""; \
	command -v kamailio >/dev/null || [ -x /usr/sbin/kamailio ] || missing="$$missing kamailio"; \
	command -v sipp >/dev/null || missing="$$missing sip-tester"; \
	command -v baresip >/dev/null || missing="$$missing baresip-core"; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

# The machine's PostgreSQL on 127.0.0.1:5432 (the Postgres half of the storage tests).
postgres:
	@if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then \
		if command -v pg_ctlcluster >/dev/null; then \
			pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start || true; \
		else echo "warning: no PostgreSQL here; the Postgres storage tests will fail"; fi; \
	fi

test: venv debs postgres
	$(PY) -m pytest -p no:cacheprovider $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check bridge tests bench demo
	$(VENV)/bin/mypy

# Concurrent-call ramp (stops past 1 % frame loss or a failed call; latest.json/.md/.png),
# call-setup overhead and message throughput; py-spy profile: see bench/results/README.md.
BENCH_SECONDS ?= 20
BENCH_RAMP ?= 1,5,10,20,40,80,120
bench: venv debs
	$(PY) -m pip install -q -e ".[test,lint,bench]"
	mkdir -p bench/results
	$(PY) bench/calls.py --ramp $(BENCH_RAMP) --seconds $(BENCH_SECONDS) --out-dir bench/results
	set -o pipefail; $(PY) bench/call_setup.py --calls 20 | tee bench/results/call_setup.txt
	set -o pipefail; $(PY) bench/messages.py --rates 10,20,30,40,50,70,100 --seconds 60 --out bench/results/messages.json \
		| tee bench/results/messages.txt
	set -o pipefail; $(PY) bench/clock_callbacks.py --ports 8 --seconds 5 --rounds 5 2>&1 \
		| tee bench/results/clock_callbacks.txt
	set -o pipefail; $(PY) bench/receive_path.py --packets 10000 --rounds 5 2>&1 \
		| tee bench/results/receive_path.txt

demo: venv debs
	$(PY) demo/run.py

clean:
	rm -rf $(VENV) demo-data
