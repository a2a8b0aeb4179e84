"""Token taps on a tiny ViT: the patch-grid view of a block's tokens against torch autograd and
pytorch-grad-cam's GradCAM with its ViT ``reshape_transform`` (class token dropped).

The ViT is random-initialised, 16x16 input, 4x4 patches (a 4x4 grid and a class token, T = 17),
exported by torch's TorchScript exporter (opset 17) and its default (dynamo) exporter, both with
a dynamic batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import pytorch_grad_cam as pgc
import torch
from onnx import TensorProto, helper, numpy_helper
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from gradtap.export.graph.augment import augment, save_model
from gradtap.export.graph.emitter import GraphInfo
from gradtap.export.graph.taps import candidate_taps
from gradtap.export.graph.tokens import TokenGrid, expose_tokens, split_spec, token_grid
from gradtap.runtime import contract as c
from gradtap.runtime import methods
from gradtap.runtime.errors import GraphError
from gradtap.runtime.image.geometry import resize
from gradtap.runtime.present.postprocess import minmax
from gradtap.runtime.session import ExplainSession
from tests.export.graph.test_rules import assert_vjp
from tests.graphs import controls, session

TARGETS = [1, 3]


class Block(torch.nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv, self.proj, self.heads = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d), heads
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(d, 2 * d), torch.nn.GELU(), torch.nn.Linear(2 * d, d)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class TinyViT(torch.nn.Module):
    def __init__(self, d: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.patch = torch.nn.Conv2d(3, d, 4, 4)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, d))
        self.pos = torch.nn.Parameter(torch.randn(1, 17, d) * 0.1)
        self.blocks = torch.nn.Sequential(Block(d, 2), Block(d, 2))
        self.norm, self.head = torch.nn.LayerNorm(d), torch.nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.blocks(x))[:, 0])


def reshape_transform(tokens: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's ViT recipe: drop the class token, [N, 16, C] -> [N, C, 4, 4]."""
    grid = tokens[:, 1:, :].reshape(tokens.size(0), 4, 4, tokens.size(2))
    return grid.transpose(2, 3).transpose(1, 2)


def export(net: torch.nn.Module, path: Path, dynamo: bool) -> onnx.ModelProto:
    x = torch.rand(2, 3, 16, 16)
    if dynamo:
        torch.onnx.export(
            net, (x,), str(path), input_names=["image"], output_names=["logits"], dynamo=True,
            dynamic_shapes={"x": {0: torch.export.Dim("N")}}, external_data=False,
        )  # fmt: skip
    else:
        torch.onnx.export(
            net, (x,), str(path), input_names=["image"], output_names=["logits"], dynamo=False,
            opset_version=17, dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
        )  # fmt: skip
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def net() -> TinyViT:
    torch.manual_seed(0)
    return TinyViT().eval()


@pytest.fixture(
    scope="module",
    params=["torchscript", pytest.param("dynamo", marks=pytest.mark.slow)],
)
def exported(request: pytest.FixtureRequest, net: TinyViT, tmp_path_factory) -> onnx.ModelProto:  # noqa: ANN001
    path = tmp_path_factory.mktemp("vit") / f"vit_{request.param}.onnx"
    return export(net, path, request.param == "dynamo")


def torch_tap_and_grad(net: TinyViT, x: np.ndarray, seed: np.ndarray) -> tuple[np.ndarray, ...]:
    """blocks[-1].norm1's output on the grid and d sum(seed * logits) / d it, in float64."""
    double = TinyViT().double()
    double.load_state_dict(net.state_dict())
    kept = {}

    def hook(_m, _i, out: torch.Tensor) -> None:  # noqa: ANN001
        out.retain_grad()
        kept["tokens"] = out

    double.blocks[-1].norm1.register_forward_hook(hook)
    logits = double(torch.from_numpy(x).double())
    (logits * torch.from_numpy(seed).double()).sum().backward()
    tokens = kept["tokens"]
    return reshape_transform(tokens).detach().numpy(), reshape_transform(tokens.grad).numpy()


