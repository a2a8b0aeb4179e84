"""Export a classifier to a plain forward ONNX graph that follows gradtap's contract.

The graph takes ``input``: RGB float32 NCHW pixels in [0, 1] (batch dynamic, spatial size fixed)
and returns ``logits``; normalisation happens inside. The default tap's feature map is a named
tensor in the graph (recorded in the metadata), not an output: the augmentation pass exposes it.

Exporter choice: torch 2.14's TorchScript-based exporter (``dynamo=False``) writes opset 17
directly, folds BatchNorm into the convolutions and emits only Conv/Relu/Clip/MaxPool/Add/
GlobalAveragePool/Flatten/Gemm-style ops. The torch.export-based exporter starts at opset 18 and
fails to convert down to 17, so it is not used.
"""

from __future__ import annotations

import io
import json
import logging
import os
import secrets
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator
from torch import nn

from gradtap.export.models.catalog import MODEL_NAMES, default_cache_dir
from gradtap.export.models.weights import RANDOM, weights_tag
from gradtap.export.models.zoo import (
    ModelSpec,
    UnknownModelError,
    build,
    canonical_weights,
    pixel_space,
    tap_module,
)
from gradtap.runtime import contract as c
from gradtap.runtime.errors import GradtapError, OptionError

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
SUPPORTED_OPSETS = range(13, 21)
BATCH = "batch"
_EXPORT_BATCH = 2  # trace with a batch other than 1 so nothing specialises to a single image


class ExportError(GradtapError):
    """The exporter produced a graph that breaks gradtap's contract."""


