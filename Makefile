# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TFD    := $(VENV)/bin/tfdeploy
STAMP  := $(VENV)/.installed
DEMO_BASE := models/deeplab

export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: demo test venv lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(TFD) export --output $(DEMO_BASE)
	$(TFD) inspect $(DEMO_BASE)

test: $(STAMP)
	$(PY) -m ruff check tfdeploy tests bench checkpoints
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check tfdeploy tests bench checkpoints

clean:
	rm -rf $(VENV) models masks .pytest_cache