def test_the_default_tap_is_the_last_blocks_normalised_tokens_on_the_grid(
    net: TinyViT, exported: onnx.ModelProto
) -> None:
    aug = augment(exported)
    meta = {p.key: p.value for p in aug.metadata_props}
    alias = meta[c.META_DEFAULT_TAP]
    rng = np.random.default_rng(0)
    x = rng.random((3, 3, 16, 16), dtype=np.float32)
    seed = rng.normal(size=(3, 5)).astype(np.float32)
    tap, grad = session(aug).run(
        [c.tap_output(alias), c.tap_grad_output(alias)], {c.INPUT: x, c.SEED: seed, **controls()}
    )
    ref_tap, ref_grad = torch_tap_and_grad(net, x, seed)
    assert tap.shape == grad.shape == (3, 16, 4, 4)
    np.testing.assert_allclose(tap, ref_tap, atol=1e-5 * np.abs(ref_tap).max())
    # float32 through two attention blocks: a relative error of a few 1e-7 per op adds up
    np.testing.assert_allclose(grad, ref_grad, atol=1e-5 * np.abs(ref_grad).max())


def test_gradcam_on_the_token_tap_matches_pytorch_grad_cam(
    net: TinyViT, exported: onnx.ModelProto, tmp_path: Path
) -> None:
    path = tmp_path / "vit.gradtap.onnx"
    save_model(augment(exported), path)
    explain = ExplainSession(path)
    x = np.random.default_rng(1).random((2, 3, 16, 16), dtype=np.float32)
    with pgc.GradCAM(
        model=net, target_layers=[net.blocks[-1].norm1], reshape_transform=reshape_transform
    ) as cam:
        ref = cam(
            input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(t) for t in TARGETS]
        )
    maps = methods.gradcam(explain, x, target=TARGETS).maps  # image k explained for TARGETS[k]
    ours = np.stack([minmax(resize(minmax(m), (16, 16))) for m in maps])
    assert np.abs(ours - ref).max() < 1e-4


def test_a_named_grid_and_tap_give_the_same_view(exported: onnx.ModelProto) -> None:
    default = augment(exported)
    meta = {p.key: p.value for p in default.metadata_props}
    tensor = next(n.input[0] for n in default.graph.node if n.name.endswith("/Slice_patches"))
    named = augment(exported, taps={"tokens": f"{tensor}@4x4"})
    x = np.random.default_rng(2).random((1, 3, 16, 16), dtype=np.float32)
    feeds = {c.INPUT: x, c.SEED: np.ones((1, 5), np.float32), **controls()}
    a = session(default).run([c.tap_grad_output(meta[c.META_DEFAULT_TAP])], feeds)[0]
    b = session(named).run([c.tap_grad_output("tokens")], feeds)[0]
    np.testing.assert_array_equal(a, b)
    listed = [t for t in candidate_taps(exported) if t.name.endswith("@4x4")]
    assert len(listed) == 5 and listed[-3].name == f"{tensor}@4x4"  # 2 blocks x 2 norms, final
    assert listed[-3].shape[1:] == (16, 4, 4)
    with pytest.raises(GraphError, match="do not fill a 5x5 grid"):
        augment(exported, taps={"tokens": f"{tensor}@5x5"})


