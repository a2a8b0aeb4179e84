"""Untrusted and unusable model files: one clear line, the right exit code, nothing written.

Every model here is built with onnx.helper into tmp_path. External-data references that leave
the model's folder are refused by gradtap itself before onnx or onnxruntime read anything, for
``augment``, ``info`` and every command that runs a model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from onnx import helper

from gradtap.cli.main import cli
from gradtap.export.graph.augment import augment, load_model
from gradtap.runtime.errors import ModelError
from gradtap.runtime.modelfile import external_locations
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
    assert_one_line(invoke("info", path), 1, str(path), "not an ONNX model")
    assert_one_line(invoke("augment", path, "-o", tmp_path / "out.onnx"), 1, str(path))
    result = explain(image, path, tmp_path / "out")
    assert_one_line(result, 1, str(path))
    assert "empty (0 bytes)" in result.output or "as an ONNX model" in result.output
    assert_nothing_written(tmp_path, besides=(name,))


def test_a_folder_given_as_the_model(tmp_path: Path, image: Path) -> None:
    assert_one_line(explain(image, tmp_path, tmp_path / "out"), 2, "--model", "is not a file")
    assert_one_line(invoke("info", tmp_path), 2, "is a directory")
    assert_one_line(invoke("augment", tmp_path), 2, "is a directory")
    with pytest.raises(ModelError, match="is a folder, not an ONNX file"):
        ExplainSession(tmp_path)


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
