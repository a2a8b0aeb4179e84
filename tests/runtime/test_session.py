"""ExplainSession: metadata, compute levels, objectives, batching, relu rules and clear errors (no torch)."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from gradtap.export.graph.augment import augment
from gradtap.runtime import contract as c
from gradtap.runtime.errors import ModelError, NonFiniteError, OptionError
from gradtap.runtime.session import ExplainSession, default_providers
from tests.graphs import controls, tiny_cnn, with_defaults
from tests.runtime_graphs import LABELS, tiny_model

RNG = np.random.default_rng(3)


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return tiny_model(resize={"policy": "shorter_side_center_crop", "size": 20}, model_name="tiny")


@pytest.fixture(scope="module")
def sess(model: onnx.ModelProto) -> ExplainSession:
    return ExplainSession(model)


def raw(model: onnx.ModelProto, names: list[str], x: np.ndarray, seed: np.ndarray, rule: int = 0):
    """The same graph in a plain onnxruntime session: the reference answer."""
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {c.INPUT: x, c.SEED: seed, **controls(model, relu_rule=rule)}
    return s.run(names, with_defaults(s, feeds))


def test_info_from_metadata(sess: ExplainSession) -> None:
    info = sess.info
    assert info.name == "tiny" and info.labels == LABELS and info.num_classes == 3
    assert info.input_size == (16, 16)
    assert (info.resize_policy, info.resize_size) == ("shorter_side_center_crop", 20)
    assert info.taps == ("features",) and info.default_tap == "features"
    assert info.relu_rules == tuple(c.BACKWARD_RULES)  # the rectifier rules, then the LRP ones
    assert info.mean == (0.0, 0.0, 0.0) and info.std == (1.0, 1.0, 1.0)
    assert info.tap(None) == "features"
    with pytest.raises(ModelError, match=r"unknown tap 'layer4'; taps: \['features'\]"):
        info.tap("layer4")


def test_run_matches_plain_onnxruntime(model: onnx.ModelProto, sess: ExplainSession) -> None:
    x = RNG.random((2, 3, 16, 16), dtype=np.float32)
    seed = RNG.normal(size=(2, 3)).astype(np.float32)
    names = [c.LOGITS, c.GRAD_INPUT, "tap/features", "grad/tap/features"]
    for rule, code in c.RELU_RULES.items():
        p = sess.run(x, seed, relu_rule=rule, taps=["features"])
        ref = raw(model, names, x, seed, code)
        for got, want in zip(
            [p.logits, p.grad_input, p.taps["features"], p.tap_grads["features"]], ref, strict=True
        ):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


class _Recorder:
    """Wraps the onnxruntime session and records the ``compute`` level of each call."""

    def __init__(self, inner: ort.InferenceSession, levels: list[int]) -> None:
        self.inner, self.levels = inner, levels

    def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.levels.append(int(feeds[c.COMPUTE]))
        return self.inner.run(names, feeds)


def test_computes_only_what_is_asked(sess: ExplainSession, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without grad/input the backward pass stops at the taps; without gradients, forward only."""
    levels: list[int] = []
    monkeypatch.setattr(sess, "_session", _Recorder(sess._session, levels))  # noqa: SLF001
    x = RNG.random((1, 3, 16, 16), dtype=np.float32)
    p = sess.run(x, np.ones((1, 3), np.float32), grad_input=False, taps=["features"])
    assert p.grad_input is None and set(p.tap_grads) == {"features"}
    q = sess.run(x, None, grad_input=False, taps=["features"], tap_grads=False)
    assert q.tap_grads == {} and set(q.taps) == {"features"}
    sess.logits(x)
    sess.run(x, np.ones((1, 3), np.float32))
    lv = c.COMPUTE_LEVELS
    assert levels == [lv["taps"], lv["forward"], lv["forward"], lv["full"]]


