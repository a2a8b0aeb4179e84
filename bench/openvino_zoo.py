"""OpenVINO (or tract) against onnxruntime on the explanation graphs of a set of zoo models.

``python bench/openvino_zoo.py [--models torchvision:resnet50,timm:...] [--size 96]
[--runtime openvino|tract]``

Each model (random weights, seeded; ``bench.zoo.build``) is exported with the TorchScript
exporter, augmented with the LRP walk where its ops allow, compiled by OpenVINO at f32 and run
beside onnxruntime on the same two inputs: the input gradient (plain and guided) and, where the
graph carries the walk, the ``lrp_epsilon_plus`` relevance. A result agrees when its relative L2
difference is within 1 % or within three times onnxruntime's own change under input noise of
1e-7 (a ReLU decision near zero taken the other way moves a gradient by more than rounding).
Each setting runs twice in OpenVINO: the verdict is the second call's, and a first call that
differed where the second agrees is flagged ``first call off`` (docs/embedding.md, OpenVINO).
With ``--runtime tract`` the other side is tract on the flat variant, carrying the
``epsilon_plus`` composite where the ops allow (``augment(flat=True, lrp_composite=...)``),
against onnxruntime on the gated graph.
Prints one row per model; a model that fails to export, augment or compile is a row with the
reason, and the run goes on. ``source:name@size`` measures one model at another size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

DEFAULT_MODELS = (
    "torchvision:resnet50,torchvision:resnet18,torchvision:vgg11_bn@224,torchvision:densenet121,"
    "torchvision:mobilenet_v2,torchvision:mobilenet_v3_small,torchvision:efficientnet_b0,"
    "torchvision:regnet_y_400mf,torchvision:shufflenet_v2_x1_0,torchvision:squeezenet1_1,"
    "torchvision:convnext_tiny,torchvision:googlenet,timm:resnet26d,timm:efficientnet_lite0,"
    "timm:deit_tiny_patch16_224@224"
)
RULES = {"plain": 0, "guided": 1, "lrp_epsilon_plus": 8}
NOISE = 1e-7
TOLERANCE = 1e-2


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    b64 = np.asarray(b, np.float64)
    return float(np.linalg.norm(np.asarray(a, np.float64) - b64) / (np.linalg.norm(b64) + 1e-30))


def _openvino(graph: Path, folder: Path, carried: list[str]) -> Callable[[dict], np.ndarray]:
    """The input gradient of ``graph`` compiled by OpenVINO at f32."""
    import openvino as ov

    from gradtap.runtime import contract as c

    core = ov.Core()
    compiled = core.compile_model(str(graph), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return lambda feeds: np.array(compiled(feeds)[c.GRAD_INPUT])


def _tract(graph: Path, folder: Path, carried: list[str]) -> Callable[[dict], np.ndarray]:
    """The input gradient of the flat variant of ``graph``'s forward graph, run by tract."""
    import onnx
    import tract

    from gradtap.export.graph.augment import augment, load_model, save_model
    from gradtap.runtime import contract as c

    forward, flat = graph.with_suffix(".forward.onnx"), folder / "flat.onnx"
    composite = {"lrp_composite": "epsilon_plus"} if "lrp_epsilon_plus" in carried else {}
    save_model(augment(load_model(forward), flat=True, **composite), flat)
    model = onnx.load(str(flat), load_external_data=False)
    inputs = [i.name for i in model.graph.input]
    at = [o.name for o in model.graph.output].index(c.GRAD_INPUT)
    runnable = tract.onnx().load(str(flat)).into_model().into_runnable()
    return lambda feeds: runnable.run([feeds[i] for i in inputs])[at].to_numpy()


RUNTIMES = {"openvino": _openvino, "tract": _tract}


def _row(source: str, name: str, size: int, folder: Path, runtime: str) -> str:
    import onnxruntime as ort
    import torch

    from bench.zoo import build, export
    from gradtap.export.graph.augment import augment, load_model, save_model
    from gradtap.runtime import contract as c

    model, _ = build(source, name)
    graph = folder / f"{name}.gradtap.onnx"
    forward = graph.with_suffix(".forward.onnx")
    export(model, torch.rand(1, 3, size, size), forward, "torchscript")
    save_model(augment(load_model(forward), lrp=True), graph)
    ref = ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    carried = _relu_rules(ref)
    compiled = RUNTIMES[runtime](graph, folder, carried)
    rules = [r for r in RULES if r in carried]
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, size, size), dtype=np.float32)
    nudged = x + rng.normal(0, NOISE, x.shape).astype(np.float32)
    classes = ref.get_outputs()[0].shape[1]
    cells = []
    for rule in rules:
        feeds = {
            c.INPUT: x, c.SEED: np.zeros((2, classes), np.float32),
            c.RELU_RULE: np.array(RULES[rule], np.int64), c.SEED_TOP1: np.array(1, np.float32),
            c.OBJECTIVE: np.array(0, np.int64), c.COMPUTE: np.array(2, np.int64),
        }  # fmt: skip
        want = ref.run([c.GRAD_INPUT], feeds)[0]
        jump = _relative(ref.run([c.GRAD_INPUT], {**feeds, c.INPUT: nudged})[0], want)
        bound = max(TOLERANCE, 3 * jump)
        first = _relative(compiled(feeds), want)
        error = _relative(compiled(feeds), want)
        verdict = "ok" if error < bound else "DIFFERS"
        late = f", first call off {first:.0e}" if error < bound and not first < bound else ""
        cells.append(f"{rule} {verdict} {error:.1e} (jump {jump:.1e}{late})")
    return " | ".join(cells) + ("" if "lrp_epsilon_plus" in rules else " | no LRP walk")


def _relu_rules(session: object) -> list[str]:
    from gradtap.runtime import contract as c

    meta = session.get_modelmeta().custom_metadata_map  # type: ignore[attr-defined]
    return list(json.loads(meta.get(c.META_RELU_RULES, "{}")))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=DEFAULT_MODELS, help="source:name, comma-separated")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--runtime", choices=sorted(RUNTIMES), default="openvino")
    args = p.parse_args(argv)
    side = "OpenVINO (f32)" if args.runtime == "openvino" else "tract (the flat variant)"
    print(f"{side} against onnxruntime, {args.size} px, 2 inputs, random weights")
    print("model | results | seconds")
    failed = 0
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    for item in args.models.split(","):
        source, _, rest = item.partition(":")
        name, _, size = rest.partition("@")
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                row = _row(source, name, int(size or args.size), Path(tmp), args.runtime)
            except Exception as err:  # one model's failure is its row; the sweep goes on
                row = f"error: {type(err).__name__}: {str(err).splitlines()[0][:160]}"
        failed += "DIFFERS" in row or row.startswith("error")
        print(f"{name} | {row} | {time.perf_counter() - start:.0f}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
