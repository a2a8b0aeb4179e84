"""Graph rewrites that prototype proposed export changes, for the benchmark experiments.

- ``ce_seed_graph``: the backward pass seeded with the cross-entropy gradient computed in the graph.
- ``transposed_as_conv``: the backward pass's stride-1 ConvTranspose nodes as Conv nodes.
"""

from __future__ import annotations

import onnx

from gradtap.runtime import contract as c


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