def test_cross_entropy_objective_matches_the_numpy_seed(sess: ExplainSession) -> None:
    """objective='cross_entropy' equals seeding with softmax(logits) * sum(w) - w by hand."""
    x = RNG.random((4, 3, 16, 16), dtype=np.float32)
    w = np.eye(3, dtype=np.float32)[[0, 2, 1, 2]] * np.float32([[1.0], [2.0], [0.5], [1.0]])
    got = sess.run(x, w, objective="cross_entropy", taps=["features"])
    z = sess.logits(x).astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    hand = (p * w.sum(1, keepdims=True) - w).astype(np.float32)
    want = sess.run(x, hand, taps=["features"])
    np.testing.assert_allclose(got.grad_input, want.grad_input, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(
        got.tap_grads["features"], want.tap_grads["features"], rtol=1e-4, atol=1e-7
    )
    with pytest.raises(OptionError, match="objective 'hinge' unknown"):
        sess.run(x, w, objective="hinge")


def test_logits_ignore_the_backward_pass(model: onnx.ModelProto, sess: ExplainSession) -> None:
    x = RNG.random((3, 3, 16, 16), dtype=np.float32)
    fwd = ort.InferenceSession(
        tiny_cnn(size=16).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    np.testing.assert_allclose(sess.logits(x), fwd.run(None, {"input": x})[0], rtol=1e-6)


def test_large_batches_are_split(model: onnx.ModelProto) -> None:
    x = RNG.random((7, 3, 16, 16), dtype=np.float32)
    seed = RNG.normal(size=(7, 3)).astype(np.float32)
    small = ExplainSession(model, batch_size=2)
    whole = ExplainSession(model, batch_size=64)
    calls: list[int] = []
    real = small._session.run
    small._session.run = lambda n, f: calls.append(len(f[c.INPUT])) or real(n, f)  # type: ignore[method-assign]
    a, b = small.run(x, seed), whole.run(x, seed)
    assert calls == [2, 2, 2, 1]
    np.testing.assert_allclose(a.grad_input, b.grad_input, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(a.logits, b.logits, rtol=1e-6)


def test_provider_threads_and_logging(
    model: onnx.ModelProto, caplog: pytest.LogCaptureFixture
) -> None:
    assert default_providers()[-1] == "CPUExecutionProvider"
    with caplog.at_level(logging.INFO, logger="gradtap.runtime.session"):
        s = ExplainSession(model, providers=["CPUExecutionProvider"], threads=1)
    assert s.provider == "CPUExecutionProvider"
    assert "runs on CPUExecutionProvider" in caplog.text
    with pytest.raises(
        OptionError, match=r"providers \['NoSuchExecutionProvider'\] not available; valid:"
    ):
        ExplainSession(model, providers=["NoSuchExecutionProvider"])
    with pytest.raises(OptionError, match="threads must be >= 1"):
        ExplainSession(model, threads=0)
    with pytest.raises(OptionError, match="batch_size must be >= 1"):
        ExplainSession(model, batch_size=0)


def test_model_from_file(model: onnx.ModelProto, tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "tiny.gradtap.onnx"
    onnx.save(model, path)
    s = ExplainSession(path)
    assert s.info.name == "tiny"
    assert s.model_proto().graph.name == model.graph.name


def test_plain_forward_graph_says_what_to_run(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "forward.onnx"
    onnx.save(tiny_cnn(), path)
    with pytest.raises(
        ModelError, match=r"'forward' is not an augmented gradtap model .*gradtap augment"
    ):
        ExplainSession(path)


def test_not_an_onnx_file(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelError, match="cannot load .*junk.onnx' as an ONNX model"):
        ExplainSession(path)
    with pytest.raises(ModelError, match="does not exist"):
        ExplainSession(tmp_path / "missing.onnx")


def test_wrong_contract_version(model: onnx.ModelProto) -> None:
    other = onnx.ModelProto()
    other.CopyFrom(model)
    for prop in other.metadata_props:
        if prop.key == c.META_CONTRACT:
            prop.value = "999"
    with pytest.raises(ModelError, match="contract version '999'"):
        ExplainSession(other)


def test_bad_inputs_are_refused(sess: ExplainSession) -> None:
    with pytest.raises(
        OptionError, match=r"input must be \[N, 3, 16, 16\] with N >= 1, got \(1, 3, 8, 8\)"
    ):
        sess.run(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(OptionError, match="dtype uint8"):
        sess.run(np.zeros((1, 3, 16, 16), np.uint8))
    with pytest.raises(OptionError, match="NaN or Inf"):
        sess.run(np.full((1, 3, 16, 16), np.nan, np.float32))
    with pytest.raises(OptionError, match=r"seed must be \[N, classes\] = \[1, 3\]"):
        sess.run(np.zeros((1, 3, 16, 16), np.float32), np.zeros((1, 4), np.float32))
    with pytest.raises(OptionError, match=r"relu_rule 'guidd' not available .* valid: \['plain'"):
        sess.run(np.zeros((1, 3, 16, 16), np.float32), relu_rule="guidd")


def test_non_finite_logits_are_reported() -> None:
    forward = tiny_cnn(size=16)
    for init in forward.graph.initializer:
        if init.name == "fc_b":
            init.CopyFrom(numpy_helper.from_array(np.array([np.inf, 0, 0], np.float32), "fc_b"))
    from gradtap.export.graph.augment import augment

    s = ExplainSession(augment(forward, taps={"features": "features"}))
    with pytest.raises(NonFiniteError, match=r"NaN or Inf in \['logits'\]"):
        s.logits(np.zeros((1, 3, 16, 16), np.float32))


def test_external_data_outside_the_model_folder_is_refused(
    model: onnx.ModelProto, tmp_path
) -> None:  # noqa: ANN001
    (tmp_path / "models").mkdir()
    (tmp_path / "secret.bin").write_bytes(np.ones(4 * 6 * 3 * 3, np.float32).tobytes())
    other = onnx.ModelProto()
    other.CopyFrom(model)
    w = next(t for t in other.graph.initializer if t.name == "w2")
    onnx.external_data_helper.set_external_data(
        w, location="../secret.bin", offset=0, length=4 * 6 * 4 * 9
    )
    w.ClearField("raw_data")
    w.data_location = onnx.TensorProto.EXTERNAL
    onnx.save(other, tmp_path / "models" / "m.onnx")
    with pytest.raises(  # refused by gradtap itself, whatever the onnxruntime version
        ModelError, match="external data '../secret.bin' of tensor 'w2' points outside the model"
    ):
        ExplainSession(tmp_path / "models" / "m.onnx")


def test_lean_sessions_skip_memory_patterns_and_prepacked_weights(model: onnx.ModelProto) -> None:
    lean = ExplainSession(model)._session.get_session_options()  # noqa: SLF001
    assert not lean.enable_mem_pattern
    assert lean.get_session_config_entry("session.disable_prepacking") == "1"
    fast = ExplainSession(model, lean=False)._session.get_session_options()  # noqa: SLF001
    assert fast.enable_mem_pattern
    x = RNG.random((2, 3, 16, 16), dtype=np.float32)
    seed = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(
        ExplainSession(model).run(x, seed).grad_input,
        ExplainSession(model, lean=False).run(x, seed).grad_input,
        rtol=1e-6,
    )


def test_a_method_call_validates_its_batch_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from gradtap.runtime import methods

    session = ExplainSession(augment(tiny_cnn(size=8), labels=["a", "b", "c"]))
    seen: list[tuple[int, ...]] = []
    real = ExplainSession._validate

    def counted(self, x):  # noqa: ANN001, ANN202
        seen.append(np.shape(x))
        return real(self, x)

    monkeypatch.setattr(ExplainSession, "_validate", counted)
    for method in (methods.gradcam, methods.saliency, methods.guided_gradcam):
        seen.clear()
        method(session, np.full((2, 3, 8, 8), 0.5, np.float32))
        assert seen == [(2, 3, 8, 8)], method.__name__
    seen.clear()
    x = np.full((2, 3, 8, 8), 0.5, np.float32)
    methods.saliency(session, x, ["a", "b"], input_scale=0.5)  # rows picked from the checked batch
    assert seen == [(2, 3, 8, 8)]
    with pytest.raises(OptionError, match="NaN"):  # a new array is checked again
        session.run(np.full((1, 3, 8, 8), np.nan, np.float32))


def test_forward_copy_gives_the_plain_forward_graphs_logits(model: onnx.ModelProto) -> None:
    """The forward-only copy (for methods of many passes): the nodes the logits need, max-pools
    without the argmax, tap_scale fed ones; the logits those of the model before augmentation,
    in batches split like the session's own."""
    from gradtap.runtime.session import _forward_graph

    pruned = _forward_graph(model)
    assert pruned is not None
    assert [o.name for o in pruned.graph.output] == [c.LOGITS]
    assert {i.name for i in pruned.graph.input} == {c.INPUT, c.TAP_SCALE}
    assert not {"If", "ConstantOfShape"} & {n.op_type for n in pruned.graph.node}
    pools = [n for n in model.graph.node if n.op_type == "MaxPool"]
    assert pools and all(len(n.output) == 2 for n in pools)  # the explanation graph's argmax
    assert all(len(n.output) == 1 for n in pruned.graph.node if n.op_type == "MaxPool")
    x = RNG.random((5, 3, 16, 16), dtype=np.float32)
    plain = ort.InferenceSession(
        tiny_cnn(size=16).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    s = ExplainSession(model, batch_size=2)
    np.testing.assert_allclose(s.forward(x), plain.run(None, {"input": x})[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(OptionError):
        s.forward(np.zeros((1, 3, 15, 16), np.float32))


def test_forward_copy_falls_back_where_the_logits_need_control_flow(model: onnx.ModelProto) -> None:
    from gradtap.runtime.session import _forward_graph

    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    producer = next(n for n in graph.node if c.LOGITS in n.output)
    inner = onnx.helper.make_node("Identity", [producer.input[0]], ["logits/then"])
    other = onnx.helper.make_node("Identity", [producer.input[0]], ["logits/else"])
    branch = lambda node, name: onnx.helper.make_graph(  # noqa: E731
        [node], name, [], [onnx.helper.make_tensor_value_info(node.output[0], 1, None)]
    )
    flag = onnx.numpy_helper.from_array(np.array(True), "flag")
    graph.initializer.append(flag)
    producer.CopyFrom(
        onnx.helper.make_node(
            "If",
            ["flag"],
            [c.LOGITS],
            then_branch=branch(inner, "t"),
            else_branch=branch(other, "e"),
        )
    )
    assert _forward_graph(out) is None
    s = ExplainSession(out)
    x = RNG.random((2, 3, 16, 16), dtype=np.float32)
    np.testing.assert_array_equal(s.forward(x), s.logits(x))
