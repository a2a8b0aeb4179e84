"""The measurements behind ``bench.experiments``, each run in a fresh process (``--child``)."""

from __future__ import annotations

import gc
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from bench import config as cfg
from bench.rewrites import ce_seed_graph, transposed_as_conv
from gradtap.runtime import ExplainSession, fgsm, gradcam, onehot, saliency
from gradtap.runtime import contract as c
from gradtap.runtime.prune import prune

OPTIONS: dict[str, dict[str, str]] = {
    "default": {},
    "session.disable_prepacking=1": {"session.disable_prepacking": "1"},
    "session.set_denormal_as_zero=1": {"session.set_denormal_as_zero": "1"},
    "session.intra_op.allow_spinning=0": {"session.intra_op.allow_spinning": "0"},
    "graph_optimization_level=EXTENDED": {"level": "EXTENDED"},
}


def memory_mib() -> dict[str, float]:
    """Current and peak RSS, and PSS (shared pages split between their mappings), in MiB."""
    found: dict[str, float] = {}
    for path, keys in (
        ("/proc/self/status", ("VmRSS", "VmHWM")),
        ("/proc/self/smaps_rollup", ("Pss",)),
    ):
        with open(path, encoding="utf-8") as f:
            for line in f:
                key = line.split(":")[0]
                if key in keys:
                    found[key] = int(line.split()[1]) / 1024
    return found


