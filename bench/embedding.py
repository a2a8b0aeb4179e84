"""``python bench/embedding.py [--repeat N] [--model PATH]``: time per call in every embedding.

One Grad-CAM call (``compute = 1``, down to the tap) and one guided-backprop call (``compute =
2``) on the same photo, in onnxruntime-Python (the reference), the C++ example, the Node
example, the browser page (headless Chromium, wasm, one thread), OpenVINO (f32) and tract (the
flat variant, which always runs the whole backward pass). Also onnxruntime with every graph
optimisation off (``ORT_DISABLE_ALL``): a runtime without constant folding recomputes the
re-laid-out convolution weights at every call; the "folded" row has them precomputed.

Needs ``make setup`` and ``make examples``; prints a table of milliseconds and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"gradcam": (0, 1), "guided": (1, 2)}  # relu_rule, compute


def _feeds(x: np.ndarray, rule: int, compute: int | None) -> dict[str, np.ndarray]:
    f = {"input": x, "seed": np.zeros((1, 6), np.float32), "relu_rule": np.array(rule, np.int64),
         "seed_top1": np.array(1.0, np.float32), "objective": np.array(0, np.int64)}  # fmt: skip
    if compute is not None:
        f["compute"] = np.array(compute, np.int64)
    return f


def _per_call(call: Callable[[], object], repeat: int) -> float:
    call()  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        call()
    return (time.perf_counter() - start) * 1000 / repeat


def _onnxruntime(model: Path, x: np.ndarray, repeat: int, level: str = "ORT_ENABLE_ALL") -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    s = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    names = {"gradcam": ["logits", "tap/features", "grad/tap/features"], "guided": ["grad/input"]}
    return {
        k: _per_call(lambda k=k, r=r, cp=cp: s.run(names[k], _feeds(x, r, cp)), repeat)
        for k, (r, cp) in SETTINGS.items()
    }


def _folded(model: Path, folder: Path) -> Path:
    """The graph with every node computed from initializers alone (the backward convolutions'
    re-laid-out weights, inside the branches too) replaced by its precomputed result."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    m = onnx.load(str(model))
    known = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}

    def fold(graph: onnx.GraphProto) -> None:
        keep = []
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    fold(attr.g)
            if node.op_type != "If" and node.input and all(i in known for i in node.input if i):
                inputs = [numpy_helper.from_array(known[i], i) for i in node.input if i]
                outputs = [helper.make_empty_tensor_value_info(o) for o in node.output]
                sub = helper.make_model(
                    helper.make_graph([node], "fold", [], outputs, inputs),
                    opset_imports=m.opset_import,
                )
                for name, value in zip(
                    node.output, ReferenceEvaluator(sub).run(None, {}), strict=True
                ):
                    known[name] = value
                    graph.initializer.append(numpy_helper.from_array(value, name))
            else:
                keep.append(node)
        del graph.node[:]
        graph.node.extend(keep)

    def used(graph: onnx.GraphProto) -> set[str]:
        names = {o.name for o in graph.output}
        for node in graph.node:
            names.update(node.input)
            for attr in node.attribute:
                if attr.HasField("g"):
                    names |= used(attr.g)
        return names

    def prune(graph: onnx.GraphProto, needed: set[str]) -> None:
        inits = [t for t in graph.initializer if t.name in needed]
        del graph.initializer[:]
        graph.initializer.extend(inits)
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    prune(attr.g, needed)

    fold(m.graph)
    prune(m.graph, used(m.graph))
    out = folder / "folded.onnx"
    onnx.save(m, str(out))
    return out


def _program(args: list[str], repeat: int) -> dict:
    env = {**os.environ, "GRADTAP_REPEAT": str(repeat)}
    out = subprocess.run(
        args, capture_output=True, text=True, env=env, check=True, timeout=600
    ).stdout
    return {k.removesuffix("_ms"): float(v) for k, v in (ln.split() for ln in out.splitlines()[1:])}


def _browser(model: Path, photo: Path, repeat: int, folder: Path) -> dict:
    from tests.examples.test_web import CHROMIUM, SERVE, _stop

    result = folder / "result.json"
    server = subprocess.Popen(
        ["node", str(SERVE), str(model), "--port", "0", "--files", str(photo.parent), "--result", str(result)],
        stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    url = server.stdout.readline().strip()  # type: ignore[union-attr]
    browser = subprocess.Popen(
        [*CHROMIUM, f"--user-data-dir={folder / 'p'}", f"{url}?image=/files/{photo.name}&report=/result&repeat={repeat}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        server.wait(600)
    finally:
        _stop(browser)
        _stop(server)
    return json.loads(result.read_text())["timings"]


def _openvino(model: Path, x: np.ndarray, repeat: int) -> dict:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(model), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return {
        k: _per_call(lambda r=r, cp=cp: compiled(_feeds(x, r, cp)), repeat)
        for k, (r, cp) in SETTINGS.items()
    }


def _tract(flat: Path, x: np.ndarray, repeat: int) -> dict:
    import tract

    runnable = tract.onnx().load(str(flat)).into_model().into_runnable()
    order = ["input", "seed", "relu_rule", "seed_top1", "objective"]
    return {
        k: _per_call(lambda r=r: runnable.run([_feeds(x, r, None)[n] for n in order]), repeat)
        for k, (r, _) in SETTINGS.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "smallcnn.gradtap.onnx")
    args = parser.parse_args()

    from gradtap.runtime.image.geometry import to_input
    from gradtap.runtime.session import ExplainSession
    from tests.examples.common import flat_variant, photos

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        photo = photos(folder)["coffee"]
        x, _ = to_input(photo, ExplainSession(args.model).info)
        flat = flat_variant(folder)
        rows = {
            "onnxruntime-Python": _onnxruntime(args.model, x, args.repeat),
            "onnxruntime-Python ORT_DISABLE_ALL": _onnxruntime(args.model, x, args.repeat, "ORT_DISABLE_ALL"),
            "  same, weights folded": _onnxruntime(_folded(args.model, folder), x, args.repeat, "ORT_DISABLE_ALL"),
            "C++ (examples/cpp)": _program([str(ROOT / "build/cpp/explain"), str(args.model), str(photo), str(folder / "c")], args.repeat),
            "Node (onnxruntime-node)": _program(["node", str(ROOT / "examples/node/explain.mjs"), str(args.model), str(photo), str(folder / "n")], args.repeat),
            "browser (onnxruntime-web, wasm)": _browser(args.model, photo, args.repeat, folder),
            "OpenVINO (f32)": _openvino(args.model, x, args.repeat),
            "tract (flat variant)": _tract(flat, x, args.repeat),
        }  # fmt: skip
    base = rows["onnxruntime-Python"]
    print(f"{'runtime':36s} {'Grad-CAM ms':>12s} {'ratio':>6s} {'guided ms':>10s} {'ratio':>6s}")
    for name, t in rows.items():
        g, b = t["gradcam"], t["guided"]
        print(
            f"{name:36s} {g:12.2f} {g / base['gradcam']:6.2f} {b:10.2f} {b / base['guided']:6.2f}"
        )


if __name__ == "__main__":
    main()
