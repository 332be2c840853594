# The two commands of the README: `make demo` and `make test`. Both create .venv when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo_out

.PHONY: venv demo test lint bench clean

venv:
	@VENV=$(VENV) tools/ensure-venv.sh

demo: venv
	$(VENV)/bin/lnm-deploy demo --out $(DEMO_OUT)

test: venv
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check lnm_deploy tests benchmarks
	$(VENV)/bin/mypy lnm_deploy

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .hypothesis