def token_model(tokens: int, channels: int = 3) -> onnx.ModelProto:
    """x [N, T, C] -> Mul by a weight -> ReduceSum over tokens and channels weighted -> y [N, 2]."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(tokens, channels)).astype(np.float32)
    head = rng.normal(size=(tokens * channels, 2)).astype(np.float32)
    nodes = [
        helper.make_node("Mul", ["x", "w"], ["tokens"]),
        helper.make_node("Relu", ["tokens"], ["act"]),
        helper.make_node("Flatten", ["act"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "head"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "tokens", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", tokens, channels])],
        [helper.make_empty_tensor_value_info("y")],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(head, "head")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


@pytest.mark.parametrize(("tokens", "grid"), [(7, TokenGrid(2, 3, 1)), (6, TokenGrid(3, 2, 0))])
def test_the_routed_tokens_keep_the_forward_pass_and_its_gradients(
    tokens: int, grid: TokenGrid
) -> None:
    """Finite differences through the round trip, with and without a leading token."""
    model = token_model(tokens)
    x = np.random.default_rng(3).normal(size=(2, tokens, 3)).astype(np.float32)
    before = session(model).run(["y"], {"x": x})[0]
    view = expose_tokens(model, "tokens", grid, "tokens/t")
    np.testing.assert_array_equal(session(model).run(["y"], {"x": x})[0], before)
    assert GraphInfo.of(model).shape(view)[1:] == (3, grid.h, grid.w)
    assert_vjp(model, {"x": x}, eps=1e-2, rng=np.random.default_rng(4))


def test_grids_are_inferred_from_the_image_aspect_ratio() -> None:
    info = GraphInfo({"t": ("N", 197, 8), "i": ("N", 3, 224, 224), "u": ("N", 50, 8),
                      "r": ("N", 3, 64, 128), "s": ("N", 198, 8),
                      "f": ("N", 5, 8), "q": ("N", 3, 64, 100)}, {}, {}, 17)  # fmt: skip
    assert token_grid(info, "t", None, "i") == TokenGrid(14, 14, 1)
    assert token_grid(info, "s", None, "i") == TokenGrid(14, 14, 2)  # class + distillation
    assert token_grid(info, "u", None, "r") == TokenGrid(5, 10, 0)
    assert split_spec("a/b@7x9") == ("a/b", (7, 9)) and split_spec("a@b") == ("a@b", None)
    with pytest.raises(GraphError, match="fit no patch grid"):
        token_grid(info, "f", None, "q")


def torch_rectified_gradient(net: TinyViT, x: np.ndarray, target: int, rule: str) -> np.ndarray:
    """d logit_target / d x in float64 with each GELU's backward replaced as rectifier.py says:
    guided: relu(dy) * GELU'(x); deconvnet: relu(dy); plain: unchanged."""
    double = TinyViT().double()
    double.load_state_dict(net.state_dict())

    def hook(_m, grad_input, grad_output):  # noqa: ANN001, ANN202
        dy = grad_output[0]
        if rule == "guided":
            return (torch.where(dy > 0, grad_input[0], torch.zeros_like(dy)),)
        return (torch.clamp(dy, min=0),) if rule == "deconvnet" else None

    for module in double.modules():
        if isinstance(module, torch.nn.GELU):
            module.register_full_backward_hook(hook)
    xt = torch.from_numpy(x).double().requires_grad_()
    double(xt)[:, target].sum().backward()
    return xt.grad.numpy()


@pytest.mark.parametrize(
    ("rule", "method"),
    [("plain", "saliency"), ("guided", "guided_backprop"), ("deconvnet", "deconvnet")],
)
def test_gradient_methods_on_the_vit_follow_the_gelu_rule(
    net: TinyViT, exported: onnx.ModelProto, tmp_path: Path, rule: str, method: str
) -> None:
    path = tmp_path / "vit.gradtap.onnx"
    save_model(augment(exported), path)
    x = np.random.default_rng(5).random((2, 3, 16, 16), dtype=np.float32)
    ref = torch_rectified_gradient(net, x, 2, rule)
    maps = getattr(methods, method)(ExplainSession(path), x, target=2).maps
    if method == "saliency":
        ref = np.abs(ref).max(axis=1)  # max |g| over channels
    assert maps.shape == ref.shape
    np.testing.assert_allclose(maps, ref, atol=1e-5 * np.abs(ref).max())
