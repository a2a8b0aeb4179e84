"""The CLI on bad input and long batches: one line per problem, exit codes, nothing lost or half-written.

Exit codes: 0 all good, 1 some inputs failed, 2 usage, 130 interrupted. Every test also checks
that no temporary file is left and that refused runs write nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from PIL import Image, ImageOps

import gradtap.runtime.image.read as images
from gradtap.cli.main import cli
from tests import corpus
from tests.graphs import tiny_cnn

BAD_IN_FOLDER = [c for c in corpus.BAD if c.name != "folder.png"]  # a subfolder is skipped


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return corpus.augmented_model(tmp_path_factory.mktemp("model") / "tiny.gradtap.onnx")


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return corpus.write_images(tmp_path_factory.mktemp("photo"), corpus.GOOD[:1])["photo.png"]


@pytest.fixture(autouse=True)
def _no_model_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRADTAP_MODEL", raising=False)


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


def errors(result: Result) -> list[str]:
    return [ln for ln in result.stderr.splitlines() if ln.startswith("gradtap: error:")]


def last_run(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text("utf-8"))["runs"][-1]


def results(out: Path) -> list[dict]:
    """The summary items of the last run's results, in order."""
    summary = json.loads((out / "summary.json").read_text("utf-8"))
    items = {i["key"]: i for i in summary["items"]}
    return [items[key] for key in summary["runs"][-1]["items"]]


def done(out: Path) -> list[str]:
    """The source image of every result of the last run, in order."""
    groups = json.loads((out / "summary.json").read_text("utf-8"))["groups"]
    return [groups[i["group"]]["source"] for i in results(out)]


def assert_no_temp_files(folder: Path) -> None:
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name], "temporary files left"


# ----- a folder of everything -----


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mixed") / "photos"
    corpus.write_images(folder, corpus.GOOD + corpus.BAD)
    (folder / "notes.txt").write_text("not a picture")
    (folder / "sub").mkdir()
    os.symlink(folder, folder / "sub" / "up")  # a folder loop
    corpus.write_images(folder / "sub", corpus.GOOD[1:2])
    return folder


