# gradtap: `make demo` (explained photos into out/demo/) and `make test`; both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.gradtap-setup
# Embedding examples (examples/): npm packages, onnxruntime headers + library, Chromium, stb
NPM_DIR := build/npm
ORT_DIR := build/ort
EMBED_STAMP := build/.gradtap-embed
NPM_PACKAGES := onnxruntime-node@1.30.0 onnxruntime-web@1.30.0 com.github.asus4.onnxruntime@0.4.9 pngjs@7.0.0 jpeg-js@0.4.4
ORT_HEADERS := $(NPM_DIR)/node_modules/com.github.asus4.onnxruntime/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/onnxruntime.framework/Headers
ROOT := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup test test-fast demo bench bench-e2e bench-ray bench-scorecam bench-fullgrad bench-lrp bench-openvino zoo lint typecheck models models-robust wheels clean examples

setup: $(STAMP) $(EMBED_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e ".[export,dev]"
	$(BIN)/python -m pip install -q --no-deps quantus==0.6.0  # pyproject: why --no-deps
	touch $(STAMP)

$(EMBED_STAMP): $(STAMP) Makefile
	command -v chromium >/dev/null && test -f /usr/include/stb/stb_image.h || \
		{ $(ROOT) apt-get update && $(ROOT) apt-get install -y --no-install-recommends chromium libstb-dev; }
	npm install --ignore-scripts --no-audit --no-fund --prefix $(NPM_DIR) $(NPM_PACKAGES)
	rm -rf $(ORT_DIR) && mkdir -p $(ORT_DIR)/lib && cp -r "$(ORT_HEADERS)" $(ORT_DIR)/include
	lib=$$($(BIN)/python -c "import onnxruntime, pathlib; print(next((pathlib.Path(onnxruntime.__file__).parent / 'capi').glob('libonnxruntime.so.*')))") && \
		ln -sf "$$lib" $(ORT_DIR)/lib/libonnxruntime.so.1 && ln -sf libonnxruntime.so.1 $(ORT_DIR)/lib/libonnxruntime.so
	touch $(EMBED_STAMP)

examples: setup  # the C++ example, built against the onnxruntime wheel's library
	cmake -S examples/cpp -B build/cpp -DORT_DIR=$(abspath $(ORT_DIR)) -DCMAKE_BUILD_TYPE=Release
	cmake --build build/cpp

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

demo: setup
	$(BIN)/python -m gradtap.cli.demo

bench: setup
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-e2e: setup  # folders of real photos end to end: gradtap explain vs the pytorch-grad-cam/captum scripts
	$(BIN)/python bench/e2e.py $(BENCH_ARGS)

bench-ray: setup  # the Ray engine with 1 and 2 workers on this machine
	$(BIN)/python bench/e2e_ray.py $(BENCH_ARGS)

SCORECAM_REAL = --model efficientnet_lite0 --weights IMAGENET1K --photos --images 4

bench-scorecam: setup  # Score-CAM / Ablation-CAM against pytorch-grad-cam at equal settings (ResNet18 random, EfficientNet-Lite0 real weights on photos)
ifeq ($(strip $(BENCH_ARGS)),)
	$(BIN)/python bench/scorecam.py
	$(BIN)/python bench/scorecam.py $(SCORECAM_REAL)
else
	$(BIN)/python bench/scorecam.py $(BENCH_ARGS)
endif

bench-fullgrad: setup  # FullGrad against pytorch-grad-cam at equal settings
	$(BIN)/python bench/fullgrad.py $(BENCH_ARGS)

bench-lrp: setup  # what the LRP walk costs gradient calls (with and without it), and an LRP call
	$(BIN)/python bench/lrp.py $(BENCH_ARGS)

bench-openvino: setup  # OpenVINO (BENCH_ARGS="--runtime tract": tract, flat variant) against onnxruntime on zoo models
	$(BIN)/python bench/openvino_zoo.py $(BENCH_ARGS)

zoo: setup  # the model-zoo check: writes docs/models.md, resumes from out/zoo/ (ZOO_ARGS=--models a,b)
	$(BIN)/python bench/zoo.py $(ZOO_ARGS)

models: setup  # the committed explanation graphs of the trained custom CNNs
	$(BIN)/gradtap export smallcnn -w models/smallcnn.pt -o models/smallcnn.gradtap.onnx --lrp --overwrite
	$(BIN)/gradtap export smallcnn -w models/smallcnn_robust.pt -o models/smallcnn_robust.gradtap.onnx --lrp --overwrite

# Retrain the adversarially trained custom CNN (PGD fine-tuning of models/smallcnn.pt; see
# models/README.md), then `make models`. A few minutes on two idle cores.
ROBUST_ARGS := --synthetic --init models/smallcnn.pt --train-samples 4000 --test-samples 1000 \
	--epochs 4 --lr 1e-3 --adv-eps 0.031373 --adv-steps 2 --attack-steps 10
models-robust: setup
	$(BIN)/python -m gradtap.export.models.train $(ROBUST_ARGS) --out models/smallcnn_robust.pt

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

typecheck: setup  # runtime/ and export/graph/ (pyproject [tool.mypy])
	$(BIN)/mypy

clean:
	rm -rf out models/cache .pytest_cache
