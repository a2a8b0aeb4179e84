# gradtap: `make demo` (explained photos into out/demo/) and `make test`; both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.gradtap-setup

.PHONY: setup test test-fast demo bench zoo lint models clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e ".[export,dev]"
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

demo: setup
	$(BIN)/python -m gradtap.cli.demo

bench: setup
	$(BIN)/python bench/run.py $(BENCH_ARGS)

zoo: setup  # the model-zoo check: writes docs/models.md, resumes from out/zoo/ (ZOO_ARGS=--models a,b)
	$(BIN)/python bench/zoo.py $(ZOO_ARGS)

models: setup  # the committed explanation graph of the trained custom CNN
	$(BIN)/gradtap export smallcnn -w models/smallcnn.pt -o models/smallcnn.gradtap.onnx --overwrite

lint: setup
	$(BIN)/ruff check export runtime cli tests bench
	$(BIN)/ruff format --check export runtime cli tests bench

clean:
	rm -rf out models/cache .pytest_cache