def test_a_batch_processes_every_good_file_and_lists_every_bad_one(
    mixed: Path, model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = invoke("explain", mixed, "-M", model, "-o", out)
    assert result.exit_code == 1 and "Traceback" not in result.output
    run = last_run(out)
    assert sorted(done(out)) == sorted(str(mixed / c.name) for c in corpus.GOOD)
    assert {f["input"] for f in run["failures"]} == {str(mixed / c.name) for c in BAD_IN_FOLDER}
    lines = errors(result)
    assert len(lines) == len(BAD_IN_FOLDER)  # one line each, naming the file and the problem
    for case in BAD_IN_FOLDER:
        assert sum(str(mixed / case.name) in ln and case.error in ln for ln in lines) == 1, case
    skipped = {s["input"]: s["reason"] for s in run["skipped"]}
    assert skipped == {
        str(mixed / "notes.txt"): "not an image file name",
        str(mixed / "sub"): "a folder, give -r to include subfolders",
        str(mixed / "folder.png"): "a folder, give -r to include subfolders",
    }
    assert "gradtap: note: skipped 3 entries:" in result.stderr and "notes.txt" in result.stderr
    with Image.open(out / "strip" / "gradcam.panel.png") as strip:  # 1 x 3000: letterboxed
        assert strip.size[0] < 4000
    assert_no_temp_files(out)


@pytest.mark.parametrize("how", ["-r", "glob"])
def test_folder_loops_terminate_and_are_reported(
    mixed: Path, model: Path, tmp_path: Path, how: str
) -> None:
    args = [mixed, "-r"] if how == "-r" else [f"{mixed}/**/*.png"]
    out = tmp_path / "out"
    result = invoke("explain", *args, "-M", model, "-o", out, "--format", "npy")
    assert result.exit_code == 1
    run = last_run(out)
    expected = [str(mixed / c.name) for c in corpus.GOOD]
    if how == "-r":
        expected.append(str(mixed / "sub" / "photo.jpg"))
    else:
        expected = [e for e in expected if e.endswith(".png")]
    assert sorted(done(out)) == sorted(expected)  # each once, none through sub/up/...
    assert {"input": str(mixed / "sub" / "up"), "reason": "a symlinked folder, not followed"} in (
        run["skipped"]
    )
    assert any("loop.png' is a symlink loop" in ln for ln in errors(result))


def test_exif_rotated_photos_are_explained_upright(model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    paths = corpus.write_images(folder, [c for c in corpus.GOOD if c.name == "rotated.jpg"])
    with Image.open(paths["rotated.jpg"]) as img:
        ImageOps.exif_transpose(img).save(folder / "upright.png")  # oracle: Pillow's rotation
        img.save(folder / "stored.png")  # the pixels as stored, unrotated
    out = tmp_path / "out"
    result = invoke("explain", folder, "-M", model, "-o", out, "--format", "npy", "-m", "saliency")
    assert result.exit_code == 0, result.output
    maps = {n: np.load(out / n / "saliency.npy") for n in ("rotated", "upright", "stored")}
    scale = np.abs(maps["upright"]).max()
    # gradtap rotates before resizing, the oracle PNG was rotated by Pillow then re-encoded: the
    # maps differ by resampling, so the bound is loose but an unrotated map misses it (> 0.3)
    np.testing.assert_allclose(maps["rotated"], maps["upright"], atol=0.15 * scale)
    assert np.abs(maps["rotated"] - maps["stored"]).max() > 0.3 * scale
    groups = json.loads((out / "summary.json").read_text())["groups"]
    assert groups["rotated"]["size"] == list(corpus.PHOTO_HW[::-1])
    assert Image.open(out / "rotated" / "input.png").size == corpus.PHOTO_HW  # (W, H) = rotated


def test_when_everything_fails_the_summary_still_lists_it(model: Path, tmp_path: Path) -> None:
    bad = corpus.write_images(tmp_path / "in", corpus.BAD[:2])
    (tmp_path / "in" / "notes.txt").write_text("x")
    out = tmp_path / "out"
    result = invoke("explain", *bad.values(), tmp_path / "in" / "notes.txt", "-M", model, "-o", out)
    assert result.exit_code == 1 and len(errors(result)) == 3
    assert len(last_run(out)["failures"]) == 3 and not list(out.rglob("*.png"))


# ----- the pixel limit -----


@pytest.mark.parametrize("command", ["explain", "attack", "localize"])
def test_max_pixels_refuses_before_decoding(
    command: str, model: Path, photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(images, "decode", lambda *a: pytest.fail("the decoder was reached"))
    out = tmp_path / "out"
    result = invoke(command, photo, "-M", model, "--max-pixels", "959", "-o", out)
    assert result.exit_code == 1
    assert errors(result) == [
        f"gradtap: error: image {str(photo)!r} is 40x24 pixels, over the limit of 959"
    ]
    assert not list(out.rglob("*.png"))
    assert invoke(command, photo, "-M", model, "--max-pixels", "0", "-o", out).exit_code == 2


def test_max_pixels_on_visualize_init(model: Path, photo: Path, tmp_path: Path) -> None:
    args = ["visualize", "-M", model, "-c", "0", "--steps", "1", "-o", tmp_path / "out"]
    result = invoke(*args, "--init", photo, "--max-pixels", "100")
    assert (
        result.exit_code == 2
        and "--init" in result.output
        and "over the limit of 100" in result.output
    )
    assert invoke(*args, "--init", tmp_path).exit_code == 2  # a folder is not an image file
    assert not (tmp_path / "out").exists()


# ----- arguments -----


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["explain", "-t", "7"], "--target: target class 7 out of range [0, 2]"),
        (["explain", "-t", "-1"], "--target: target class -1 out of range [0, 2]"),
        (["explain", "-t", "zebra"], "--target: unknown class name 'zebra'"),
        (["attack", "--eps", "-0.1"], "'--eps': -0.1 is not in the range"),
        (["attack", "--eps", "0"], "'--eps': 0.0 is not in the range"),
        (["attack", "--steps", "0"], "'--steps': 0 is not in the range x>=1"),
        (["attack", "--steps", "-3"], "'--steps': -3 is not in the range x>=1"),
        (["attack", "--steps", "5"], "--steps > 1 (iterative fooling) needs -t/--target"),
        (["attack", "-t", "9"], "--target: target class 9 out of range"),
        (["localize", "-t", "cow"], "--target: unknown class name 'cow'"),
    ],
)
def test_bad_arguments_are_usage_errors(
    args: list[str], needle: str, model: Path, photo: Path, tmp_path: Path
) -> None:
    result = invoke(*args, photo, "-M", model, "-o", tmp_path / "out")
    assert result.exit_code == 2 and needle in result.output, result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("steps", ["0", "-2"])
def test_visualize_steps_and_classes(model: Path, tmp_path: Path, steps: str) -> None:
    base = ["visualize", "-M", model, "-o", tmp_path / "out"]
    assert "'--steps'" in invoke(*base, "-c", "0", "--steps", steps).output
    assert "--target: target class 9 out of range" in invoke(*base, "-c", "9").output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["explain", "attack", "localize", "visualize"])
