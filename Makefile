# gradtap: `make demo` (explained photos into out/demo/) and `make test`; both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.gradtap-setup

.PHONY: setup test test-fast demo bench lint models wheels clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e ".[export,dev]"
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "setup: chromium not installed; the browser test of the gallery will fail"
	touch $(STAMP)

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

demo: setup
	$(BIN)/python -m gradtap.cli.demo

bench: setup
	$(BIN)/python bench/run.py $(BENCH_ARGS)

models: setup  # the committed explanation graph of the trained custom CNN
	$(BIN)/gradtap export smallcnn -w models/smallcnn.pt -o models/smallcnn.gradtap.onnx --overwrite

# Wheels for a machine without torch or network: gradtap itself (with the shipped smallcnn), the
# EfficientNet-Lite0 model wheel (exported once with torch; reproducible, with .sha256 files) and
# the runtime dependencies, so `pip install --no-index --find-links build/wheels --find-links
# build/wheels/deps gradtap gradtap-models-imagenet` works offline.
WHEELS := build/wheels
wheels: setup
	rm -f $(WHEELS)/gradtap-*.whl
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w $(WHEELS) .
	cd $(WHEELS) && sha256sum gradtap-*.whl > "$$(ls gradtap-*.whl).sha256"
	$(BIN)/python -m gradtap.export.models.wheel efficientnet_lite0 -o $(WHEELS)
	$(BIN)/python -m pip download -q -d $(WHEELS)/deps $(WHEELS)/gradtap-*.whl

lint: setup
	$(BIN)/ruff check export runtime cli tests bench
	$(BIN)/ruff format --check export runtime cli tests bench

clean:
	rm -rf out models/cache .pytest_cache
