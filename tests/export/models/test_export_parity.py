"""Input and tap gradients of the exported explanation graphs against torch autograd in float64.

For every model and every rectifier rule (plain, guided backprop, deconvnet), onnxruntime's
answer is compared with a float64 torch reference, and with torch's own float32 answer.

Why two kinds of bound: in float32 a ReLU or max-pool decision on a value within rounding error
of a kink can flip, and in deep random-initialised nets one flip moves whole regions of the input
gradient (torch float32 vs float64 differ by ~1e-2 of the max on ResNet50/VGG16, and
onnxruntime's layout-optimised conv kernels round differently from torch's). So:
(a) exact agreement, 1e-5 of the largest magnitude, for SmallCNN and ResNet18 at batch 1 with
    onnxruntime's layout optimisations off, and for every tap gradient;
(b) for every model and rule, the ONNX error against float64 is at most twice torch float32's
    own error against float64 (max and 99th percentile), plus 1e-5.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from gradtap.export.models.to_onnx import model_path  # noqa: E402
from gradtap.export.models.zoo import build, pixel_space, tap_module  # noqa: E402
from gradtap.runtime import contract as c  # noqa: E402
from tests.graphs import controls, session  # noqa: E402

RULES = tuple(c.RELU_RULES)
FAST = ["smallcnn", "resnet18", "efficientnet_lite0"]
SLOW = [pytest.param(m, marks=pytest.mark.slow) for m in ("vgg16", "resnet50")]


class _RuleRectifier(torch.autograd.Function):
    """clamp(x, low, high) whose backward follows a rectifier rule (the test's own reference)."""

    @staticmethod
    def forward(ctx, x, low, high, rule):  # noqa: ANN001, ANN205
        ctx.save_for_backward(x)
        ctx.low, ctx.high, ctx.rule = low, high, rule
        return x.clamp(min=low, max=high)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        (x,) = ctx.saved_tensors
        inside = x > ctx.low
        if ctx.high is not None:
            inside &= x < ctx.high
        plain = g * inside
        grad = {"plain": plain, "guided": plain.clamp(min=0), "deconvnet": g.clamp(min=0)}[ctx.rule]
        return grad, None, None, None


class RuleAct(nn.Module):
    def __init__(self, high: float | None, rule: str) -> None:
        super().__init__()
        self.high, self.rule = high, rule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _RuleRectifier.apply(x, 0.0, self.high, self.rule)


def with_rule(model: nn.Module, rule: str) -> nn.Module:
    """A copy of ``model`` whose ReLU/ReLU6 modules back-propagate by ``rule``."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.ReLU | nn.ReLU6):
            parent, _, child = name.rpartition(".")
            high = 6.0 if isinstance(module, nn.ReLU6) else None
            setattr(model.get_submodule(parent) if parent else model, child, RuleAct(high, rule))
    return model


def torch_grads(name: str, rule: str, x: np.ndarray, seed: np.ndarray, dtype: torch.dtype):
    """(logits, d/dx, d/dtap) of sum(seed * logits) by torch autograd in ``dtype``."""
    model, spec = build(name, "random")
    model = with_rule(model, rule).to(dtype)
    wrapped = pixel_space(model, spec).to(dtype)
    captured = {}
    tap_module(model, spec).register_forward_hook(lambda m, i, o: captured.setdefault("tap", o))
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    logits = wrapped(xt)
    captured["tap"].retain_grad()
    (logits * torch.tensor(seed, dtype=dtype)).sum().backward()
    as_np = lambda t: t.detach().double().numpy()  # noqa: E731
    return as_np(logits), as_np(xt.grad), as_np(captured["tap"].grad)


@pytest.fixture(scope="module")
def inputs():
    def make(name: str, batch: int) -> tuple[np.ndarray, np.ndarray, str]:
        path = model_path(name, "random", augmented=True)
        sess = session(_load(path))
        _, _, height, width = sess.get_inputs()[0].shape
        classes = sess.get_outputs()[0].shape[1]
        rng = np.random.default_rng(3)
        x = rng.random((batch, 3, height, width), dtype=np.float32)
        seed = rng.normal(size=(batch, classes)).astype(np.float32)
        return x, seed, str(path)

    return make


def _load(path):  # noqa: ANN001, ANN202
    import onnx

    return onnx.load(str(path))


def onnx_grads(path: str, rule: str, x: np.ndarray, seed: np.ndarray, *, layout_opt: bool):
    sess = session(_load(path), layout_opt=layout_opt)
    alias = next(
        o.name for o in sess.get_outputs() if o.name.startswith(c.GRAD_PREFIX + c.TAP_PREFIX)
    )
    feeds = {c.INPUT: x, c.SEED: seed, **controls(relu_rule=c.RELU_RULES[rule])}
    return [a.astype(np.float64) for a in sess.run([c.LOGITS, c.GRAD_INPUT, alias], feeds)]


def rel_err(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.abs(a - ref) / max(np.abs(ref).max(), 1e-30)


def assert_within_torch_float32(ours: np.ndarray, torch32: np.ndarray, ref: np.ndarray) -> None:
    e_ours, e_torch = rel_err(ours, ref), rel_err(torch32, ref)
    for stat in (np.max, lambda e: np.percentile(e, 99)):
        assert stat(e_ours) <= 2 * stat(e_torch) + 1e-5, (stat(e_ours), stat(e_torch))


@pytest.mark.parametrize("name", FAST + SLOW)
@pytest.mark.parametrize("rule", RULES)
def test_gradients_match_torch(name: str, rule: str, inputs) -> None:
    x, seed, path = inputs(name, 2)
    logits64, gx64, gtap64 = torch_grads(name, rule, x, seed, torch.float64)
    _, gx32, gtap32 = torch_grads(name, rule, x, seed, torch.float32)
    logits, gx, gtap = onnx_grads(path, rule, x, seed, layout_opt=True)
    np.testing.assert_allclose(logits, logits64, rtol=1e-4, atol=1e-4 * np.abs(logits64).max())
    assert_within_torch_float32(gx, gx32, gx64)
    assert rel_err(gtap, gtap64).max() <= 1e-5  # (a): every tap gradient is exact
    assert_within_torch_float32(gtap, gtap32, gtap64)


@pytest.mark.parametrize("name", ["smallcnn", "resnet18"])
@pytest.mark.parametrize("rule", RULES)
def test_gradients_exact_at_batch_one(name: str, rule: str, inputs) -> None:
    x, seed, path = inputs(name, 1)
    _, gx64, gtap64 = torch_grads(name, rule, x, seed, torch.float64)
    _, gx, gtap = onnx_grads(path, rule, x, seed, layout_opt=False)
    assert rel_err(gx, gx64).max() <= 1e-5
    assert rel_err(gtap, gtap64).max() <= 1e-5