def median_s(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _ort_options(threads: int, entries: dict[str, str]) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.log_severity_level = 3
    for key, value in entries.items():
        if key == "level":
            opts.graph_optimization_level = getattr(
                ort.GraphOptimizationLevel, f"ORT_ENABLE_{value}"
            )
        else:
            opts.add_session_config_entry(key, value)
    return opts


def child_options(path: str, threads: int, name: str, repeats: int) -> dict[str, Any]:
    """Load the full graph with one option set; RSS after load and full-pass medians."""
    session = ort.InferenceSession(path, _ort_options(threads, OPTIONS[name]))
    loaded = memory_mib()
    classes = session.get_outputs()[0].shape[1]
    found: dict[str, Any] = {"rss_after_load": loaded["VmRSS"]}
    for batch in (1, 8):
        x = cfg.inputs(batch, tuple(session.get_inputs()[0].shape[2:]))
        feeds = {c.INPUT: x, c.SEED: onehot([cfg.target_class(classes)] * batch, classes)}
        found[f"b{batch}"] = median_s(lambda f=feeds: session.run([c.GRAD_INPUT], f), repeats)
    found["peak"] = memory_mib()["VmHWM"]
    return found


def child_memory(path: str, threads: int) -> dict[str, Any]:
    """RSS of an ExplainSession after each graph variant it builds, and without its proto."""
    session = ExplainSession(path, threads=threads)
    x = cfg.inputs(1, session.info.input_size)
    t = cfg.target_class(session.info.num_classes)
    steps: list[tuple[str, Callable[[], object]]] = [
        ("loaded (full graph)", lambda: None),
        ("+ saliency (full graph)", lambda: saliency(session, x, t)),
        ("+ Grad-CAM (taps variant)", lambda: gradcam(session, x, t)),
        ("+ logits (forward variant)", lambda: session.logits(x)),
    ]
    found = {}
    for label, fn in steps:
        fn()
        found[label] = memory_mib()["VmRSS"]
    session._proto = None  # noqa: SLF001 - the experiment: what keeping the proto costs
    gc.collect()
    found["proto dropped"] = memory_mib()["VmRSS"]
    found["peak"] = memory_mib()["VmHWM"]
    return found


def child_external(path: str, threads: int) -> dict[str, Any]:
    """Full, taps and forward graphs as small files sharing one external weights file."""
    model = onnx.load(path)
    tap = c.tap_output(json.loads(_meta(model, c.META_TAPS)).popitem()[0])
    outputs = {"taps": [c.LOGITS, tap, c.GRAD_PREFIX + tap], "forward": [c.LOGITS, tap]}
    with tempfile.TemporaryDirectory(prefix="gradtap-ext-") as tmp:
        folder = Path(tmp)
        onnx.save(
            model,
            folder / "full.onnx",
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="weights.bin",
            size_threshold=4096,
        )
        light = onnx.load(str(folder / "full.onnx"), load_external_data=False)
        for name, outs in outputs.items():
            onnx.save(prune(light, outs), folder / f"{name}.onnx")
        del model, light
        gc.collect()
        base = memory_mib()["VmRSS"]
        found: dict[str, Any] = {"before sessions": base}
        opts = _ort_options(threads, {"session.disable_prepacking": "1"})
        for name in ("full", "taps", "forward"):
            session = ort.InferenceSession(str(folder / f"{name}.onnx"), opts)
            x = cfg.inputs(1, tuple(session.get_inputs()[0].shape[2:]))
            feeds = {i.name: x for i in session.get_inputs() if i.name == c.INPUT}
            if any(i.name == c.SEED for i in session.get_inputs()):
                feeds[c.SEED] = np.zeros((1, session.get_outputs()[0].shape[1]), np.float32)
            found[f"{name}: run time"] = median_s(lambda s=session, f=feeds: s.run(None, f), 3)
            found[f"+ {name}"] = memory_mib()
            globals().setdefault("_keep", []).append(session)
    return found


def child_fgsm(path: str, threads: int, repeats: int) -> dict[str, Any]:
    """gradtap.fgsm (forward, forward+backward, forward) vs one fused call with the CE seed."""
    plain = ExplainSession(path, threads=threads)
    fused = ExplainSession(ce_seed_graph(onnx.load(path)), threads=threads)
    found: dict[str, Any] = {}
    for batch in (1, 8):
        x = cfg.inputs(batch, plain.info.input_size)
        t = cfg.target_class(plain.info.num_classes)
        label = onehot([t] * batch, plain.info.num_classes)

        def one_call(x: np.ndarray = x, label: np.ndarray = label) -> object:
            run = fused.run(x, label)
            adv = np.clip(x + np.float32(cfg.FGSM_EPS) * np.sign(run.grad_input), 0, 1)
            return fused.logits(adv.astype(np.float32))

        found[f"b{batch} gradtap.fgsm"] = median_s(
            lambda x=x, t=t: fgsm(plain, x, cfg.FGSM_EPS, label=t), repeats
        )
        found[f"b{batch} fused CE seed"] = median_s(one_call, repeats)
    return found


def child_convtranspose(path: str, threads: int, repeats: int) -> dict[str, Any]:
    """The full pass as exported vs with the stride-1 ConvTranspose nodes run as Conv."""
    model = onnx.load(path)
    rewritten, count = transposed_as_conv(model)
    found: dict[str, Any] = {"rewritten nodes": count}
    sessions = {
        "as exported": ort.InferenceSession(model.SerializeToString(), _ort_options(threads, {})),
        "ConvTranspose as Conv": ort.InferenceSession(
            rewritten.SerializeToString(), _ort_options(threads, {})
        ),
    }
    classes = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    for batch in (1, 8):
        x = cfg.inputs(
            batch, tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[2:])
        )
        feeds = {c.INPUT: x, c.SEED: onehot([cfg.target_class(classes)] * batch, classes)}
        grads = {}
        for label, s in sessions.items():
            found[f"b{batch} {label}"] = median_s(
                lambda s=s, f=feeds: s.run([c.GRAD_INPUT], f), repeats
            )
            grads[label] = s.run([c.GRAD_INPUT], feeds)[0]
        a, b = grads.values()
        found[f"b{batch} max relative difference"] = f"{np.abs(a - b).max() / np.abs(a).max():.1e}"
    return found


def child_threadpools(path: str, threads: int, mode: str, repeats: int) -> dict[str, Any]:
    """Methods that alternate graph variants, with per-session, non-spinning or global pools."""
    from bench.fastpath import use_pools
    from bench.gradtap_side import GradtapSide

    use_pools(mode, threads)
    side = GradtapSide(path, threads=threads)
    found: dict[str, Any] = {}
    for batch in (1, 8):
        x = cfg.inputs(batch, side.input_size)
        cases = side.cases(x, cfg.target_class(side.num_classes))
        for method in ("saliency", "gradcam", "guided_gradcam", "fgsm", "class_vis_step"):
            found[f"b{batch} {method}"] = median_s(cases[method], repeats)
    return found


def _meta(model: onnx.ModelProto, key: str) -> str:
    return next(p.value for p in model.metadata_props if p.key == key)
