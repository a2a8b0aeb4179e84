"""Runs that meet the real world: signals, two runs into one folder, reruns, full disks, odd
output folders, hostile file names, options that cannot work. Real subprocesses where it matters
(a real SIGTERM, two processes at once)."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gradtap.cli.main import cli
from gradtap.runtime import atomic
from tests import corpus

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return corpus.augmented_model(tmp_path_factory.mktemp("model") / "tiny.gradtap.onnx")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for i in range(12):
        path = folder / f"p{i:02d}.png"
        path.write_bytes(corpus.encode(".png", corpus.photo(seed=i)))
        paths.append(path)
    return paths


@pytest.fixture(autouse=True)
def _no_model_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRADTAP_MODEL", raising=False)


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def gradtap(*args: str | Path, **kw: object) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "GRADTAP_MODEL"}
    cmd = [sys.executable, "-m", "gradtap.cli", *map(str, args)]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT
    )


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if atomic.TEMP_MARK in p.name]


def error_lines(result: Result) -> list[str]:
    return [ln for ln in result.output.splitlines() if "error" in ln.lower()]


# ----- signals -----


@pytest.mark.slow
def test_sigterm_mid_batch_records_what_was_done_and_a_rerun_picks_it_up(
    model: Path, photos: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    args = ("explain", photos[0].parent, "-M", model, "-m", "all", "-o", out)
    proc = gradtap(*args)
    deadline = time.monotonic() + 60
    while not list(out.glob("p00/*.panel.png")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err  # 143, the shell's convention
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("gradtap: interrupted (SIGTERM); ")
    record = summary(out)
    run = record["runs"][-1]
    assert run["interrupted"] is True and run["signal"] == "SIGTERM", (run, err)
    done = {item["key"] for item in record["items"]}
    assert done and all((out / key).is_file() for key in done)
    assert (out / "index.html").is_file()
    assert not temp_files(out)

    rerun = gradtap(*args)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert "exists" not in err
    record = summary(out)
    assert done <= {item["key"] for item in record["items"]}
    assert len(record["items"]) == len(photos) * len(list(out.glob("p00/*.panel.png")))


def test_sighup_is_handled_like_sigterm(model: Path, photos: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = gradtap("explain", *photos, "-M", model, "-m", "all", "-o", out)
    deadline = time.monotonic() + 60
    while not (out / "p00").is_dir() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    # every method over every photo runs for many seconds: the signal lands mid-run
    assert proc.returncode != 0, "the run finished before the signal arrived"
    assert proc.returncode == 128 + signal.SIGHUP and "Traceback" not in err
    assert summary(out)["runs"][-1]["signal"] == "SIGHUP"
    assert not temp_files(out)


# ----- two runs into one folder -----


def test_two_processes_into_one_folder_lose_no_record(
    model: Path, photos: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    halves = [photos[:6], photos[6:]]
    procs = [gradtap("explain", *half, "-M", model, "-o", out) for half in halves]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    record = summary(out)
    assert len(record["runs"]) == 2
    groups = {item["group"] for item in record["items"]}
    assert groups == {p.stem for p in photos}
    assert not temp_files(out)


# ----- full disks -----


def test_a_full_disk_while_writing_a_picture_fails_that_image_only(
    model: Path, photos: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = atomic.write_bytes

    def write_bytes(dst: Path, data: bytes) -> None:
        if Path(dst).parent.name == "p01":
            with atomic.atomic_path(Path(dst)) as tmp:
                tmp.write_bytes(data[:10])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(dst, data)

    monkeypatch.setattr("gradtap.runtime.present.overlay.write_bytes", write_bytes)
    out = tmp_path / "out"
    result = invoke("explain", *photos[:3], "-M", model, "-o", out)
    assert result.exit_code == 1
    lines = error_lines(result)
    assert lines and all("No space left on device" in ln for ln in lines)
    assert all(str(out / "p01") in ln for ln in lines)
    groups = {item["group"] for item in summary(out)["items"]}
    assert groups == {"p00", "p02"}
    assert not temp_files(out)


def test_a_full_disk_while_writing_the_summary_is_one_line(
    model: Path, photos: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradtap.cli import outputs

    real = outputs.write_chunks

    def write_chunks(dst: Path, chunks: Iterable[str]) -> None:  # summary.json is streamed
        if Path(dst).name == "summary.json":
            with atomic.atomic_path(Path(dst)) as tmp:
                tmp.write_text(next(iter(chunks)))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(dst, chunks)

    monkeypatch.setattr(outputs, "write_chunks", write_chunks)
    out = tmp_path / "out"
    result = invoke("explain", photos[0], "-M", model, "-o", out)
    assert result.exit_code == 1
    assert error_lines(result) == [
        f"gradtap: error: cannot record this run: {out / 'summary.json'}: No space left on device"
    ]
    assert (out / "p00" / "gradcam.png").is_file()  # the results so far are kept
    assert not (out / "summary.json").exists() and not temp_files(out)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_the_atomic_helper_names_the_destination_on_a_real_failed_write(tmp_path: Path) -> None:
    dst = tmp_path / "x.png"
    os.symlink("/dev/full", tmp_path / "full")
    with pytest.raises(OSError, match="No space left on device") as caught:
        with atomic.atomic_path(dst) as tmp:
            with open(tmp_path / "full", "wb") as f:
                f.write(b"data")
                f.flush()
            tmp.write_bytes(b"x")
    assert caught.value.filename == str(dst)
    assert not dst.exists() and not temp_files(tmp_path)


# ----- odd entries in the output folder -----


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda out: (out / "summary.json").mkdir(), "summary.json' is a folder"),
        (lambda out: (out / "index.html").mkdir(), "index.html' is a folder"),
        (lambda out: (out / "summary.json").write_text("[1, 2]"), "a JSON list, not an object"),
        (
            lambda out: (out / "summary.json").write_text('{"schema": 1, "runs": {}}'),
            "'runs' is not a JSON list",
        ),
        (
            lambda out: (out / "summary.json").write_text(
                '{"schema": 1, "runs": [], "groups": {}, "items": [3]}'
            ),
            "an item without a 'key'",
        ),
    ],
)
def test_odd_entries_in_the_output_folder_are_one_usage_error(
    model: Path, photos: list[Path], tmp_path: Path, make, needle: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    make(out)
    result = invoke("explain", photos[0], "-M", model, "-o", out)
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith("Error: --out: ")
    assert needle in result.output and "Traceback" not in result.output
    assert not (out / "p00").exists()


def test_a_file_where_an_image_folder_goes_fails_that_image(
    model: Path, photos: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "p00").write_text("mine")
    result = invoke("explain", *photos[:2], "-M", model, "-o", out)
    assert result.exit_code == 1
    [line] = error_lines(result)
    assert line.endswith(f"{out / 'p00'}: a file is in the way of the output folder")
    assert (out / "p00").read_text() == "mine"
    assert {item["group"] for item in summary(out)["items"]} == {"p01"}


# ----- permissions -----


def test_every_output_file_gets_the_umasks_permissions(
    model: Path, photos: list[Path], tmp_path: Path
) -> None:
    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        assert (
            invoke(
                "explain",
                photos[0],
                "-M",
                model,
                "--format",
                "overlay,heatmap,npy,panel",
                "-o",
                out,
            ).exit_code
            == 0
        )
    finally:
        os.umask(old)
    files = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert {p.suffix for p in files} >= {".png", ".npy", ".json", ".html"}
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
    assert set(modes.values()) == {0o644}, modes


# ----- names -----


def test_control_characters_in_file_names_cannot_split_a_line(model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bad\nname.png").write_bytes(b"not a picture")
    (folder / "note\r\x1b[31m.txt").write_text("x")
    (folder / "ok.png").write_bytes(corpus.encode(".png", corpus.photo()))
    result = invoke("explain", folder, "-M", model, "-o", tmp_path / "out")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    error = [ln for ln in lines if ln.startswith("gradtap: error:")]
    assert len(error) == 1 and "bad\\nname.png" in error[0]
    note = [ln for ln in lines if ln.startswith("gradtap: note: skipped")]
    assert len(note) == 1 and "note\\r\\x1b[31m.txt" in note[0]
    assert all("\x1b" not in ln and "\r" not in ln for ln in lines)


# ----- options that cannot work -----


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("-t", "top-0"), "--target: top-k needs 1 <= k <= 3, got 0"),
        (("-t", "top-4"), "--target: top-k needs 1 <= k <= 3, got 4"),
        (("-m", "integrated_gradients", "--set", "steps=100000"), "needs steps <= 1024"),
        (("-m", "integrated_gradients", "--set", "steps=abc"), "steps must be an int >= 1"),
        (
            (
                "-m",
                "integrated_gradients",
                "--set",
                "rule=riemann_left",
                "--set",
                "steps=10000000000",
            ),
            "steps must be at most 100000",
        ),
        (("-m", "smoothgrad", "--set", "samples=1000000000"), "samples must be at most 100000"),
        (("-m", "smoothgrad", "--set", "noise=nan"), "'noise=nan': not a finite number"),
        (("-m", "smoothgrad", "--set", "noise=Infinity"), "not a finite number"),
    ],
)
def test_options_that_cannot_work_are_one_usage_error(
    model: Path, photos: list[Path], tmp_path: Path, args: tuple[str, ...], needle: str
) -> None:
    out = tmp_path / "out"
    result = invoke("explain", *photos[:3], "-M", model, *args, "-o", out)
    assert result.exit_code == 2
    assert needle in result.output.strip().splitlines()[-1]
    assert "Traceback" not in result.output and "gradtap: error" not in result.output


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "2"])
def test_attack_eps_must_be_a_finite_unit_value(
    model: Path, photos: list[Path], tmp_path: Path, value: str
) -> None:
    result = invoke("attack", *photos[:2], "-M", model, "--eps", value, "-o", tmp_path / "o")
    assert result.exit_code == 2
    assert "--eps" in result.output.strip().splitlines()[-1]


def test_threads_are_bounded(model: Path) -> None:
    from gradtap.cli.config import MAX_THREADS

    result = invoke("--threads", str(MAX_THREADS + 1), "info", model)
    assert result.exit_code == 2 and "--threads" in result.output
    assert invoke("--threads", str(MAX_THREADS), "info", model).exit_code == 0


def test_max_memory_refuses_images_whose_decoding_would_not_fit(
    model: Path, photos: list[Path], tmp_path: Path
) -> None:
    result = invoke("explain", photos[0], "-M", model, "--max-memory", "10K", "-o", tmp_path / "o")
    assert result.exit_code == 1
    assert "needs about" in error_lines(result)[0] and "over the memory limit" in result.output
    bad = invoke("explain", photos[0], "-M", model, "--max-memory", "lots", "-o", tmp_path / "o")
    assert bad.exit_code == 2 and "is not a size" in bad.output


@pytest.fixture(autouse=True)
def _memory_limit_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    from gradtap.runtime.image import read

    monkeypatch.setattr(read, "_MAX_MEMORY", list(read._MAX_MEMORY))


def test_the_summary_records_the_original_and_the_displayed_size(
    model: Path, tmp_path: Path
) -> None:
    path = tmp_path / "wide.png"
    path.write_bytes(corpus.encode(".png", corpus.photo(200, 300)))
    out = tmp_path / "out"
    assert invoke("explain", path, "-M", model, "--max-side", "120", "-o", out).exit_code == 0
    group = summary(out)["groups"]["wide"]
    assert group["size"] == [200, 300]  # [H, W] of the file
    assert group["display_size"] == [80, 120]  # the pictures' size
    assert corpus.cv2.imread(str(out / "wide" / "gradcam.png")).shape[:2] == (80, 120)


def test_a_model_level_problem_is_reported_once(photos: list[Path], tmp_path: Path) -> None:
    model = corpus.augmented_model(tmp_path / "nan.onnx", corpus.with_bias(float("nan")))
    out = tmp_path / "out"
    result = invoke("explain", *photos[:4], "-M", model, "-o", out)
    assert result.exit_code == 1
    assert error_lines(result) == [
        f"gradtap: error: {photos[0]}: the model produced NaN or Inf in ['logits']",
        "gradtap: error: 3 more images failed the same way (the model produced NaN or Inf in "
        "['logits']); all are listed in summary.json",
    ]
    assert len(summary(out)["runs"][-1]["failures"]) == 4


def test_failures_about_each_file_are_each_reported(tmp_path: Path, model: Path) -> None:
    empties = [tmp_path / f"e{i}.png" for i in range(3)]
    for path in empties:
        path.write_bytes(b"")
    result = invoke("explain", *empties, "-M", model, "-o", tmp_path / "out")
    assert [ln.split(": ", 2)[-1] for ln in error_lines(result)] == [
        f"image file {str(p)!r} is empty (0 bytes)" for p in empties
    ]
