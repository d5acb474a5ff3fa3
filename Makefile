# make demo: set up .venv and run the default workflow end to end on the embedded dataset.
# make test: set up .venv and run the test suite (what CI runs).
# make profiles: link profiles/<name>/ where Snakemake finds a profile name (`--profile slurm`).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test venv dry-run lint format report clean profiles

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(BIN)/snakemake --profile profiles/local
	$(BIN)/python -m synapse_ei.stage_times results

test: $(STAMP)
	$(BIN)/python -m pytest

# profiles/ is also a directory: .PHONY makes this target run anyway.
profiles: $(STAMP)
	$(BIN)/python -m synapse_ei.profiles

dry-run: $(STAMP)
	$(BIN)/snakemake -n

lint: $(STAMP)
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/

format: $(STAMP)
	$(BIN)/snakefmt Snakefile workflow/

report: $(STAMP)
	$(BIN)/snakemake --report results/report.html

clean:
	rm -rf results/*/ .snakemake/
