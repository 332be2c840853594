# The two commands of the README: `make demo` and `make test`. Both create .venv when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo_out
# A rerun replaces only the demo's own files (listed in $(DEMO_OUT)/demo-manifest.json);
# `make demo FORCE=1` also writes where files are not its own (others are never touched).
FORCE ?=

.PHONY: venv demo test lint bench clean

venv:
	@VENV=$(VENV) tools/ensure-venv.sh

demo: venv
	$(VENV)/bin/lnm-deploy demo --out $(DEMO_OUT) $(if $(FORCE),--force)

test: venv
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check lnm_deploy tests benchmarks
	$(VENV)/bin/mypy lnm_deploy

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .hypothesis
