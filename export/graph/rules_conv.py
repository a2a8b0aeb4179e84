"""Backward rules for convolution, pooling and reductions: the long ones.

Spatial sizes must be static (the batch dimension may be dynamic): output_padding and pooling
divisors are computed here from inferred shapes, once, at augmentation time.
"""

from __future__ import annotations

import numpy as np
from onnx import NodeProto, TensorProto

from gradtap.export.graph.attrs import attr_int, attr_ints, attr_str
from gradtap.export.graph.emitter import Emitter
from gradtap.export.graph.rulebase import Grads, RuleSet, zero_appended
from gradtap.runtime.errors import GraphError, UnsupportedOpError

PART = RuleSet(__name__)
vjp_rule = PART.rule


def _explicit_pads(
    node: NodeProto,
    in_sizes: list[int],
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
) -> list[int]:
    """Pads as [begin..., end...], resolving auto_pad SAME_UPPER/SAME_LOWER/VALID."""
    auto_pad = attr_str(node, "auto_pad", "NOTSET")
    n = len(in_sizes)
    if auto_pad == "NOTSET":
        return attr_ints(node, "pads", [0] * 2 * n)
    if auto_pad == "VALID":
        return [0] * 2 * n
    begin, end = [], []
    for size, k, s, d in zip(in_sizes, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else large)
        end.append(large if auto_pad == "SAME_UPPER" else small)
    return begin + end


def _transpose_geometry(
    in_sizes: list[int],
    out_sizes: list[int],
    kernel: list[int],
    strides: list[int],
    dilations: list[int],
    pads: list[int],
) -> tuple[list[int], list[int]]:
    """Pads and output_padding making ConvTranspose produce exactly ``in_sizes``.

    ConvTranspose yields s*(out-1) + d*(k-1) + 1 - pad_begin - pad_end; rows the forward op
    never read (floor division) come back as output_padding, rows past the input (ceil_mode)
    are cropped by a larger end pad.
    """  # fmt: skip
    n = len(in_sizes)
    end_pads, out_pad = list(pads[n:]), []
    for i in range(n):
        full = strides[i] * (out_sizes[i] - 1) + dilations[i] * (kernel[i] - 1) + 1
        extra = in_sizes[i] - (full - pads[i] - pads[n + i])
        out_pad.append(max(extra, 0))
        end_pads[i] += max(-extra, 0)
    return list(pads[:n]) + end_pads, out_pad


def _spatial(em: Emitter, name: str) -> list[int]:
    dims = em.info.shape(name)[2:]
    sizes = [d for d in dims if isinstance(d, int)]
    if len(sizes) != len(dims):
        raise GraphError(f"tensor {name!r} needs static spatial dimensions for its backward pass")
    return sizes


def _static_spatial(em: Emitter, name: str) -> bool:
    return all(isinstance(d, int) for d in em.info.shape(name)[2:])