class _WithTap(nn.Module):
    """Pixel-space model returning ``(logits, default tap feature map)`` for tracing."""

    def __init__(self, model: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        self.net = pixel_space(model, spec)
        self.spec = spec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen: list[torch.Tensor] = []
        tap = tap_module(self.net.model, self.spec)
        handle = tap.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            logits = self.net(x)
        finally:
            handle.remove()
        if len(seen) != 1:
            raise ExportError(
                f"tap module {self.spec.tap_module!r} of {self.spec.name} ran {len(seen)} times "
                "in one forward pass; a tap must run exactly once"
            )
        return logits, seen[0]


def export_module(
    model: nn.Module, spec: ModelSpec, path: str | Path, *, opset: int = DEFAULT_OPSET
) -> Path:
    """Export a built model (see ``models.build``) to a forward graph with gradtap metadata.

    Args:
        model: the torch classifier in eval mode, taking normalised input.
        spec: its spec; mean/std are folded into the graph, labels etc. go to the metadata.
        path: where to write the ``.onnx`` file (written atomically).
        opset: ai.onnx opset version (the augmentation pass is built for 17).

    Returns:
        ``path`` as a Path.
    """
    if opset not in SUPPORTED_OPSETS:
        raise OptionError(
            f"opset {opset} is not supported; choose {SUPPORTED_OPSETS.start}.."
            f"{SUPPORTED_OPSETS.stop - 1} (gradtap's augmentation pass uses {DEFAULT_OPSET})"
        )
    proto = _trace(model.eval(), spec, opset)
    tap_tensor = spec.tap_module
    _drop_output(proto, tap_tensor)
    _inline_initializer_identities(proto)
    _fold_constants(proto, opset)
    _write_metadata(proto, spec, {spec.tap_alias: tap_tensor})
    proto = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    onnx.checker.check_model(proto)
    return _save_atomic(proto, Path(path))


def export_forward(
    name: str,
    path: str | Path,
    *,
    weights: str | Path = RANDOM,
    opset: int = DEFAULT_OPSET,
    labels: Sequence[str] | None = None,
) -> Path:
    """Build model ``name`` and write its forward graph to ``path``.

    Args:
        name: one of MODEL_NAMES.
        path: output ``.onnx`` file.
        weights: see ``models.build`` ("random", a local file, or a weights name).
        opset: ai.onnx opset version.
        labels: class names overriding the model's own.

    Returns:
        ``path`` as a Path.
    """
    model, spec = build(name, weights, labels=labels)
    out = export_module(model, spec, path, opset=opset)
    log.info("exported %s (%s) to %s", name, spec.weights, out)
    return out


def export_augmented(
    name: str,
    path: str | Path,
    *,
    weights: str | Path = RANDOM,
    labels: Sequence[str] | None = None,
) -> Path:
    """Build model ``name`` and write its explanation graph (forward + taps + backward) to ``path``.

    Runs ``export_forward`` into a temporary folder, then the augmentation pass with the
    forward graph's default tap.

    Args:
        name: one of MODEL_NAMES.
        path: output file, conventionally ``<name>.gradtap.onnx``.
        weights: see ``models.build``.
        labels: class names overriding the model's own.

    Returns:
        ``path`` as a Path.
    """
    with tempfile.TemporaryDirectory(prefix="gradtap-export-") as tmp:
        forward = Path(tmp) / f"{name}.forward.onnx"
        export_forward(name, forward, weights=weights, labels=labels)
        _augment_file(forward, Path(path))
    log.info("wrote explanation graph of %s to %s", name, path)
    return Path(path)


def cache_file(
    name: str,
    weights: str | Path = RANDOM,
    *,
    cache_dir: str | Path | None = None,
    augmented: bool = False,
) -> Path:
    """Where ``model_path`` keeps a model: ``<cache>/<name>-<tag>.{forward,gradtap}.onnx``."""
    if name not in MODEL_NAMES:
        raise UnknownModelError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    kind = "gradtap" if augmented else "forward"
    return folder / f"{name}-{weights_tag(canonical_weights(name, weights))}.{kind}.onnx"


def model_path(
    name: str,
    weights: str | Path = RANDOM,
    *,
    cache_dir: str | Path | None = None,
    augmented: bool = False,
) -> Path:
    """The cached forward (or augmented) graph of a model, exported first if missing or stale.

    Args:
        name: one of MODEL_NAMES.
        weights: see ``models.build``.
        cache_dir: folder of the cache; default ``default_cache_dir()``.
        augmented: the explanation graph (``.gradtap.onnx``) instead of the forward graph.

    Returns:
        Path of an existing file.
    """
    path = cache_file(name, weights, cache_dir=cache_dir, augmented=augmented)
    if _is_current(path, name, augmented):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if augmented:
        forward = model_path(name, weights, cache_dir=path.parent)
        _augment_file(forward, path)
    else:
        export_forward(name, path, weights=weights)
    return path


def _pass_version() -> str:
    from gradtap.export.graph.version import PASS_VERSION

    return PASS_VERSION


def _augment_file(src: Path, dst: Path) -> None:
    from gradtap.export.graph.augment import augment_file

    augment_file(src, dst)


def _is_current(path: Path, name: str, augmented: bool) -> bool:
    if not path.is_file():
        return False
    try:
        meta = read_metadata(path)
    except Exception as exc:  # an unreadable cache file is rebuilt, not trusted
        log.warning("rebuilding unreadable cache file %s (%s)", path, exc)
        return False
    current = (
        meta.get(c.META_CONTRACT) == c.CONTRACT_VERSION
        and meta.get(c.META_NAME) == name
        and (meta.get(c.META_AUGMENTED) == "1") == augmented
        and (not augmented or meta.get(c.META_PASS_VERSION) == _pass_version())
    )
    if not current:
        log.info("cache file %s is stale; rebuilding", path)
    return current


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict."""
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def _trace(model: nn.Module, spec: ModelSpec, opset: int) -> onnx.ModelProto:
    wrapper = _WithTap(model, spec).eval()
    dummy = torch.rand(
        _EXPORT_BATCH, 3, *spec.input_size, generator=torch.Generator().manual_seed(0)
    )
    outputs = [c.LOGITS, spec.tap_module]
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            wrapper,
            (dummy,),
            buffer,
            input_names=[c.INPUT],
            output_names=outputs,
            dynamic_axes={n: {0: BATCH} for n in (c.INPUT, *outputs)},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def _drop_output(proto: onnx.ModelProto, tensor: str) -> None:
    """Remove ``tensor`` from the graph outputs, keeping it (and its type) inside the graph."""
    graph = proto.graph
    keep = [o for o in graph.output if o.name != tensor]
    dropped = [o for o in graph.output if o.name == tensor]
    if len(dropped) != 1 or not any(tensor in n.output for n in graph.node):
        raise ExportError(f"exported graph has no node output named {tensor!r} for the tap")
    del graph.output[:]
    graph.output.extend(keep)
    graph.value_info.extend(dropped)


def _inline_initializer_identities(proto: onnx.ModelProto) -> None:
    """Drop the ``Identity(initializer)`` nodes the exporter adds for de-duplicated weights."""
    graph = proto.graph
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias: dict[str, str] = {}
    kept = []
    for node in graph.node:
        src = alias.get(node.input[0], node.input[0]) if node.input else ""
        if node.op_type == "Identity" and src in inits and node.output[0] not in outputs:
            alias[node.output[0]] = src
        else:
            kept.append(node)
    for node in kept:
        node.input[:] = [alias.get(name, name) for name in node.input]
    del graph.node[:]
    graph.node.extend(kept)
    info = [v for v in graph.value_info if v.name not in alias]
    del graph.value_info[:]
    graph.value_info.extend(info)


def _fold_constants(proto: onnx.ModelProto, opset: int) -> None:
    """Replace every Constant node, and every node computed from constants only, by initializers.

    The exporter leaves small shape computations (e.g. the pads of ``F.pad``) unfolded; after this
    pass every such value is an initializer and the graph holds no Constant nodes.
    """
    graph = proto.graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    kept, folded = [], []
    for node in graph.node:
        constant_inputs = all(not n or n in values for n in node.input)
        if node.op_type != "Constant" and not (node.input and constant_inputs):
            kept.append(node)
            continue
        feeds = {n: values[n] for n in node.input if n}
        results = ReferenceEvaluator(node, opsets={"": opset}).run(None, feeds)
        for name, value in zip(node.output, results, strict=True):
            values[name] = np.asarray(value)
            folded.append(numpy_helper.from_array(values[name], name))
    used = {n for node in kept for n in node.input} | {o.name for o in graph.output}
    inits = [i for i in (*graph.initializer, *folded) if i.name in used]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(inits)


def metadata_for(spec: ModelSpec, taps: dict[str, str]) -> dict[str, str]:
    """Every contract metadata entry of a forward graph (all but ``META_AUGMENTED``)."""
    return {
        c.META_CONTRACT: c.CONTRACT_VERSION,
        c.META_NAME: spec.name,
        c.META_SOURCE: spec.source,
        c.META_WEIGHTS: spec.weights,
        c.META_LABELS: json.dumps(list(spec.labels)),
        c.META_INPUT_SIZE: json.dumps(list(spec.input_size)),
        c.META_RESIZE: json.dumps({"policy": spec.resize_policy, "size": spec.resize_size}),
        c.META_NORMALIZATION: json.dumps(
            {"mean": list(spec.mean), "std": list(spec.std), "in_graph": True}
        ),
        c.META_COLOR_ORDER: "RGB",
        c.META_VALUE_RANGE: json.dumps([0, 1]),
        c.META_DEFAULT_TAP: spec.tap_alias,
        c.META_TAPS: json.dumps(taps),
        c.META_RELU_RULES: json.dumps(c.RELU_RULES),
    }


def _write_metadata(proto: onnx.ModelProto, spec: ModelSpec, taps: dict[str, str]) -> None:
    onnx.helper.set_model_props(proto, metadata_for(spec, taps))
    proto.producer_name = "gradtap"
    proto.graph.name = spec.name
    proto.doc_string = f"{spec.name} forward graph: input RGB [N,3,H,W] in [0,1] -> logits"


def _save_atomic(proto: onnx.ModelProto, path: Path) -> Path:
    """Write through a temporary file in the same folder, so no half-written file remains."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
