"""The measurements behind the runtime recommendations in docs/benchmarks.md.

``python -m bench.experiments [--model resnet50] [--threads 2]`` prints markdown. Every
measurement runs in a fresh process (``--child``) so its memory numbers are its own.

- options: onnxruntime session settings against the fused forward+backward pass.
- memory: resident memory of an ExplainSession as its graph variants are built.
- external: the three variants sharing one memory-mapped weights file (external data).
- fgsm: FGSM with the cross-entropy seed computed inside the graph (one call instead of two).
- convtranspose: the backward pass's stride-1 ConvTranspose nodes rewritten as Conv.
"""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np
import onnx
import onnxruntime as ort

from bench import config as cfg
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


def ce_seed_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose ``seed`` input is a one-hot label: the backward pass starts from
    softmax(logits) - seed, the gradient of the cross-entropy, so FGSM needs one call."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = list(out.graph.node)
    for node in nodes:
        for i, name in enumerate(node.input):
            if name == c.SEED:
                node.input[i] = "ce/seed"
    at = next(i for i, n in enumerate(nodes) if c.LOGITS in n.output) + 1
    extra = [
        onnx.helper.make_node("Softmax", [c.LOGITS], ["ce/prob"], axis=-1),
        onnx.helper.make_node("Sub", ["ce/prob", c.SEED], ["ce/seed"]),
    ]
    del out.graph.node[:]
    out.graph.node.extend(nodes[:at] + extra + nodes[at:])
    return out


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


def _ints(node: onnx.NodeProto, name: str, default: list[int]) -> list[int]:
    found = [a for a in node.attribute if a.name == name]
    return list(onnx.helper.get_attribute_value(found[0])) if found else default


def transposed_as_conv(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy where every stride-1, undilated ConvTranspose with a constant weight is a Conv.

    ConvTranspose(g, W, pads p) with stride 1 equals Conv(g, W', pads k - 1 - p), W' being W
    with input and output channels swapped (per group) and the kernel flipped. onnxruntime
    runs Conv in its blocked (NCHWc) layout and ConvTranspose not. Returns (model, rewritten).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    weights = {t.name: t for t in out.graph.initializer}
    done = 0
    for node in out.graph.node:
        if node.op_type != "ConvTranspose" or node.input[1] not in weights:
            continue
        kernel = list(weights[node.input[1]].dims[2:])
        strides = _ints(node, "strides", [1] * len(kernel))
        dilations = _ints(node, "dilations", [1] * len(kernel))
        if any(v != 1 for v in strides + dilations) or any(_ints(node, "output_padding", [])):
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        w = onnx.numpy_helper.to_array(weights[node.input[1]])
        cin, cout_g = w.shape[:2]
        flipped = w.reshape(group, cin // group, cout_g, *kernel).swapaxes(1, 2)
        flipped = flipped.reshape(group * cout_g, cin // group, *kernel)[..., ::-1, ::-1]
        name = f"{node.input[1]}/as_conv/{done}"
        out.graph.initializer.append(onnx.numpy_helper.from_array(flipped.copy(), name))
        pads = _ints(node, "pads", [0] * 2 * len(kernel))
        k2 = kernel + kernel
        new = onnx.helper.make_node(
            "Conv",
            [node.input[0], name, *node.input[2:]],
            list(node.output),
            name=node.name,
            kernel_shape=kernel,
            pads=[k - 1 - p for k, p in zip(k2, pads, strict=True)],
            group=group,
        )
        node.CopyFrom(new)
        done += 1
    return out, done


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


def _meta(model: onnx.ModelProto, key: str) -> str:
    return next(p.value for p in model.metadata_props if p.key == key)


CHILDREN: dict[str, Callable[..., dict[str, Any]]] = {
    "options": child_options,
    "memory": child_memory,
    "external": child_external,
    "fgsm": child_fgsm,
    "convtranspose": child_convtranspose,
}


def spawn(name: str, *args: object) -> dict[str, Any]:
    """Run one child measurement in a fresh process and return its JSON answer."""
    cmd = [sys.executable, "-m", "bench.experiments", "--child", name, *map(str, args)]
    done = subprocess.run(
        cmd, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _fmt(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {v:.0f} MiB" for k, v in value.items())
    if isinstance(value, float):
        return f"{value * 1000:.1f} ms" if value < 30 else f"{value:.0f} MiB"
    return str(value)


def report(path: str, threads: int, repeats: int, only: list[str]) -> list[str]:
    """Markdown sections, one per experiment."""
    lines = [f"# Runtime experiments: {Path(path).name}, {threads} threads", ""]
    if "options" in only:
        lines += [
            "## Session options (full forward+backward pass)",
            "",
            "| option | RSS after load | batch 1 | batch 8 | peak RSS |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name in OPTIONS:
            r = spawn("options", path, threads, name, repeats)
            cells = [
                _fmt(r.get(k, r.get("error", "–"))) for k in ("rss_after_load", "b1", "b8", "peak")
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    for name, title in (
        ("memory", "ExplainSession memory as variants are built"),
        ("external", "Variants sharing one external weights file (mmap)"),
        ("fgsm", "FGSM: CE seed inside the graph"),
    ):
        if name in only:
            args = (
                (path, threads, repeats) if name in ("fgsm", "convtranspose") else (path, threads)
            )
            result = spawn(name, *args)
            lines += [f"## {title}", "", *(f"- {k}: {_fmt(v)}" for k, v in result.items()), ""]
    return lines


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--model", default="resnet50", help="A model name of bench.config, or a file.")
@click.option("--threads", default=2, type=click.IntRange(min=1))
@click.option("--repeats", default=5, type=click.IntRange(min=1))
@click.option(
    "--only", default="options,memory,external,fgsm,convtranspose", help="Experiments to run."
)
@click.option("--child", hidden=True)
@click.argument("args", nargs=-1)
def main(
    model: str, threads: int, repeats: int, only: str, child: str | None, args: tuple[str, ...]
) -> None:
    """Measure the runtime fast-path candidates; print markdown."""
    if child:
        conv = [int(a) if a.isdigit() else a for a in args]
        click.echo(json.dumps(CHILDREN[child](*conv)))
        return
    path = model
    if not Path(model).is_file():
        from bench.orchestrate import prepare

        with tempfile.TemporaryDirectory() as tmp:
            path = prepare(model, Path(tmp), coldstart_files=False)["graph"]
    click.echo("\n".join(report(path, threads, repeats, [o.strip() for o in only.split(",")])))


if __name__ == "__main__":
    main()
