"""``gradtap explain --resume`` after a real interruption: a killed run and a Ctrl-C'd run.

Oracle: one uninterrupted run of the same job. The resumed folder must hold the same maps
byte for byte, every image exactly once per method in summary.json, and the rerun must have
skipped what the first run finished (it computed only the rest).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from gradtap.cli.main import cli
from gradtap.cli.resume import JOURNAL
from tests.cli.photoset import photo_folder, tiny_model

N = 40
METHODS = "gradcam,saliency"


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    photos = root / "photos"
    photo_folder(photos, N, side=96)
    model = tiny_model(root)
    reference = root / "reference"
    result = CliRunner().invoke(cli, args(model, photos, reference))
    assert result.exit_code == 0, result.output
    return model, photos, reference


def args(model: Path, photos: Path, out: Path, formats: str = "npy,panel") -> list[str]:
    # panel pictures are slow to draw: the run lasts long enough to be stopped part way
    return ["explain", str(photos), "-M", str(model), "-m", METHODS, "-b", "2",
            "--format", formats, "-o", str(out), "--resume"]  # fmt: skip


def interrupt(model: Path, photos: Path, out: Path, sig: int) -> int:
    """Start the job in a process; send ``sig`` once a few chunks are on record."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradtap.cli", *args(model, photos, out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    journal = out / JOURNAL
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 3:
            proc.send_signal(sig)
            break
        time.sleep(0.01)
    try:
        proc.wait(timeout=60)
    finally:
        proc.kill()
    return proc.returncode


def maps(folder: Path) -> dict[str, bytes]:
    # a SIGKILLed run may leave its hidden temporary file behind: not a result
    found = sorted(p for p in folder.rglob("*.npy") if not p.name.startswith("."))
    return {str(p.relative_to(folder)): p.read_bytes() for p in found}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["killed", "ctrl-c"])
def test_resume_after_interruption(job: tuple[Path, Path, Path], tmp_path: Path, sig: int) -> None:
    model, photos, reference = job
    out = tmp_path / "out"
    code = interrupt(model, photos, out, sig)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 130), code
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    assert 0 < len(before) < 2 * N, "the run was stopped part way"
    result = CliRunner().invoke(cli, [*args(model, photos, out), "--json"])
    assert result.exit_code == 0, result.output
    done = json.loads(result.stdout)["options"]["resumed"]
    assert 0 < done < N
    # the images done before were skipped: their maps are the very files the first run wrote
    kept = {p.parent.name for p, t in before.items() if p.stat().st_mtime_ns == t}
    assert len(kept) >= done
    assert maps(out) == maps(reference)
    summary = json.loads((out / "summary.json").read_text())
    keys = [(i["group"], i["method"]) for i in summary["items"]]
    assert sorted(keys) == sorted((f"img{k:03d}", m) for k in range(N) for m in METHODS.split(","))
    assert not (out / JOURNAL).exists()  # summary.json holds it all now


def test_resume_skips_nothing_of_another_job(job: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model, photos, reference = job
    out = tmp_path / "out"
    runner = CliRunner()
    first = runner.invoke(cli, [*args(model, photos, out, "npy"), "-t", "dog", "--json"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(cli, [*args(model, photos, out, "npy"), "-t", "dog", "--json"])
    assert json.loads(again.stdout)["options"]["resumed"] == N
    assert json.loads(again.stdout)["items"] == []
    other = runner.invoke(cli, [*args(model, photos, out, "npy"), "-t", "cat", "--json"])
    record = json.loads(other.stdout)
    assert record["options"]["resumed"] == 0 and len(record["items"]) == 2 * N
    assert {i["target"] for i in record["items"]} == {0}
