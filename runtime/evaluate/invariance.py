"""Input invariance (Kindermans et al. 2019, https://arxiv.org/abs/1711.00867), onnx + numpy only.

Two networks that compute the same function of the image content should get the same map. The
*input-shifted twin* of an explanation graph expects pixels ``x + c`` (a constant shift ``c``
per channel) and returns exactly the logits the original returns for ``x``: the shift is
absorbed by the bias of the first affine layer, by rewriting one initializer and nothing else:

- a graph that normalises in-graph, ``Sub(input, mean)`` (then ``Div``/``Mul`` by a constant):
  the normalisation is the first affine layer and its bias is ``-mean``, so ``mean += c``. This
  is exact everywhere, padding included, and keeps every later tensor identical;
- a graph whose first layer reads the input directly: ``Add(input, beta)`` gets ``beta -= c``,
  an unpadded ``Conv`` (or ``Gemm``) gets ``bias -= sum(W * c)`` per output channel. A padded
  ``Conv`` cannot absorb a shift exactly (its zero padding is not shifted) and is refused.

The backward pass of an augmented graph reads the same initializers and its forward tensors, so
the twin's gradients are those of the twin's forward pass. :func:`input_invariance` explains
``x`` with the original and ``x + c`` with the twin and reports per method how far the maps
differ. The expected answers (Kindermans et al.): gradient, guided backprop, deconvnet and the
CAM family are invariant; gradient x input, Integrated Gradients from a black (zero) baseline
and occlusion with a black patch are not (their reference point, 0, moved).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from gradtap.runtime import contract
from gradtap.runtime.errors import ModelError, OptionError
from gradtap.runtime.evaluate import metrics
from gradtap.runtime.methods.cam import gradcam_map
from gradtap.runtime.methods.gradient import saliency_map
from gradtap.runtime.methods.sampling import quadrature
from gradtap.runtime.session import ExplainSession

if TYPE_CHECKING:  # onnx costs seconds to import: loaded when a twin is built
    import onnx


Array = npt.NDArray[np.float32]
GRADIENT_X_INPUT = "gradient_x_input"
TWIN_METHODS: tuple[str, ...] = (
    "saliency",
    "guided_backprop",
    "deconvnet",
    "gradcam",
    GRADIENT_X_INPUT,
    "integrated_gradients",
    "occlusion",
)
EXPECTED_INVARIANT = frozenset({"saliency", "guided_backprop", "deconvnet", "gradcam"})
"""Kindermans et al.'s answer: these maps do not depend on a reference point, so the twin's are
the original's; gradient x input, IG from zero and zero-patch occlusion are not invariant."""
DEFAULT_SHIFT = -0.5
"""Default shift: pixels in [0, 1] become [-0.5, 0.5] (zero-centred input)."""
INVARIANT_BELOW = 1e-3
"""Largest relative change (max |difference| / max |map|) still counted as "unchanged"."""


@dataclass(frozen=True)
class Absorbed:
    """Where the twin absorbed the shift: the node, its op and the rewritten initializer."""

    node: str
    op_type: str
    initializer: str


def _consumers(graph: onnx.GraphProto, name: str) -> list[onnx.NodeProto]:
    """Forward-pass nodes reading ``name`` (backward nodes may read the input's shape)."""
    from gradtap.runtime.evaluate.randomize import _ancestors

    forward = set(_ancestors(graph, contract.LOGITS))
    return [n for i, n in enumerate(graph.node) if i in forward and name in n.input]


def _shift_vector(shift: float | Sequence[float], channels: int) -> npt.NDArray[np.float64]:
    c = np.atleast_1d(np.asarray(shift, dtype=np.float64))
    if c.ndim != 1 or len(c) not in (1, channels) or not np.isfinite(c).all():
        raise OptionError(f"shift must be one finite number or {channels}, got {shift}")
    return np.broadcast_to(c, (channels,)).copy()


def _rewrite(graph: onnx.GraphProto, name: str, new: np.ndarray) -> None:
    for k, t in enumerate(graph.initializer):
        if t.name == name:
            old = _onnx().numpy_helper.to_array(t)
            graph.initializer[k].CopyFrom(
                _onnx().numpy_helper.from_array(new.astype(old.dtype), name)
            )
            return
    raise ModelError(f"initializer {name!r} not found")