@vjp_rule("Conv")
def conv_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = ConvTranspose(dy, W) with the forward strides/pads/dilations/group + output_padding.

    Stride 1 without output_padding: the same as a Conv with the flipped, channel-swapped W.
    """
    x, w, y = node.input[0], node.input[1], node.output[0]
    if em.wants(w) or (len(node.input) > 2 and em.wants(node.input[2])):
        raise UnsupportedOpError(f"Conv node {node.name!r}: weights depend on the input")
    in_sizes, out_sizes = _spatial(em, x), _spatial(em, y)
    n = len(in_sizes)
    kernel = attr_ints(node, "kernel_shape", em.info.static_shape(w)[2:])
    strides, dilations = attr_ints(node, "strides", [1] * n), attr_ints(node, "dilations", [1] * n)
    pads = _explicit_pads(node, in_sizes, kernel, strides, dilations)
    pads, out_pad = _transpose_geometry(in_sizes, out_sizes, kernel, strides, dilations, pads)
    group = attr_int(node, "group", 1)
    reach = [d * (k - 1) for d, k in zip(dilations, kernel, strict=True)] * 2
    conv_pads = [r - p for r, p in zip(reach, pads, strict=True)]
    if all(s == 1 for s in strides) and not any(out_pad) and min(conv_pads) >= 0:
        dx = em.op(
            "Conv", dys[0], _flipped(em, w, group, n), dilations=dilations, pads=conv_pads,
            group=group, kernel_shape=kernel,
        )  # fmt: skip
    else:
        cout, cin_g = em.info.static_shape(w)[:2]
        square = cout == cin_g * group and cin_g > 1  # as many input as output channels
        dx = em.op(
            "ConvTranspose", dys[0], _widened(em, w) if square else w, strides=strides,
            dilations=dilations, pads=pads, group=group, output_padding=out_pad,
            kernel_shape=kernel,
        )  # fmt: skip
        if square:  # the zero channel of each group taken off again
            dx = _narrowed(em, dx, group, cin_g, in_sizes)
    return (dx, None) + ((None,) if len(node.input) > 2 else ())


def _widened(em: Emitter, w: str) -> str:
    """A ConvTranspose weight [C, C/g, k...] with a zero output channel appended to each group.

    OpenVINO (2026.4) computes a ConvTranspose with as many input as output channels wrongly
    unless it is depthwise: the input gradient of ResNet50's 3x3 stride-2 layers (128 -> 128 up
    to 512 -> 512) and of RegNet-Y's grouped ones was off by 25-115 %; with the counts different
    it computes it right. The zero channels cost g/C more work.
    """
    return zero_appended(em, w, 1)


def _narrowed(em: Emitter, dx: str, group: int, per_group: int, sizes: list[int]) -> str:
    """``dx`` [N, g * (per_group + 1), ...] without the last channel of each group."""
    if group == 1:
        return em.op("Slice", dx, em.ints([0]), em.ints([per_group]), em.ints([1]))
    split = em.op("Reshape", dx, em.ints([0, group, per_group + 1, *sizes]))
    kept = em.op("Slice", split, em.ints([0]), em.ints([per_group]), em.ints([2]))
    return em.op("Reshape", kept, em.ints([0, group * per_group, *sizes]))


def _flipped(em: Emitter, w: str, group: int, n: int) -> str:
    """W [Cout, Cin/g, k...] as the Conv weight [Cin, Cout/g, k...] of the stride-1 transpose.

    A stride-1 ConvTranspose is a Conv with input and output channels swapped within each group
    and the kernel flipped; onnxruntime runs Conv in its fast blocked layout, ConvTranspose not.
    The weight is a constant, so runtimes fold these nodes once, at load time.
    """
    cout, cin_g, *kernel = em.info.static_shape(w)
    per_group = [group, cout // group, cin_g, *kernel]
    swapped = em.op(
        "Transpose", em.op("Reshape", w, em.ints(per_group)), perm=[0, 2, 1, *range(3, 3 + n)]
    )
    grouped = em.op("Reshape", swapped, em.ints([cin_g * group, cout // group, *kernel]))
    axes = list(range(2, 2 + n))
    big = np.iinfo(np.int64).min
    return em.op(
        "Slice", grouped, em.ints([-1] * n), em.ints([big] * n), em.ints(axes), em.ints([-1] * n)
    )


@vjp_rule("MaxPool")
def max_pool_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = scatter-add of dy at the argmax of each window (overlapping windows accumulate).

    Uses the node's Indices output (flat over N*C*H*W), adding it to the forward node if absent;
    ties route to the first maximum, as the forward kernel picks it. With static spatial sizes
    the indices are made relative to each (n, c) plane and int32 (the gate computes them in the
    forward pass, so the backward pass keeps half the bytes of int64 indices alive), and the
    scatter runs along the flattened planes.
    """
    if attr_int(node, "storage_order", 0):
        raise UnsupportedOpError(f"MaxPool node {node.name!r}: column-major storage_order")
    if len(node.output) < 2 or not node.output[1]:
        del node.output[1:]
        node.output.append(f"{node.name or node.output[0]}/argmax")
    x, indices = node.input[0], node.output[1]
    plane = int(np.prod(_spatial(em, x))) if _static_spatial(em, x) else 0
    if 0 < plane < 2**31:
        rows, axis = em.ints([0, 0, -1]), 2
        indices = em.op("Cast", em.op("Mod", indices, em.ints([plane])), to=TensorProto.INT32)
    else:
        rows, axis = em.ints([-1]), 0
    zeros = em.op("Reshape", em.zeros_like(x), rows)
    summed = em.op(
        "ScatterElements", zeros, em.op("Reshape", indices, rows), em.op("Reshape", dys[0], rows),
        axis=axis, reduction="add",
    )  # fmt: skip
    return (em.op("Reshape", summed, em.op("Shape", x)),)


