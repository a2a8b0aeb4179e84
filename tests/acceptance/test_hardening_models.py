"""Untrusted and unusable model files: one clear line, the right exit code, nothing written.

Every model here is built with onnx.helper into tmp_path. External-data references that leave
the model's folder are refused by gradtap itself before onnx or onnxruntime read anything, for
``augment``, ``info`` and every command that runs a model.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from onnx import TensorProto, helper

from gradtap.cli.main import cli
from gradtap.export.graph.augment import augment, load_model
from gradtap.runtime.errors import ModelError
from gradtap.runtime.modelfile import check_external_data, external_locations
from gradtap.runtime.session import ExplainSession
from tests import corpus
from tests.graphs import tiny_cnn

OUTSIDE = "points outside the model's folder; refused"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return corpus.write_images(tmp_path_factory.mktemp("img"), corpus.GOOD[:1])["photo.png"]


@pytest.fixture(scope="module")
def forward(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fwd") / "tiny.onnx"
    onnx.save(tiny_cnn(size=corpus.SIZE), str(path))
    return path


@pytest.fixture(autouse=True)
def _no_model_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRADTAP_MODEL", raising=False)


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line(result: Result, code: int, *needles: str) -> None:
    """The exit code, and one error line (after click's usage lines) holding every needle."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [ln for ln in result.output.splitlines() if "rror" in ln]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], result.output


def assert_nothing_written(folder: Path, *, besides: tuple[str, ...] = ()) -> None:
    left = sorted(p.name for p in folder.iterdir() if p.name not in besides)
    assert left == [], left


def explain(image: Path, model: Path, out: Path) -> Result:
    return invoke("explain", image, "-M", model, "-o", out)


# ----- not a model -----

JUNK = {
    "text.onnx": b"this is not a protobuf\n",
    "empty.onnx": b"",
    "picture.onnx": corpus.encode(".png", corpus.photo()),
    "truncated.onnx": tiny_cnn().SerializeToString()[:200],
}


@pytest.mark.parametrize("name", sorted(JUNK))
def test_not_an_onnx_file(tmp_path: Path, image: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(JUNK[name])
    why = "is empty (0 bytes)" if name == "empty.onnx" else "not an ONNX model"
    assert_one_line(invoke("info", path), 1, str(path), why)
    assert_one_line(invoke("augment", path, "-o", tmp_path / "out.onnx"), 1, str(path))
    result = explain(image, path, tmp_path / "out")
    assert_one_line(result, 1, str(path))
    assert "empty (0 bytes)" in result.output or "as an ONNX model" in result.output
    assert_nothing_written(tmp_path, besides=(name,))


def test_a_folder_given_as_the_model(tmp_path: Path, image: Path) -> None:
    assert_one_line(
        explain(image, tmp_path, tmp_path / "out"), 2, "--model", "is a folder, not an ONNX file"
    )
    assert_one_line(invoke("info", tmp_path), 2, "is a directory")
    assert_one_line(invoke("augment", tmp_path), 2, "is a directory")
    with pytest.raises(ModelError, match="is a folder, not an ONNX file"):
        ExplainSession(tmp_path)


def special_files(tmp_path: Path) -> dict[str, Path]:
    """What is not a regular file: a FIFO (reading it blocks forever), a device, a folder."""
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.onnx"
    folder.mkdir()
    return {"fifo": fifo, "device": Path("/dev/zero"), "folder": folder}


@pytest.mark.parametrize("kind", ["fifo", "device", "folder"])
def test_files_that_are_not_regular_are_refused_at_once(
    tmp_path: Path, image: Path, kind: str
) -> None:
    path = special_files(tmp_path)[kind]
    why = "is a folder" if kind == "folder" else "is not a file (a pipe, socket or device)"
    with pytest.raises(ModelError, match=re.escape(why)):
        ExplainSession(path)
    with pytest.raises(ModelError, match=re.escape(why)):
        load_model(path)
    assert_one_line(invoke("explain", image, "-M", path, "-o", tmp_path / "out"), 2, why)
    if kind != "folder":  # click refuses folders itself
        assert_one_line(invoke("info", path), 2, str(path), why)
        assert_one_line(invoke("augment", path, "-o", tmp_path / "o.onnx"), 2, why)
        labels = ["augment", corpus.augmented_model(tmp_path / "m.onnx"), "--labels", path]
        assert_one_line(invoke(*labels, "-o", tmp_path / "o.onnx"), 2, "--labels", why)


def test_a_huge_file_of_zeros_is_refused_in_well_under_a_second(tmp_path: Path) -> None:
    path = tmp_path / "zeros.onnx"
    with open(path, "wb") as f:  # sparse: 3 GB, no disk used
        f.truncate(3 * 10**9)
    started = time.perf_counter()
    with pytest.raises(ModelError, match="more than the 2 GiB an ONNX file can hold"):
        check_external_data(path)
    path2 = tmp_path / "zeros-1g.onnx"
    with open(path2, "wb") as f:
        f.truncate(10**9)
    with pytest.raises(ModelError, match="not even a protobuf file \\(field number 0\\)"):
        check_external_data(path2)
    assert time.perf_counter() - started < 0.5
    started = time.perf_counter()
    assert_one_line(invoke("info", path), 1, "more than the 2 GiB an ONNX file can hold")
    assert_one_line(invoke("augment", path2, "-o", tmp_path / "o.onnx"), 1, "field number 0")
    assert time.perf_counter() - started < 5  # two in-process commands, no scan of the bytes


def nested_if(levels: int) -> onnx.ModelProto:
    """A valid model whose output comes through ``levels`` If nodes, each inside the last."""
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    inner = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "leaf", [], [out])
    leaf = inner
    for k in range(levels):
        node = helper.make_node("If", ["c"], ["y"], then_branch=inner, else_branch=leaf)
        inner = helper.make_graph([node], f"level{k}", [], [out])
    graph = helper.make_graph(
        list(inner.node),
        "top",
        [
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1]),
        ],
        [out],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2)."""
    size, n = b"", len(payload)
    while True:
        size += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
        n >>= 7
        if not n:
            break
    return bytes([number << 3 | 2]) + size + payload


def nested_bytes(levels: int) -> bytes:
    """Model > graph > (node > attribute > graph) * levels, written on the wire directly (onnx's
    own serializer stops at protobuf's depth limit)."""
    graph = b""
    for _ in range(levels):
        graph = field(1, field(5, field(6, graph)))  # graph.node[0].attribute[0].g
    return field(7, graph)


def test_deeply_nested_if_models_are_refused_for_the_right_reason(tmp_path: Path) -> None:
    ok, deep = tmp_path / "ok.onnx", tmp_path / "deep.onnx"
    onnx.save(nested_if(25), str(ok))
    check_external_data(ok)  # 25 levels: a valid model, scanned fine
    deep.write_bytes(nested_bytes(40))
    with pytest.raises(ModelError, match="nest more than 100 levels deep"):
        check_external_data(deep)


# ----- ONNX, but not a gradtap explanation graph -----


def test_a_forward_graph_says_to_run_augment(forward: Path, image: Path, tmp_path: Path) -> None:
    for command in ("explain", "attack", "localize"):
        result = invoke(command, image, "-M", forward, "-o", tmp_path / "out")
        assert_one_line(result, 1, "not an augmented gradtap model", "gradtap augment", "tiny")
    result = invoke("visualize", "-M", forward, "-c", "0", "-o", tmp_path / "out")
    assert_one_line(result, 1, "not an augmented gradtap model", "gradtap augment")
    assert not (tmp_path / "out").exists()
    info = invoke("info", forward)
    assert (
        info.exit_code == 0 and "not augmented" in info.output and "gradtap augment" in info.output
    )


def test_a_graph_without_gradtap_metadata(tmp_path: Path, image: Path) -> None:
    model = augment(tiny_cnn(size=corpus.SIZE))
    del model.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(model, str(path))
    result = explain(image, path, tmp_path / "out")
    assert_one_line(result, 1, "no gradtap.augmented=1 metadata", "gradtap augment")
    assert not (tmp_path / "out").exists()
    assert "not augmented" in invoke("info", path).output


# ----- taps, ops and input shapes at augment -----


def test_unknown_tap_on_explain_and_augment(forward: Path, image: Path, tmp_path: Path) -> None:
    model = corpus.augmented_model(tmp_path / "tiny.gradtap.onnx")
    result = invoke("explain", image, "-M", model, "--tap", "nope", "-o", tmp_path / "out")
    assert_one_line(result, 2, "--tap", "unknown tap 'nope'; taps: ['features']")
    result = invoke("augment", forward, "--tap", "nope", "-o", tmp_path / "x.onnx")
    assert_one_line(result, 2, "--tap", "no tensor 'nope' in the graph", "'features'")
    result = invoke("augment", forward, "--logits", "zzz", "-o", tmp_path / "x.onnx")
    assert_one_line(result, 2, "--logits", "no tensor 'zzz' in the graph", "['logits']")
    assert_nothing_written(tmp_path, besides=("tiny.gradtap.onnx",))


def test_every_unsupported_op_is_listed_in_one_line(tmp_path: Path) -> None:
    model = tiny_cnn(size=corpus.SIZE)
    nodes = list(model.graph.node)  # ... features -> Sin -> Tan -> Cos -> GlobalAveragePool
    gap = next(k for k, n in enumerate(nodes) if n.op_type == "GlobalAveragePool")
    nodes[gap].input[0] = "c"
    nodes[gap:gap] = [
        helper.make_node("Sin", ["features"], ["s"], name="the_sin"),
        helper.make_node("Tan", ["s"], ["e"], name="the_tan"),
        helper.make_node("Cos", ["e"], ["c"], name="the_cos"),
    ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    src = tmp_path / "trig.onnx"
    onnx.save(model, str(src))
    result = invoke("augment", src, "--tap", "features")
    assert_one_line(result, 1, str(src), "3 op type(s)", "Cos: 1 node (the_cos)", "Tan", "Sin")
    assert "Supported: Abs, Add" in result.output
    assert_nothing_written(tmp_path, besides=("trig.onnx",))


@pytest.mark.parametrize("shape", [["N", 1, 16, 16], ["N", 4, 16, 16], ["N", 16, 16]])
def test_wrong_input_rank_or_channels(tmp_path: Path, shape: list) -> None:
    src = tmp_path / "odd.onnx"
    onnx.save(corpus.with_input_shape(shape), str(src))
    result = invoke("augment", src, "-o", tmp_path / "odd.gradtap.onnx")
    assert_one_line(result, 1, str(src), "image input 'input' must be [N, 3, H, W]")
    assert_nothing_written(tmp_path, besides=("odd.onnx",))


# ----- external data -----


def secret(folder: Path) -> Path:
    path = folder / "secret.bin"
    path.write_bytes(np.ones(6 * 4 * 3 * 3, np.float32).tobytes())
    return path


def escape_cases(tmp_path: Path) -> dict[str, str]:
    """Locations that leave ``tmp_path/models``: parent, absolute, and a symlink pointing out."""
    outside = secret(tmp_path)
    models = tmp_path / "models"
    models.mkdir()
    os.symlink(outside, models / "link.bin")
    return {"parent": "../secret.bin", "absolute": str(outside), "symlink": "link.bin"}


@pytest.mark.parametrize("how", ["parent", "absolute", "symlink", "constant"])
def test_external_data_outside_the_folder_is_refused_everywhere(
    tmp_path: Path, image: Path, how: str
) -> None:
    cases = escape_cases(tmp_path)
    location = cases.get(how, "../secret.bin")
    folder = tmp_path / "models"
    constant = how == "constant"
    fwd = corpus.with_external_data(tiny_cnn(size=corpus.SIZE), location, in_constant=constant)
    aug = augment(tiny_cnn(size=corpus.SIZE), labels=corpus.LABELS)
    aug = corpus.with_external_data(aug, location, in_constant=constant)
    (folder / "fwd.onnx").write_bytes(fwd.SerializeToString())
    (folder / "aug.gradtap.onnx").write_bytes(aug.SerializeToString())
    tensor = "k" if constant else "w2"
    needle = f"external data {location!r} of tensor {tensor!r} {OUTSIDE}"
    assert_one_line(invoke("augment", folder / "fwd.onnx", "-o", folder / "o.onnx"), 1, needle)
    assert_one_line(invoke("info", folder / "aug.gradtap.onnx"), 1, needle)
    assert_one_line(explain(image, folder / "aug.gradtap.onnx", tmp_path / "out"), 1, needle)
    assert not (folder / "o.onnx").exists() and not (tmp_path / "out").exists()


def test_external_data_inside_the_folder_is_used(tmp_path: Path, image: Path) -> None:
    folder = tmp_path / "models"
    (folder / "weights").mkdir(parents=True)
    onnx.save(
        tiny_cnn(size=corpus.SIZE),
        str(folder / "fwd.onnx"),
        save_as_external_data=True,
        location="weights/fwd.bin",
        size_threshold=0,
    )
    assert external_locations(folder / "fwd.onnx")
    result = invoke("augment", folder / "fwd.onnx", "-o", folder / "fwd.gradtap.onnx")
    assert result.exit_code == 0, result.output
    onnx.save(
        onnx.load(str(folder / "fwd.gradtap.onnx")),
        str(folder / "ext.gradtap.onnx"),
        save_as_external_data=True,
        location="ext.bin",
        size_threshold=256,  # the weights; small shape constants stay inline for onnxruntime
    )
    assert {n for n, _ in external_locations(folder / "ext.gradtap.onnx")} >= {"w1", "w2"}
    result = explain(image, folder / "ext.gradtap.onnx", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "photo" / "gradcam.png").is_file()


def test_in_memory_models_are_checked_against_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret(tmp_path)
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    aug = augment(tiny_cnn(size=corpus.SIZE), labels=corpus.LABELS)
    with pytest.raises(ModelError, match=f"tensor 'w2' {OUTSIDE}"):
        ExplainSession(corpus.with_external_data(aug, "../secret.bin"))


def test_load_model_refuses_a_graph_without_nodes(tmp_path: Path) -> None:
    path = tmp_path / "hollow.onnx"
    path.write_bytes(onnx.ModelProto(ir_version=8).SerializeToString())
    with pytest.raises(ValueError, match="not an ONNX model \\(no graph nodes\\)"):
        load_model(path)


# ----- non-finite outputs -----


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_logits_are_reported_and_nothing_is_drawn(
    tmp_path: Path, image: Path, value: float
) -> None:
    path = corpus.augmented_model(tmp_path / "bad.gradtap.onnx", corpus.with_bias(value))
    out = tmp_path / "out"
    for command in ("explain", "attack", "localize"):
        result = invoke(command, image, "-M", path, "-o", out)
        assert_one_line(result, 1, "NaN or Inf in ['logits']", str(image))
    assert not list(out.rglob("*.png")) and not list(out.rglob("*.npy"))


def test_non_finite_gradients_are_reported_and_nothing_is_drawn(
    tmp_path: Path, image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime checks every fetched output; here onnxruntime's gradient comes back NaN."""
    real = ExplainSession._run_chunked

    def poisoned(self, names, x, seed, extra):  # noqa: ANN001, ANN202
        arrays = real(self, names, x, seed, extra)
        pairs = zip(names, arrays, strict=True)
        return [np.full_like(a, np.nan) if n == "grad/input" else a for n, a in pairs]

    monkeypatch.setattr(ExplainSession, "_run_chunked", poisoned)
    path = corpus.augmented_model(tmp_path / "tiny.gradtap.onnx")
    out = tmp_path / "out"
    result = invoke("explain", image, "-M", path, "-m", "saliency", "-o", out)
    assert_one_line(result, 1, "NaN or Inf in ['grad/input']", str(image))
    assert not list(out.rglob("saliency*"))
    attack = invoke("attack", image, "-M", path, "-o", out)
    assert_one_line(attack, 1, "NaN or Inf in ['grad/input']", str(image))
    assert not list(out.rglob("fgsm*"))


# ----- external data that is not there, and what onnxruntime says -----


def data_file(kind: str, path: Path) -> None:
    """The external-data file of a model, in one of the ways it goes wrong (or right)."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "truncated":
        path.write_bytes(b"\0" * 10)


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("missing", "is missing (a model copied without its data file?)"),
        ("fifo", "is not a file (a pipe, socket or device)"),
        ("folder", "is a folder, not a file"),
        ("truncated", "has 10 bytes, the tensor's data ends at byte"),
    ],
)
def test_external_data_that_cannot_be_read_is_named_in_one_line(
    tmp_path: Path, image: Path, kind: str, why: str
) -> None:
    forward = tmp_path / "forward.onnx"
    onnx.save(corpus.with_external_data(tiny_cnn(size=corpus.SIZE), "w.bin"), str(forward))
    model = tmp_path / "model.onnx"
    explained = onnx.load(str(corpus.augmented_model(tmp_path / "full.onnx")))
    onnx.save(corpus.with_external_data(explained, "w.bin"), str(model))
    data_file(kind, tmp_path / "w.bin")
    needle = f"external data file 'w.bin' of tensor 'w2' {why}"
    assert_one_line(invoke("info", model), 1, needle)
    assert_one_line(invoke("augment", forward, "-o", tmp_path / "o.onnx"), 1, needle)
    result = explain(image, model, tmp_path / "out")
    assert_one_line(result, 1, needle)
    assert "\x1b" not in result.output and "::" not in result.output
    with pytest.raises(ModelError, match=re.escape(needle)):
        ExplainSession(model)


def test_onnxruntime_messages_lose_codes_and_cpp_signatures() -> None:
    from gradtap.runtime.modelfile import runtime_message

    raw = (
        "[ONNXRuntimeError] : 1 : FAIL : Load model failed: bad tensor "
        "onnxruntime::utils::UnpackTensor(const onnx::TensorProto&, const void*) [T = float]"
        "\nStacktrace:\n#0 0x7f onnxruntime::Foo()"
    )
    assert runtime_message(RuntimeError(raw)) == "Load model failed: bad tensor"
    assert len(runtime_message(RuntimeError("x" * 1000))) == 300


def test_onnxruntime_logs_nothing_by_itself(tmp_path: Path, image: Path) -> None:
    """A model onnxruntime refuses: its own (ANSI-coloured) log line stays out of stderr."""
    model = corpus.augmented_model(tmp_path / "m.onnx")
    proto = onnx.load(str(model))
    proto.graph.node[0].op_type = "NoSuchOp"
    onnx.save(proto, str(model))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradtap.cli",
            "explain",
            str(image),
            "-M",
            str(model),
            "-o",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "\x1b" not in proc.stderr and "NoSuchOp" in proc.stderr


@pytest.mark.parametrize(("ir", "opset"), [(3, 7), (4, 9), (6, 11)])
def test_augment_converts_old_opsets(tmp_path: Path, image: Path, ir: int, opset: int) -> None:
    old = tiny_cnn(size=corpus.SIZE)
    old.ir_version = ir
    del old.opset_import[:]
    old.opset_import.append(helper.make_opsetid("", opset))
    src, dst = tmp_path / "old.onnx", tmp_path / "old.gradtap.onnx"
    onnx.save(old, str(src))
    result = invoke("augment", src, "-o", dst)
    assert result.exit_code == 0, result.output
    assert explain(image, dst, tmp_path / "out").exit_code == 0


# ----- metadata that disagrees with the graph -----


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("input_size", "[100000, 100000]", "gradtap.input_size must be [H, W] with sides"),
        ("normalization", '"bright"', "gradtap.normalization must be a JSON object"),
        ("normalization", '{"std": [0, 1, 1]}', "gradtap.normalization 'std' must be 3"),
        ("labels", '["a", "b"]', "gradtap.labels has 2 names, but the logits have 3 classes"),
        ("resize", '{"policy": "shorter_side_center_crop", "size": 999999}', "gradtap.resize"),
    ],
)
def test_metadata_that_disagrees_is_named_by_key(
    tmp_path: Path, image: Path, key: str, value: str, needle: str
) -> None:
    proto = onnx.load(str(corpus.augmented_model(tmp_path / "good.onnx")))
    onnx.helper.set_model_props(
        proto, {**{p.key: p.value for p in proto.metadata_props}, f"gradtap.{key}": value}
    )
    model = tmp_path / "bad.onnx"
    onnx.save(proto, str(model))
    assert_one_line(invoke("info", model), 1, needle)
    assert_one_line(explain(image, model, tmp_path / "out"), 1, needle)
    if key == "labels":
        assert_one_line(invoke("attack", image, "-M", model, "-o", tmp_path / "o2"), 1, needle)
