"""The gated explanation graph: the ``compute`` input runs only the parts asked for (no torch)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from gradtap.export import augment as augment_module
from gradtap.export.augment import augment
from gradtap.export.gate import branch_nodes, ungate
from gradtap.runtime import contract as c
from tests.graphs import session, tiny_cnn

RNG = np.random.default_rng(11)
NAMES = [c.LOGITS, "tap/features", c.GRAD_INPUT, "grad/tap/features"]
BACKWARD_OPS = {"ConvTranspose", "ScatterElements", "Where", "Sum"}


@pytest.fixture(scope="module")
def gated() -> onnx.ModelProto:
    return augment(tiny_cnn(), taps={"features": "features"})


@pytest.fixture(scope="module")
def flat() -> onnx.ModelProto:
    """The same graph with the gating step skipped: every node at the top level."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(augment_module, "gate", lambda model: model)
        return augment(tiny_cnn(), taps={"features": "features"})


def feeds(rule: int = 0, **extra: int) -> dict[str, np.ndarray]:
    out = {
        c.INPUT: RNG.random((2, 3, 8, 8), dtype=np.float32),
        c.SEED: RNG.normal(size=(2, 3)).astype(np.float32),
        c.RELU_RULE: np.asarray(rule, np.int64),
    }
    out.update({k: np.asarray(v, np.int64) for k, v in extra.items()})
    return out


def test_the_backward_pass_lives_in_two_if_branches(gated: onnx.ModelProto) -> None:
    top = [n.op_type for n in gated.graph.node]
    assert top.count("If") == 2 and not BACKWARD_OPS & set(top)
    inner = {m.op_type for n in gated.graph.node for a in n.attribute for m in a.g.node}
    assert {"Conv", "ScatterElements", "Where"} <= inner  # stride-1 backward convs are Convs
    assert "ConvTranspose" not in inner and len(branch_nodes(gated)) > len(top)
    # the flipped weights depend on constants only: computed at the top level, folded at load
    assert {"Transpose", "Slice"} <= set(top)
    assert c.COMPUTE in {i.name for i in gated.graph.input}


@pytest.mark.parametrize("rule", list(c.RELU_RULES.values()))
def test_full_compute_equals_the_flat_graph(
    gated: onnx.ModelProto, flat: onnx.ModelProto, rule: int
) -> None:
    f = feeds(rule)
    want = session(flat).run(NAMES, f)
    got = session(gated).run(NAMES, f)  # compute defaults to 2: everything
    for g, w, name in zip(got, want, NAMES, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7, err_msg=name)


def test_lower_levels_return_empty_gradients_of_the_right_rank(
    gated: onnx.ModelProto, flat: onnx.ModelProto
) -> None:
    f = feeds()
    want = dict(zip(NAMES, session(flat).run(NAMES, f), strict=True))
    taps = dict(
        zip(
            NAMES, session(gated).run(NAMES, {**f, c.COMPUTE: np.asarray(1, np.int64)}), strict=True
        )
    )
    fwd = dict(
        zip(
            NAMES, session(gated).run(NAMES, {**f, c.COMPUTE: np.asarray(0, np.int64)}), strict=True
        )
    )
    for name in (c.LOGITS, "tap/features"):
        np.testing.assert_allclose(taps[name], want[name], rtol=1e-6)
        np.testing.assert_allclose(fwd[name], want[name], rtol=1e-6)
    np.testing.assert_allclose(taps["grad/tap/features"], want["grad/tap/features"], rtol=1e-6)
    assert taps[c.GRAD_INPUT].shape == (0, 0, 0, 0)
    assert fwd[c.GRAD_INPUT].shape == (0, 0, 0, 0) and fwd["grad/tap/features"].size == 0


def test_the_reference_evaluator_agrees_at_every_level(
    gated: onnx.ModelProto, flat: onnx.ModelProto
) -> None:
    """onnx's own evaluator (an independent engine, If included) gives onnxruntime's numbers."""
    ref = ReferenceEvaluator(gated)
    for level in c.COMPUTE_LEVELS.values():
        f = feeds(rule=1, compute=level)
        for got, want in zip(ref.run(NAMES, f), session(gated).run(NAMES, f), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_model_without_taps_gates_only_the_input_gradient() -> None:
    model = augment(tiny_cnn(), taps={})
    assert [n.op_type for n in model.graph.node].count("If") == 1
    s = session(model)
    f = feeds()
    got = s.run([c.GRAD_INPUT], {**f, c.COMPUTE: np.asarray(0, np.int64)})[0]
    assert got.size == 0 and s.run([c.GRAD_INPUT], f)[0].shape == (2, 3, 8, 8)


def test_ungate_inlines_the_branches_back(gated: onnx.ModelProto, flat: onnx.ModelProto) -> None:
    inlined = ungate(gated)
    assert "If" not in {n.op_type for n in inlined.graph.node}
    onnx.checker.check_model(inlined)
    f = feeds(rule=2)
    for got, want in zip(session(inlined).run(NAMES, f), session(flat).run(NAMES, f), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
