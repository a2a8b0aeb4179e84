"""``gradtap explain`` end to end on real photos with a hand-checkable CNN, and its error paths.

Oracles: the plain forward graph in onnxruntime (logits, probabilities, the tap's feature map),
finite differences of its logits (saliency), and the hand-computed Grad-CAM of a GAP -> linear
head (dS_k/dA_c = W[k, c] / (h * w)).
"""

from __future__ import annotations

import dataclasses
import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner, Result
from onnx import helper, numpy_helper
from skimage import data

from gradtap.cli.main import cli
from gradtap.export.graph.augment import augment
from gradtap.runtime.image.geometry import to_input
from gradtap.runtime.image.read import load_image
from gradtap.runtime.methods.registry import METHODS
from gradtap.runtime.session import ExplainSession
from tests.conftest import invoke
from tests.graphs import tiny_cnn

LABELS = ["cat", "dog", "bird"]
SIZE = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    forward = tiny_cnn(size=SIZE)
    paths = {"forward": folder / "tiny.onnx", "augmented": folder / "tiny.gradtap.onnx"}
    onnx.save(forward, str(paths["forward"]))
    full = augment(forward, labels=LABELS, interventions=True, bias_gradients=True, lrp=True)
    onnx.save(full, str(paths["augmented"]))
    return paths


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = {"chelsea": folder / "chelsea.png", "coffee": folder / "coffee.jpg"}
    cv2.imwrite(str(paths["chelsea"]), cv2.cvtColor(data.chelsea(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(paths["coffee"]), cv2.cvtColor(data.coffee(), cv2.COLOR_RGB2BGR))
    return paths


def explain(*args: str | Path) -> Result:
    return invoke("explain", *args)


def forward_with_tap(path: Path) -> ort.InferenceSession:
    model = onnx.load(str(path))
    model.graph.output.append(helper.make_empty_tensor_value_info("features"))
    return ort.InferenceSession(model.SerializeToString())


def model_input(models: dict[str, Path], photo: Path) -> np.ndarray:
    info = ExplainSession(models["augmented"]).info
    return to_input(load_image(photo), info)[0]


def linked_files(html_text: str) -> list[str]:
    class Links(HTMLParser):
        found: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.found += [v for k, v in attrs if k in ("href", "src") and v]

    parser = Links()
    parser.found = []
    parser.feed(html_text)
    return parser.found


def assert_no_temp_files(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name], "temporary files left behind"


def test_real_photos_files_json_and_gallery(
    models: dict[str, Path], photos: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = explain(
        *photos.values(),
        "-M",
        models["augmented"],
        "-m",
        "saliency,gradcam",
        "-m",
        "guided_backprop",
        "--format",
        "overlay,heatmap,npy,panel",
        "-o",
        out,
        "--json",
    )
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    for stem in ("chelsea", "coffee"):
        for method in ("saliency", "gradcam", "guided_backprop"):
            for suffix in (".png", ".heatmap.png", ".npy", ".panel.png"):
                assert (out / stem / f"{method}{suffix}").is_file()
        overlay = cv2.imread(str(out / stem / "gradcam.png"))
        original = cv2.imread(str(photos[stem]))
        assert overlay.shape == original.shape  # pictures at the photo's own size
    # summary.json: the run, with top predictions equal to the forward graph's softmax
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"][-1]["model"]["name"] == "tiny"
    assert summary["runs"][-1]["options"]["methods"] == ["saliency", "gradcam", "guided_backprop"]
    plain = ort.InferenceSession(str(models["forward"]))
    for stem, photo in photos.items():
        logits = plain.run(None, {"input": model_input(models, photo)})[0][0].astype(np.float64)
        probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        preds = summary["groups"][stem]["predictions"]
        assert [p["class"] for p in preds] == list(np.argsort(-probs))
        np.testing.assert_allclose([p["prob"] for p in preds], np.sort(probs)[::-1], atol=1e-5)
        item = next(i for i in summary["items"] if i["group"] == stem and i["method"] == "gradcam")
        assert (
            item["target"] == int(np.argmax(probs))
            and item["target_label"] == LABELS[item["target"]]
        )
    assert len(record["items"]) == 6 and record["failures"] == []
    # the gallery links only to files that exist inside the folder, relatively
    page = (out / "index.html").read_text()
    links = linked_files(page)
    assert len([u for u in links if u.endswith(".panel.png")]) >= 6
    for url in links:
        if url.startswith("#"):  # the table of contents
            assert f'id="{url[1:]}"' in page
            continue
        parsed = urlparse(url)
        assert not parsed.scheme and not parsed.netloc and not url.startswith("/")
        assert (out / unquote(parsed.path)).resolve().is_file(), url
    assert "chelsea" in page and "top-3" in page
    assert_no_temp_files(out)


def test_gradcam_matches_the_hand_computed_map(
    models: dict[str, Path], photos: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    for k in (0, 2):
        result = explain(
            photos["chelsea"],
            "-M",
            models["augmented"],
            "-t",
            str(k),
            "--format",
            "npy",
            "-o",
            out,
            "--overwrite",
        )
        assert result.exit_code == 0, result.output
        x = model_input(models, photos["chelsea"])
        acts = forward_with_tap(models["forward"]).run(["features"], {"input": x})[0][0]
        fc_w = next(
            numpy_helper.to_array(t)
            for t in onnx.load(str(models["forward"])).graph.initializer
            if t.name == "fc_w"
        )
        h, w = acts.shape[1:]
        expected = np.maximum(np.einsum("c,chw->hw", fc_w[k] / (h * w), acts), 0)
        np.testing.assert_allclose(
            np.load(out / "chelsea" / "gradcam.npy"), expected, rtol=1e-4, atol=1e-6
        )


def test_saliency_matches_finite_differences(
    models: dict[str, Path], photos: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = explain(
        photos["coffee"],
        "-M",
        models["augmented"],
        "-m",
        "saliency",
        "-t",
        "dog",
        "--format",
        "npy",
        "-o",
        out,
    )
    assert result.exit_code == 0, result.output
    x = model_input(models, photos["coffee"])[0].astype(np.float64)
    eps = 1e-3
    basis = np.eye(x.size).reshape(-1, *x.shape) * eps
    batch = np.concatenate([x + basis, x - basis]).astype(np.float32)
    logits = ort.InferenceSession(str(models["forward"])).run(None, {"input": batch})[0][:, 1]
    grad = ((logits[: x.size] - logits[x.size :]) / (2 * eps)).reshape(x.shape)
    expected = np.abs(grad).max(axis=0)
    got = np.load(out / "coffee" / "saliency.npy")
    # central differences of float32 logits carry ~1e-3 relative error, and pixels whose ReLU
    # decision flips inside +-eps differ outright: judged on 98 % of pixels, not every one
    close = np.isclose(got, expected, rtol=2e-2, atol=2e-3 * np.abs(expected).max())
    assert close.mean() > 0.98, f"{close.mean():.3f} of pixels agree"


def test_top_k_targets_name_files_by_class(
    models: dict[str, Path], photos: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = explain(
        photos["chelsea"],
        "-M",
        models["augmented"],
        "-t",
        "top-2",
        "--format",
        "overlay",
        "-o",
        out,
    )
    assert result.exit_code == 0, result.output
    logits = ort.InferenceSession(str(models["forward"])).run(
        None, {"input": model_input(models, photos["chelsea"])}
    )[0][0]
    top2 = np.argsort(-logits)[:2]
    assert sorted(p.name for p in (out / "chelsea").glob("gradcam-*.png")) == sorted(
        f"gradcam-{k}.png" for k in top2
    )


def test_batch_size_does_not_change_results(
    models: dict[str, Path], photos: dict[str, Path], tmp_path: Path
) -> None:
    for b in ("1", "2"):
        result = explain(
            *photos.values(),
            "-M",
            models["augmented"],
            "-m",
            "guided_gradcam",
            "--format",
            "npy",
            "-b",
            b,
            "-o",
            tmp_path / b,
        )
        assert result.exit_code == 0, result.output
    for stem in photos:
        np.testing.assert_allclose(
            np.load(tmp_path / "1" / stem / "guided_gradcam.npy"),
            np.load(tmp_path / "2" / stem / "guided_gradcam.npy"),
            rtol=1e-5,
            atol=1e-7,
        )


def test_all_methods_write_every_map(
    models: dict[str, Path], photos: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = explain(
        photos["chelsea"],
        "-M",
        models["augmented"],
        "-m",
        "all",
        "--format",
        "npy",
        "--set",
        "samples=4",
        "--set",
        "steps=4",
        "-o",
        out,
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.stem for p in (out / "chelsea").glob("*.npy")) == sorted(METHODS)


def test_bad_files_fail_one_line_each_and_the_batch_goes_on(
    models: dict[str, Path], photos: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "trunc.png").write_bytes(photos["chelsea"].read_bytes()[:500])
    bad = [tmp_path / n for n in ("empty.png", "text.jpg", "trunc.png", "missing.png")]
    out = tmp_path / "out"
    result = explain(bad[0], photos["chelsea"], *bad[1:], "-M", models["augmented"], "-o", out)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("gradtap: error:")]
    assert len(errors) == 4
    for path in bad:  # a missing file is found while expanding arguments, so it comes first
        assert sum(path.name in line for line in errors) == 1
    assert (out / "chelsea" / "gradcam.png").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["chelsea", "index.html", "summary.json"]
    failures = json.loads((out / "summary.json").read_text())["runs"][-1]["failures"]
    assert [Path(f["input"]).name for f in failures] == [
        "missing.png",
        "empty.png",
        "text.jpg",
        "trunc.png",
    ]
    assert_no_temp_files(out)


def test_non_finite_logits_are_reported_not_drawn(tmp_path: Path, photos: dict[str, Path]) -> None:
    model = tiny_cnn(size=SIZE)
    for init in model.graph.initializer:
        if init.name == "fc_b":
            init.CopyFrom(numpy_helper.from_array(np.full(3, np.nan, np.float32), "fc_b"))
    path = tmp_path / "inf.gradtap.onnx"
    onnx.save(augment(model), str(path))
    out = tmp_path / "out"
    result = explain(photos["chelsea"], "-M", path, "-o", out)
    assert result.exit_code == 1
    assert "NaN or Inf" in result.stderr and "chelsea.png" in result.stderr
    assert not list(out.rglob("*.png"))


def test_existing_outputs_are_kept_without_overwrite(
    models: dict[str, Path], photos: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert explain(photos["chelsea"], "-M", models["augmented"], "-o", out).exit_code == 0
    target = out / "chelsea" / "gradcam.png"
    target.write_bytes(b"sentinel")
    again = explain(photos["chelsea"], "-M", models["augmented"], "-o", out)
    assert again.exit_code == 1 and "--overwrite" in again.stderr and str(target) in again.stderr
    assert target.read_bytes() == b"sentinel"
    assert (
        explain(photos["chelsea"], "-M", models["augmented"], "-o", out, "--overwrite").exit_code
        == 0
    )
    assert target.read_bytes()[:4] == b"\x89PNG"
    other = explain(photos["chelsea"], "-M", models["augmented"], "-m", "saliency", "-o", out)
    assert other.exit_code == 0  # a new method in the same folder is not an overwrite
    summary = json.loads((out / "summary.json").read_text())
    assert {i["method"] for i in summary["items"]} == {"gradcam", "saliency"}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-m", "gradcams"], "unknown method 'gradcams'"),
        (["-t", "7"], "out of range"),
        (["-t", "zebra"], "unknown class name 'zebra'"),
        (["--format", "gif"], "--format"),
        (["--set", "bogus=1"], "--set"),
        (["--tap", "layer9"], "layer9"),
        (["-b", "0"], "--batch-size"),
        (["--provider", "NoSuchExecutionProvider"], "NoSuchExecutionProvider"),
    ],
)
def test_usage_errors_exit_2(
    models: dict[str, Path], photos: dict[str, Path], tmp_path: Path, args: list[str], needle: str
) -> None:
    runner = CliRunner()
    model = ["-M", str(models["augmented"])]
    if args[0] == "--provider":
        result = runner.invoke(
            cli, [*args, "explain", str(photos["chelsea"]), *model, "-o", str(tmp_path)]
        )
    else:
        result = explain(photos["chelsea"], *model, *args, "-o", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_model_problems(models: dict[str, Path], photos: dict[str, Path], tmp_path: Path) -> None:
    no_model = explain(photos["chelsea"], "-o", tmp_path)
    assert no_model.exit_code == 2 and "--model" in no_model.output
    missing = explain(photos["chelsea"], "-M", tmp_path / "nope.gradtap.onnx")
    assert missing.exit_code == 2 and "does not exist" in missing.output
    plain = explain(photos["chelsea"], "-M", models["forward"], "-o", tmp_path)
    assert (
        plain.exit_code == 1
        and "not an augmented gradtap model" in plain.output
        and "gradtap augment" in plain.output
    )
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"garbage")
    assert explain(photos["chelsea"], "-M", junk).exit_code == 1
    assert explain("-M", models["augmented"]).exit_code == 2  # no images at all


def test_unwritable_output_folder(
    models: dict[str, Path], photos: dict[str, Path], tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = explain(photos["chelsea"], "-M", models["augmented"], "-o", blocker / "out")
    assert (
        result.exit_code == 2
        and "not writable" in result.output
        and str(blocker / "out") in result.output
    )


def test_folders_globs_and_colliding_stems(
    models: dict[str, Path], photos: dict[str, Path], tmp_path: Path
) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "cat.png").write_bytes(photos["chelsea"].read_bytes())
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    args = [tmp_path / "a", tmp_path / "b" / "*.png", "-M", models["augmented"], "-o", out]
    result = CliRunner().invoke(cli, ["-q", "explain", *map(str, args), "--format", "npy"])
    assert result.exit_code == 0, result.output
    assert (out / "cat" / "gradcam.npy").is_file() and (out / "cat-2" / "gradcam.npy").is_file()
    assert result.stderr == ""  # -q, and no progress bar without a terminal
    nothing = explain(str(tmp_path / "*.webp"), "-M", models["augmented"], "-o", out)
    assert nothing.exit_code == 1 and "matches no image files" in nothing.stderr


def test_a_failing_image_in_a_batch_is_isolated(
    models: dict[str, Path],
    photos: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gradtap.runtime.errors import NonFiniteError

    real = METHODS["gradcam"]
    bad_mean = float(model_input(models, photos["coffee"]).mean())

    def flaky(session, x, target=None, **options):  # noqa: ANN001, ANN202
        if any(np.isclose(float(xi.mean()), bad_mean, atol=1e-6) for xi in x):
            raise NonFiniteError("the model produced NaN or Inf in ['grad/tap/features']")
        return real(session, x, target, **options)

    monkeypatch.setitem(METHODS, "gradcam", dataclasses.replace(real, func=flaky))
    out = tmp_path / "out"
    result = explain(*photos.values(), "-M", models["augmented"], "-b", "2", "-o", out, "--json")
    assert result.exit_code == 1
    failures = json.loads(result.stdout)["failures"]
    assert [Path(f["input"]).name for f in failures] == ["coffee.jpg"]
    assert "NaN or Inf" in failures[0]["error"] and failures[0]["step"] == "gradcam"
    assert (out / "chelsea" / "gradcam.png").is_file() and not (
        out / "coffee" / "gradcam.png"
    ).exists()


def test_model_names_resolve_in_the_cache(
    models: dict[str, Path],
    photos: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("GRADTAP_CACHE", str(cache))
    missing = explain(photos["chelsea"], "-M", "resnet18", "-o", tmp_path / "out")
    assert missing.exit_code == 2 and "gradtap export resnet18" in missing.output
    for tag in ("mine_1234abcd", "random"):  # the random export is newer, the trained one wins
        (cache / f"resnet18-{tag}.gradtap.onnx").write_bytes(models["augmented"].read_bytes())
    monkeypatch.setenv("GRADTAP_MODEL", "resnet18")
    result = explain(photos["chelsea"], "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["model"]["file"].endswith(
        "resnet18-mine_1234abcd.gradtap.onnx"
    )


def test_unicode_and_space_paths(
    models: dict[str, Path], photos: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "mes photos"
    folder.mkdir()
    photo = folder / "chat tigr\u00e9 \u732b.png"
    photo.write_bytes(photos["chelsea"].read_bytes())
    out = tmp_path / "sortie \u00e9"
    result = explain(photo, "-M", models["augmented"], "-o", out)
    assert result.exit_code == 0, result.output
    assert (out / "chat_tigr\u00e9_\u732b" / "gradcam.panel.png").is_file()
    for url in linked_files((out / "index.html").read_text("utf-8")):
        assert (out / unquote(url)).is_file(), url


def count_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count fused onnxruntime calls (ExplainSession.run) made from now on."""
    calls: list[int] = []
    real = ExplainSession.run

    def counted(self, x, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(len(x))
        return real(self, x, *args, **kwargs)

    monkeypatch.setattr(ExplainSession, "run", counted)
    return calls


@pytest.mark.parametrize(
    ("targets", "per_method"),
    [
        ((), 1),  # the predicted class: predicted and explained in the same call
        (("-t", "dog"), 1),
        (("-t", "top-2"), 2),  # top-k needs the logits first, inside the method
    ],
)
def test_one_fused_call_per_method_and_chunk(
    models: dict[str, Path],
    photos: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    targets: tuple[str, ...],
    per_method: int,
) -> None:
    calls = count_runs(monkeypatch)
    methods = "saliency,gradcam,guided_backprop,cam"
    out = tmp_path / "out"
    result = explain(*photos.values(), "-M", models["augmented"], "-m", methods, *targets,
                     "-b", "2", "-o", out, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(calls) == 4 * per_method and set(calls) <= {2, 4}  # one chunk of 2 images
    record = json.loads(result.stdout)
    rows = 2 if targets[-1:] == ("top-2",) else 1
    assert len(record["items"]) == 2 * 4 * rows
    for group in record["groups"].values():  # predictions come from the methods' own calls
        assert len(group["predictions"]) == 3 and (out / group["input"]).is_file()


def test_every_registered_method_runs_with_all(
    models: dict[str, Path], photos: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = explain(photos["chelsea"], "-M", models["augmented"], "-m", "all", "-o", out,
                     "--set", "samples=2", "--set", "steps=2", "--format", "npy", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    done = {item["method"] for item in json.loads(result.stdout)["items"]}
    assert done == set(METHODS)
    for name, record in METHODS.items():
        raw = np.load(out / "chelsea" / f"{name}.npy")
        assert raw.ndim == (3 if record.output == "colour" else 2), name
        assert (raw.shape[0] == 3) == (record.output == "colour"), name


def test_only_the_requested_pictures_are_computed(
    models: dict[str, Path],
    photos: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gradtap.runtime.present.pictures as pictures

    drawn: list[str] = []
    for name in ("overlay_heatmap", "explanation_panel", "colorize"):
        real = getattr(pictures, name)
        monkeypatch.setattr(
            pictures, name, lambda *a, _n=name, _f=real, **k: (drawn.append(_n), _f(*a, **k))[1]
        )
    result = explain(photos["chelsea"], "-M", models["augmented"], "--format", "npy",
                     "-o", tmp_path / "a")  # fmt: skip
    assert result.exit_code == 0 and drawn == []
    result = explain(photos["chelsea"], "-M", models["augmented"], "--format", "heatmap",
                     "-o", tmp_path / "b")  # fmt: skip
    assert result.exit_code == 0 and drawn == ["colorize"]


def test_resample_torchvision_feeds_the_model_as_the_runtime_does(
    models: dict[str, Path], photos: dict[str, Path], tmp_path: Path
) -> None:
    from gradtap.runtime import methods

    session = ExplainSession(models["augmented"])
    maps = {}
    for mode in ("area", "torchvision"):
        out = tmp_path / mode
        result = explain(photos["coffee"], "-M", models["augmented"], "-m", "saliency",
                         "--resample", mode, "--format", "npy", "-o", out)  # fmt: skip
        assert result.exit_code == 0, result.output
        maps[mode] = np.load(out / "coffee" / "saliency.npy")
        x, _ = to_input(load_image(photos["coffee"]), session.info, resample=mode)
        np.testing.assert_allclose(maps[mode], methods.saliency(session, x).maps[0], rtol=1e-6)
    assert not np.allclose(maps["area"], maps["torchvision"])  # the filters differ
