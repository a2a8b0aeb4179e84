# gradtap: `make demo` (explained photos into out/demo/) and `make test`; both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.gradtap-setup

.PHONY: setup test test-fast demo bench lint models models-robust clean

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

models: setup  # the committed explanation graphs of the trained custom CNNs
	$(BIN)/gradtap export smallcnn -w models/smallcnn.pt -o models/smallcnn.gradtap.onnx --overwrite
	$(BIN)/gradtap export smallcnn -w models/smallcnn_robust.pt -o models/smallcnn_robust.gradtap.onnx --overwrite

# Retrain the adversarially trained custom CNN (PGD fine-tuning of models/smallcnn.pt; see
# models/README.md), then `make models`. A few minutes on two idle cores.
ROBUST_ARGS := --synthetic --init models/smallcnn.pt --train-samples 4000 --test-samples 1000 \
	--epochs 4 --lr 1e-3 --adv-eps 0.031373 --adv-steps 2 --attack-steps 10
models-robust: setup
	$(BIN)/python -m gradtap.export.models.train $(ROBUST_ARGS) --out models/smallcnn_robust.pt

lint: setup
	$(BIN)/ruff check export runtime cli tests bench
	$(BIN)/ruff format --check export runtime cli tests bench

clean:
	rm -rf out models/cache .pytest_cache
