# Two entry points: `make run` (the demo study) and `make test` (the test suite).
VENV ?= .venv
PYTHON ?= python3
CORES ?= all
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: run test install study study-gpu dry-run-paper report clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	"$(BIN)/python" -m pip install --quiet --upgrade pip
	"$(BIN)/python" -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	"$(BIN)/snakemake" --cores $(CORES)

test: install
	"$(BIN)/python" -m pytest

# The trained study (config/study.yaml): every model trained 480 gradient steps, results in
# results_study/ and the committed snapshot reports/study/ (README, "Trained study").
study: install
	"$(BIN)/snakemake" --cores $(CORES) --configfile config/study.yaml $(SNAKEMAKE_ARGS)

# Its GPU variant on one CUDA device (config/study_gpu.yaml): GPU_JOBS jobs share the device.
GPU_JOBS ?= 4
study-gpu: install
	"$(BIN)/snakemake" --cores $(CORES) --resources gpu=$(GPU_JOBS) \
		--configfile config/study.yaml config/study_gpu.yaml $(SNAKEMAKE_ARGS)

dry-run-paper: install
	"$(BIN)/snakemake" -n --configfile config/paper.yaml --quiet rules

# Every table, figure and the self-contained HTML report, regenerated from whatever is missing.
report: install
	"$(BIN)/snakemake" --cores $(CORES)
	"$(BIN)/snakemake" --report reports/report.html

clean:
	rm -rf results logs .snakemake reports/tables reports/figures reports/report.html reports/provenance.json