def test_output_folder_problems_are_usage_errors(
    command: str, model: Path, photo: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("keep me")
    args = [photo] if command != "visualize" else ["-c", "0"]
    under = invoke(command, *args, "-M", model, "-o", blocker / "out")
    assert (
        under.exit_code == 2
        and f"output folder {str(blocker / 'out')!r} is not writable" in under.output
    )
    onto = invoke(command, *args, "-M", model, "-o", blocker)
    assert onto.exit_code == 2 and "is a file" in onto.output
    assert blocker.read_text() == "keep me" and sorted(tmp_path.iterdir()) == [blocker]


def test_augment_output_problems(model: Path, tmp_path: Path) -> None:
    src = tmp_path / "fwd.onnx"
    src.write_bytes(tiny_cnn(size=corpus.SIZE).SerializeToString())
    missing = invoke("augment", src, "-o", tmp_path / "no" / "such" / "x.onnx")
    assert missing.exit_code == 2 and "--output: output folder" in missing.output
    assert invoke("augment", src, "-o", tmp_path).exit_code == 2  # a folder, not a file
    assert invoke("augment", src, "--labels", tmp_path).exit_code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fwd.onnx"]


@pytest.mark.parametrize("command", ["explain", "attack", "localize"])
def test_existing_outputs_need_overwrite(
    command: str, model: Path, photo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert invoke(command, photo, "-M", model, "-o", out).exit_code == 0
    files = {p: p.read_bytes() for p in (out / "photo").iterdir() if p.name != "input.png"}
    again = invoke(command, photo, "-M", model, "-o", out)
    assert again.exit_code == 1 and "exists; pass --overwrite to replace it" in again.stderr
    assert {p: p.read_bytes() for p in files} == files
    assert invoke(command, photo, "-M", model, "-o", out, "--overwrite").exit_code == 0
    assert_no_temp_files(out)


# ----- Ctrl-C -----


def interrupt_on(monkeypatch: pytest.MonkeyPatch, module: str, call: int) -> None:
    """Make ``module.write_image`` raise KeyboardInterrupt at its ``call``-th call."""
    import importlib

    target = importlib.import_module(module)
    real, calls = target.write_image, []

    def write(path, rgb):  # noqa: ANN001, ANN202
        calls.append(path)
        if len(calls) == call:
            Path(path).write_bytes(b"half a picture")  # as if the signal came mid-write
            raise KeyboardInterrupt
        return real(path, rgb)

    monkeypatch.setattr(target, "write_image", write)


def test_ctrl_c_mid_batch_keeps_what_finished(
    model: Path, photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        (folder / f"p{k}.png").write_bytes(photo.read_bytes())
    # writes per image: input.png, then the overlay and panel together; the 6th is p1's panel
    interrupt_on(monkeypatch, "gradtap.cli.commands.explain_run", 6)
    out = tmp_path / "out"
    result = invoke("explain", folder, "-M", model, "-o", out, "-b", "1")
    assert result.exit_code == 130
    assert result.stderr == f"gradtap: interrupted; 1 result(s) kept in {out} (summary.json)\n"
    run = last_run(out)
    assert run["interrupted"] and run["items"] == ["p0/gradcam.png"]
    assert (out / "p0" / "gradcam.panel.png").is_file()
    assert not (out / "p1" / "gradcam.png").exists()  # the group is written whole or not at all
    assert_no_temp_files(out)


def test_ctrl_c_in_attack_and_augment(
    model: Path, photo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    interrupt_on(monkeypatch, "gradtap.cli.commands.attack", 2)
    out = tmp_path / "out"
    result = invoke("attack", photo, "-M", model, "-o", out)
    assert result.exit_code == 130 and "gradtap: interrupted; 0 result(s)" in result.stderr
    assert not list(out.rglob("fgsm*")) and last_run(out)["interrupted"]
    assert_no_temp_files(out)

    def half_save(proto, path, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        Path(path).write_bytes(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx, "save", half_save)
    src = tmp_path / "m" / "fwd.onnx"
    src.parent.mkdir()
    src.write_bytes(tiny_cnn(size=corpus.SIZE).SerializeToString())
    result = invoke("augment", src)
    assert result.exit_code == 130 and result.stderr == "gradtap: interrupted\n"
    assert sorted(p.name for p in src.parent.iterdir()) == ["fwd.onnx"]


SLOW_CLI = textwrap.dedent(
    """
    import sys, time
    import gradtap.cli.commands.explain_run as run
    real = run.write_image
    def slow(path, rgb):
        time.sleep(0.1)
        return real(path, rgb)
    run.write_image = slow
    from gradtap.cli.main import cli
    cli(sys.argv[1:], prog_name="gradtap")
    """
)


def test_a_real_sigint_leaves_no_partial_files(model: Path, photo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(30):
        (folder / f"p{k:02d}.png").write_bytes(photo.read_bytes())
    out = tmp_path / "out"
    args = ["explain", str(folder), "-M", str(model), "-o", str(out), "-b", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, *args], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while not list(out.glob("*/gradcam.panel.png")) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.15)  # inside the next image's writes
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert len(stderr.splitlines()) == 1 and stderr.startswith("gradtap: interrupted; "), stderr
    run = last_run(out)
    assert run["interrupted"] and 1 <= len(run["items"]) < 30
    for item in results(out):
        assert all((out / f).is_file() for f in item["files"].values())
    kept = {p.parent.name for p in out.glob("*/gradcam*.png")}
    assert kept == {i["group"] for i in results(out)}  # no result outside the summary
    assert_no_temp_files(out)
