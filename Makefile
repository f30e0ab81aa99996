# `make demo`: set up .venv and run the whole workflow on the demo config.
# `make test`: set up .venv and run the test suite. Both are idempotent.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
CORES ?= $(shell nproc)
CONFIG ?= config.yaml

.PHONY: demo test report lint clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

RUN := PATH="$(CURDIR)/$(VENV)/bin:$$PATH"

demo: $(STAMP)
	$(RUN) snakemake --cores $(CORES) --workflow-profile profiles/default
	@cat results/demo/eval/summary.md

# `make report CONFIG=configs/voc12.yaml`: the report of that config's finished run.
report: $(STAMP)
	@$(VENV)/bin/python -m qaclims.report_ready --configfile $(CONFIG)
	$(RUN) snakemake --configfile $(CONFIG) --report report.html

# Two workers, each test file on one (its module fixtures run once): the heavy files
# (staleness, layouts, SLURM) spend much of their time waiting on subprocesses.
test: $(STAMP)
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/snakefmt --check Snakefile rules
	$(RUN) snakemake --lint

clean:
	rm -rf results logs .snakemake data/demo