def _init(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    t = next((t for t in graph.initializer if t.name == name), None)
    return None if t is None else _onnx().numpy_helper.to_array(t).astype(np.float64)


def _zero_pads(node: onnx.NodeProto) -> bool:
    attrs = {a.name: _onnx().helper.get_attribute_value(a) for a in node.attribute}
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    return auto == "VALID" or (auto == "NOTSET" and not any(attrs.get("pads", [])))


def _absorb(graph: onnx.GraphProto, x: str, c: np.ndarray) -> Absorbed:
    """Rewrite the initializer of ``x``'s single consumer so that it absorbs ``x + c``."""
    users = _consumers(graph, x)
    if len(users) != 1:
        raise ModelError(f"input {x!r} feeds {len(users)} nodes; the twin needs exactly one")
    node = users[0]
    name = node.name or node.op_type
    other = next((i for i in node.input if i != x), None)
    value = None if other is None else _init(graph, other)
    if (
        node.op_type in ("Sub", "Add")
        and other is not None
        and value is not None
        and list(node.input).index(x) == 0
    ):
        col = c.reshape((-1,) + (1,) * max(0, value.ndim - 2)) if value.ndim >= 2 else c
        new = value + col if node.op_type == "Sub" else value - col
        if new.shape != np.broadcast(value, col).shape:
            raise ModelError(f"{node.op_type} {name!r} constant {value.shape} is not per-channel")
        _rewrite(graph, other, np.broadcast_to(new, np.broadcast(value, col).shape))
        return Absorbed(name, node.op_type, other)
    if node.op_type in ("Conv", "Gemm") and list(node.input).index(x) == 0:
        w = _init(graph, node.input[1])
        if w is None:
            raise ModelError(f"{node.op_type} {name!r} has no initializer weight")
        if len(node.input) < 3 or not node.input[2]:  # no bias yet: add a zero one
            bias_name = f"{name}/absorbed_shift"
            graph.initializer.append(
                _onnx().numpy_helper.from_array(np.zeros(w.shape[0], np.float32), bias_name)
            )
            del node.input[2:]
            node.input.append(bias_name)
        bias = _init(graph, node.input[2])
        if bias is None:
            raise ModelError(f"{node.op_type} {name!r} has a computed bias, not an initializer")
        if node.op_type == "Conv" and not _zero_pads(node):
            raise ModelError(
                f"Conv {name!r} reads the input with zero padding, which a bias cannot shift; "
                "only in-graph normalisation, Add or an unpadded first layer absorb a shift"
            )
        attrs = {a.name: _onnx().helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm" and (attrs.get("transA") or attrs.get("transB") != 1):
            raise ModelError(f"Gemm {name!r}: only transA=0, transB=1 (a linear layer) is handled")
        if node.op_type == "Conv":
            spread = (w * c.reshape(1, -1, *([1] * (w.ndim - 2)))).sum(axis=tuple(range(1, w.ndim)))
        else:
            spread = w @ np.resize(c, w.shape[1])
        _rewrite(graph, node.input[2], bias - spread)
        return Absorbed(name, node.op_type, node.input[2])
    raise ModelError(
        f"cannot absorb an input shift: the input feeds {node.op_type} {name!r}; handled: "
        "Sub/Add by a constant (in-graph normalisation), unpadded Conv or Gemm with a bias"
    )


def shifted_twin(
    model: onnx.ModelProto, shift: float | Sequence[float] = DEFAULT_SHIFT
) -> tuple[onnx.ModelProto, Absorbed]:
    """The input-shifted twin of ``model``: ``twin(x + shift)`` gives ``model(x)``'s logits.

    Args:
        model: a plain or augmented ONNX classifier with input ``contract.INPUT`` [N, C, H, W].
        shift: the constant added to every pixel, one value or one per channel.

    Returns:
        The rewritten copy (the input model is left untouched) and where the shift went.
    """
    out = _onnx().ModelProto()
    out.CopyFrom(model)
    inp = next((i for i in out.graph.input if i.name == contract.INPUT), None)
    if inp is None:
        raise ModelError(f"the graph has no input {contract.INPUT!r}")
    dims = inp.type.tensor_type.shape.dim
    channels = dims[1].dim_value if len(dims) > 1 and dims[1].dim_value else 3
    where = _absorb(out.graph, contract.INPUT, _shift_vector(shift, channels))
    return out, where


@dataclass(frozen=True)
class InvarianceRow:
    """One method's maps of the original and the twin: per-image relative change and Spearman ρ."""

    method: str
    change: npt.NDArray[np.float64]
    spearman: npt.NDArray[np.float64]

    @property
    def invariant(self) -> bool:
        """Every image's map unchanged (relative change below ``INVARIANT_BELOW``)."""
        return bool((self.change < INVARIANT_BELOW).all())


@dataclass(frozen=True)
class InvarianceResult:
    """The twin check: the shift, where it went, the logits' largest difference, every method."""

    shift: tuple[float, ...]
    absorbed: Absorbed
    logit_difference: float
    rows: tuple[InvarianceRow, ...]


def relative_change(a: Array, b: Array) -> float:
    """``max |a - b| / max |a|`` (0 for two zero maps, inf when only ``a`` is zero)."""
    scale = float(np.abs(a).max())
    diff = float(np.abs(np.asarray(a, np.float64) - b).max())
    if scale == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / scale


def _onehot(t: npt.NDArray[np.int64], classes: int) -> Array:
    seed = np.zeros((len(t), classes), np.float32)
    seed[np.arange(len(t)), t] = 1.0
    return seed


def graph_maps(
    session: ExplainSession, method: str, x: Array, targets: npt.NDArray[np.int64], steps: int = 16
) -> Array:
    """Maps [N, h, w] of ``method`` straight from the graph's outputs, for any input range.

    The method functions accept only pixels in [0, 1], while the twin's inputs are shifted
    out of it, so the twin check computes each map from ``session.run`` by the method's own
    definition (the registry's map functions and quadrature, at native resolution): saliency
    and guided backprop / deconvnet as max |gradient| over channels, gradient x input and
    Integrated Gradients (from the zero input, Gauss-Legendre) as channel sums, Grad-CAM at the
    tap, occlusion with a zero patch of 1/8 of the side and stride 1/16.
    """
    seed = _onehot(targets, session.info.num_classes)
    if method in ("saliency", "guided_backprop", "deconvnet"):
        rule = {"saliency": "plain", "guided_backprop": "guided"}.get(method, "deconvnet")
        return saliency_map(session.run(x, seed, relu_rule=rule).grad_input)
    if method == GRADIENT_X_INPUT:
        return (session.run(x, seed).grad_input * x).sum(axis=1)
    if method == "gradcam":
        alias = session.info.tap(None)
        run = session.run(x, seed, grad_input=False, taps=[alias])
        return gradcam_map(run.taps[alias], run.tap_grads[alias])
    if method == "integrated_gradients":
        alphas, weights = quadrature("gausslegendre", steps)
        total = np.zeros_like(x)
        for a, wt in zip(alphas, weights, strict=True):
            total += wt * session.run(a * x, seed).grad_input
        return (x * total).sum(axis=1)
    if method == "occlusion":
        return _occlusion(session, x, targets)
    raise ModelError(f"method {method!r} not in the twin check; valid: {list(TWIN_METHODS)}")


def _occlusion(session: ExplainSession, x: Array, targets: npt.NDArray[np.int64]) -> Array:
    n, _, h, w = x.shape
    win, stride = max(1, round(min(h, w) / 8)), max(1, round(min(h, w) / 16))
    rows = np.arange(n)
    score = session.logits(x)[rows, targets]
    total, count = np.zeros((n, h, w), np.float32), np.zeros((h, w), np.float32)
    for i in range(0, h - win + 1, stride):
        for j in range(0, w - win + 1, stride):
            xs = x.copy()
            xs[:, :, i : i + win, j : j + win] = 0.0
            drop = score - session.logits(xs)[rows, targets]
            total[:, i : i + win, j : j + win] += drop[:, None, None]
            count[i : i + win, j : j + win] += 1
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def input_invariance(
    session: ExplainSession,
    x: Array,
    targets: npt.NDArray[np.int64],
    methods: Sequence[str] = TWIN_METHODS,
    *,
    shift: float | Sequence[float] = DEFAULT_SHIFT,
    steps: int = 16,
) -> InvarianceResult:
    """Explain ``x`` with ``session``'s model and ``x + shift`` with its twin, per method.

    Args:
        session: the explanation graph.
        x: images [N, 3, H, W] in [0, 1].
        targets: explained class per image.
        methods: names from ``TWIN_METHODS``.
        shift: the input shift the twin absorbs.
        steps: Integrated Gradients quadrature points.
    """
    unknown = [m for m in methods if m not in TWIN_METHODS]
    if unknown:
        raise ModelError(f"methods {unknown} not in the twin check; valid: {list(TWIN_METHODS)}")
    twin_proto, where = shifted_twin(session.model_proto(), shift)
    twin = ExplainSession(twin_proto, batch_size=session.batch_size)
    c = _shift_vector(shift, x.shape[1]).astype(np.float32).reshape(1, -1, 1, 1)
    xs = (x + c).astype(np.float32)
    logit_diff = float(np.abs(session.logits(x) - twin.logits(xs)).max())
    rows = []
    for m in methods:
        a, b = graph_maps(session, m, x, targets, steps), graph_maps(twin, m, xs, targets, steps)
        change = np.array([relative_change(p, q) for p, q in zip(a, b, strict=True)])
        rho = np.array(
            [metrics.spearman(p, q) if p.size > 1 else math.nan for p, q in zip(a, b, strict=True)]
        )
        rows.append(InvarianceRow(m, change, rho))
    shift_t = tuple(float(v) for v in c.ravel())
    return InvarianceResult(shift_t, where, logit_diff, tuple(rows))


def _onnx():  # noqa: ANN202
    import onnx
    import onnx.helper
    import onnx.numpy_helper

    return onnx