def _pool_counts(
    in_sizes: list[int],
    out_sizes: list[int],
    kernel: list[int],
    strides: list[int],
    pads: list[int],
    include_pad: bool,
) -> np.ndarray:
    """How many elements each AveragePool window divides by (windows clipped at the borders)."""
    n, axes = len(in_sizes), []
    for i in range(n):
        starts = np.arange(out_sizes[i]) * strides[i] - pads[i]
        ends = np.minimum(starts + kernel[i], in_sizes[i] + pads[n + i])
        if not include_pad:
            starts, ends = np.maximum(starts, 0), np.minimum(ends, in_sizes[i])
        axes.append((ends - starts).astype(np.float32))
    counts = axes[0]
    for a in axes[1:]:
        counts = np.multiply.outer(counts, a)
    return counts[None, None]


@vjp_rule("AveragePool")
def average_pool_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = ConvTranspose(dy / count, ones) per channel: each input gets dy / count of its windows."""
    x, y = node.input[0], node.output[0]
    in_sizes, out_sizes = _spatial(em, x), _spatial(em, y)
    n = len(in_sizes)
    if any(d != 1 for d in attr_ints(node, "dilations", [1] * n)):
        raise UnsupportedOpError(f"AveragePool node {node.name!r}: dilations are not supported")
    kernel, strides = attr_ints(node, "kernel_shape"), attr_ints(node, "strides", [1] * n)
    pads = _explicit_pads(node, in_sizes, kernel, strides, [1] * n)
    include_pad = bool(attr_int(node, "count_include_pad", 0))
    counts = _pool_counts(in_sizes, out_sizes, kernel, strides, pads, include_pad)
    channels = em.info.shape(x)[1]
    if not isinstance(channels, int):
        raise GraphError(f"AveragePool node {node.name!r}: the channel count must be static")
    pads, out_pad = _transpose_geometry(in_sizes, out_sizes, kernel, strides, [1] * n, pads)
    ones = em.const(np.ones([channels, 1, *kernel], dtype=np.float32), dtype=np.float32)
    dx = em.op(
        "ConvTranspose", em.op("Div", dys[0], em.const(counts, dtype=np.float32)), ones,
        strides=strides, pads=pads, group=channels, output_padding=out_pad, kernel_shape=kernel,
    )  # fmt: skip
    return (dx,)


def _mean_scale(em: Emitter, x: str, y: str) -> str:
    """size(y) / size(x) as a float scalar: a constant when the dimensions that differ are static
    (a symbolic batch cancels out), else computed."""
    xs, ys = em.info.shape(x), em.info.shape(y)
    if len(xs) == len(ys):  # equal named dimensions cancel; unknown ones (None) never do
        differ = [(a, b) for a, b in zip(xs, ys, strict=True) if a != b or a is None]
    else:
        differ = [(a, 1) for a in xs] + [(1, b) for b in ys]
    if all(isinstance(d, int) for pair in differ for d in pair):
        ratio = np.prod([b for _, b in differ]) / np.prod([a for a, _ in differ])
        return em.scalar(float(ratio), x)
    to = em.info.dtypes[x]
    return em.op(
        "Div", em.op("Cast", em.op("Size", y), to=to), em.op("Cast", em.op("Size", x), to=to)
    )


@vjp_rule("GlobalAveragePool")
def global_average_pool_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = broadcast(dy) / (H * W)."""
    x, y = node.input[0], node.output[0]
    spread = em.op("Expand", dys[0], em.op("Shape", x))
    return (em.op("Mul", spread, _mean_scale(em, x, y)),)


