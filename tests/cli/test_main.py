"""The gradtap group and the model commands (export, augment, info): outputs and error paths."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import Result
from onnx import helper

from gradtap.export.graph.augment import augment
from gradtap.runtime import contract as c
from tests.conftest import invoke
from tests.graphs import controls, tiny_cnn, with_defaults

LABELS = ["cat", "dog", "bird"]
COMMANDS = ("export", "augment", "info", "explain", "attack", "visualize", "localize")


@pytest.fixture(scope="module")
def forward(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny.onnx"
    onnx.save(tiny_cnn(size=16), str(path))
    return path


@pytest.fixture(scope="module")
def augmented(forward: Path) -> Path:
    path = forward.with_name("tiny.gradtap.onnx")
    onnx.save(augment(onnx.load(str(forward)), labels=LABELS), str(path))
    return path


def assert_clean_error(result: Result, code: int, *needles: str) -> None:
    """Exit code, no traceback, and the message names what went wrong."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    for needle in needles:
        assert needle in result.output, result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str) -> None:
    for flag in ("-h", "--help"):
        result = invoke(command, flag)
        assert result.exit_code == 0, result.output
        assert "Example:" in result.output and f"gradtap {command}" in result.output


def test_group_help_lists_commands_and_exit_codes() -> None:
    result = invoke("-h")
    assert result.exit_code == 0
    assert all(cmd in result.output for cmd in COMMANDS)
    assert "Exit codes: 0" in result.output


def test_unknown_command_and_option_are_usage_errors() -> None:
    assert invoke("nonsense").exit_code == 2
    assert invoke("info", "--bogus").exit_code == 2
    assert invoke("--threads", "0", "info", "-h").exit_code == 2


# ----- info -----