def reduce_axes(node: NodeProto, em: Emitter) -> list[int] | None:
    """The reduced axes (non-negative), or None for 'all axes'; opset 18 moved them to an input."""
    rank = em.info.rank(node.input[0])
    axes = attr_ints(node, "axes", [])
    if len(node.input) > 1 and node.input[1]:
        value = em.info.const(node.input[1])
        if value is None:
            raise GraphError(f"{node.op_type} node {node.name!r}: axes must be a constant")
        axes = [int(a) for a in value.reshape(-1)]
    if not axes:
        return [] if attr_int(node, "noop_with_empty_axes", 0) else None
    return sorted(a % rank for a in axes)


@vjp_rule("ReduceMean", "ReduceSum")
def reduce_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = broadcast(dy) (ReduceSum), divided by the number of reduced elements (ReduceMean)."""
    x, y = node.input[0], node.output[0]
    axes = reduce_axes(node, em)
    dy = dys[0]
    if not attr_int(node, "keepdims", 1) and axes != []:
        axes = list(range(em.info.rank(x))) if axes is None else axes
        dy = em.op("Unsqueeze", dy, em.ints(axes))
    dx = em.op("Expand", dy, em.op("Shape", x))
    if node.op_type == "ReduceMean":
        dx = em.op("Mul", dx, _reduced_scale(em, x, y, axes))
    return (dx,) + (None,) * (len(node.input) - 1)


def _reduced_scale(em: Emitter, x: str, y: str, axes: list[int] | None) -> str:
    """1 / (the number of elements a ReduceMean averages): a constant when the reduced axes are
    static, whatever the others are. With keepdims=0 the ranks differ, and ``_mean_scale``
    would compute a ratio of Sizes, which tract turns into zero gradients (ShuffleNetV2 and
    other heads of ``x.mean((2, 3))``)."""
    shape = em.info.shape(x)
    dims = [shape[a] for a in (range(len(shape)) if axes is None else axes)]
    if all(isinstance(d, int) for d in dims):
        return em.scalar(1.0 / float(np.prod(dims)), x)
    return _mean_scale(em, x, y)


@vjp_rule("ConvTranspose")
def conv_transpose_vjp(node: NodeProto, dys: Grads, em: Emitter) -> Grads:
    """dx = Conv(dy, W) with the same strides/pads/dilations/group: ConvTranspose is the adjoint
    of that Conv, whose weight layout [Cin, Cout/g, k...] it shares; output_padding only adds
    rows that the Conv's floor division drops again."""
    x, w = node.input[0], node.input[1]
    if em.wants(w) or (len(node.input) > 2 and em.wants(node.input[2])):
        raise UnsupportedOpError(f"ConvTranspose node {node.name!r}: weights depend on the input")
    auto_pad = attr_str(node, "auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID") or attr_ints(node, "output_shape", []):
        raise UnsupportedOpError(
            f"ConvTranspose node {node.name!r}: auto_pad {auto_pad} or output_shape; explicit "
            "pads only"
        )
    n = len(em.info.shape(x)) - 2
    kernel = attr_ints(node, "kernel_shape", em.info.static_shape(w)[2:])
    dx = em.op(
        "Conv", dys[0], w, strides=attr_ints(node, "strides", [1] * n),
        dilations=attr_ints(node, "dilations", [1] * n), group=attr_int(node, "group", 1),
        pads=attr_ints(node, "pads", [0] * 2 * n) if auto_pad == "NOTSET" else [0] * 2 * n,
        kernel_shape=kernel,
    )  # fmt: skip
    return (dx, None) + ((None,) if len(node.input) > 2 else ())