def test_info_json_reports_the_contract(augmented: Path) -> None:
    result = invoke("info", augmented, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    proto = onnx.load(str(augmented))
    assert [o["name"] for o in data["outputs"]] == [o.name for o in proto.graph.output]
    assert [i["name"] for i in data["inputs"]] == [n for n in c.INPUTS if n != c.TAP_SCALE]
    assert data["augmented"] and data["contract_version"] == c.CONTRACT_VERSION
    assert data["taps"] == {"features": "features"} and data["default_tap"] == "features"
    assert data["labels"] == {"count": 3, "first": LABELS}
    assert data["relu_rules"] == c.RELU_RULES  # the shipped graph: no LRP walk (--lrp adds it)
    assert data["providers"] == ort.get_available_providers()
    shapes = {o["name"]: o["shape"] for o in data["outputs"]}
    assert shapes["tap/features"] == ["batch", 6, 8, 8]
    # empty when not computed: declared rank 4 with dimensions of its own
    assert shapes[c.GRAD_INPUT] == [f"{c.GRAD_INPUT}:{k}" for k in range(4)]


def test_info_text_explains_every_output(augmented: Path) -> None:
    result = invoke("info", augmented)
    assert result.exit_code == 0
    for line in ("grad/tap/features", "d sum(seed * logits) / d input", "0 plain, 1 guided"):
        assert line in result.output
    assert "labels    3  (cat, dog, bird" in result.output


def test_info_on_a_forward_graph_says_how_to_augment(forward: Path) -> None:
    result = invoke("info", forward)
    assert result.exit_code == 0
    assert "not augmented" in result.output and "gradtap augment" in result.output


def test_info_on_a_non_onnx_file_is_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 definitely not protobuf" * 10)
    result = invoke("info", junk)
    assert_clean_error(result, 1, "junk.onnx", "not an ONNX model")
    assert len(result.output.strip().splitlines()) == 1
    assert_clean_error(invoke("info", tmp_path / "missing.onnx"), 2, "does not exist")


# ----- augment -----


def test_augment_list_taps_marks_the_default(forward: Path) -> None:
    result = invoke("augment", forward, "--list-taps")
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == ["c1", "r1", "p1", "c2", "features", "gap"]
    assert lines[4].endswith("<- default")


def test_augment_writes_a_working_graph_with_normalisation(forward: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\n")
    dst = tmp_path / "out.gradtap.onnx"
    args = ["augment", forward, "-o", dst, "--tap", "c2=conv2", "--tap", "features"]
    result = invoke(*args, "--mean", "0.5,0.25,0", "--std", "0.5,0.5,2", "--labels", labels)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(dst)
    model = onnx.load(str(dst))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta[c.META_TAPS]) == {"conv2": "c2", "features": "features"}
    assert json.loads(meta[c.META_LABELS]) == ["a", "b", "c"]
    # oracle: the augmented logits at x equal the forward graph's at (x - mean) / std
    x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    mean = np.array([0.5, 0.25, 0], np.float32).reshape(1, 3, 1, 1)
    std = np.array([0.5, 0.5, 2], np.float32).reshape(1, 3, 1, 1)
    plain = ort.InferenceSession(str(forward)).run(None, {"input": (x - mean) / std})[0]
    seed = np.zeros((2, 3), np.float32)
    sess = ort.InferenceSession(str(dst))
    feeds = {c.INPUT: x, c.SEED: seed, **controls(onnx.load(str(dst)))}
    ours = sess.run([c.LOGITS], with_defaults(sess, feeds))[0]
    np.testing.assert_allclose(ours, plain, rtol=1e-5, atol=1e-5)


def test_augment_default_output_name_and_no_overwrite(forward: Path, tmp_path: Path) -> None:
    src = tmp_path / "net.onnx"
    src.write_bytes(forward.read_bytes())
    assert invoke("augment", src).exit_code == 0
    dst = tmp_path / "net.gradtap.onnx"
    before = dst.read_bytes()
    assert_clean_error(invoke("augment", src), 1, "exists", "--overwrite")
    assert dst.read_bytes() == before
    assert invoke("augment", src, "--overwrite").exit_code == 0


def test_augment_rejects_bad_options(forward: Path, tmp_path: Path) -> None:
    out = ["-o", tmp_path / "x.onnx"]
    assert_clean_error(invoke("augment", forward, *out, "--mean", "124,117,104"), 2, "0-255")
    assert_clean_error(invoke("augment", forward, *out, "--std", "0.2,0"), 2, "three numbers")
    assert_clean_error(invoke("augment", forward, *out, "--std", "0.2,0,0.1"), 2, "> 0")
    assert_clean_error(invoke("augment", forward, *out, "--tap", "nope"), 2, "'nope'", "features")
    assert_clean_error(invoke("augment", forward, *out, "--logits", "zzz"), 2, "'zzz'")
    assert not (tmp_path / "x.onnx").exists()


def test_augment_lists_every_unsupported_op(tmp_path: Path) -> None:
    model = tiny_cnn(size=16)
    nodes = list(model.graph.node)  # ... features -> Sin -> Cos -> GlobalAveragePool ...
    gap = next(k for k, n in enumerate(nodes) if n.op_type == "GlobalAveragePool")
    nodes[gap].input[0] = "cos_out"
    nodes[gap:gap] = [
        helper.make_node("Sin", ["features"], ["sin_out"], name="the_sin"),
        helper.make_node("Cos", ["sin_out"], ["cos_out"], name="the_cos"),
    ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    src = tmp_path / "sin.onnx"
    onnx.save(model, str(src))
    result = invoke("augment", src, "--tap", "features")
    assert_clean_error(result, 1, "Sin", "Cos", "the_sin", "the_cos")
    assert not (tmp_path / "sin.gradtap.onnx").exists()
    assert len(result.output.strip().splitlines()) == 1


def test_augment_refuses_an_already_augmented_graph(augmented: Path, tmp_path: Path) -> None:
    result = invoke("augment", augmented, "-o", tmp_path / "again.onnx")
    assert_clean_error(result, 1, "already augmented")


# ----- export -----


def test_export_unknown_name_is_a_usage_error() -> None:
    assert_clean_error(invoke("export", "alexnet"), 2, "smallcnn")


def test_export_without_torch_says_which_extra_to_install(tmp_path: Path) -> None:
    probe = textwrap.dedent(
        """
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"torch", "torchvision"}:
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
                return None

        sys.meta_path.insert(0, NoTorch())
        from gradtap.cli.main import cli
        cli(["export", "smallcnn", "-o", sys.argv[1]])
        """
    )
    dst = tmp_path / "s.gradtap.onnx"
    done = subprocess.run(
        [sys.executable, "-c", probe, str(dst)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert "pip install 'gradtap[export]'" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not dst.exists()


@pytest.mark.slow
def test_export_smallcnn_writes_an_augmented_graph(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    dst = tmp_path / "small.gradtap.onnx"
    result = invoke("export", "smallcnn", "-o", dst)
    assert result.exit_code == 0, result.output
    assert "random weights" in result.output
    meta = {p.key: p.value for p in onnx.load(str(dst)).metadata_props}
    assert meta[c.META_AUGMENTED] == "1" and meta[c.META_NAME] == "smallcnn"
    assert list(tmp_path.iterdir()) == [dst]  # no forward or temporary files left behind
    assert_clean_error(invoke("export", "smallcnn", "-o", dst), 1, "exists")
    bad = invoke("export", "smallcnn", "-o", tmp_path / "b.onnx", "-w", tmp_path / "none.pth")
    assert_clean_error(bad, 2, "none.pth")
