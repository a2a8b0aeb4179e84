"""``--engine ray`` usage errors come before Ray starts: one line, exit 2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from click.testing import CliRunner

from gradtap.cli.main import cli
from tests.cli.photoset import photo_folder, tiny_model


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("rayopts")
    photo_folder(root / "photos", 2)
    return tiny_model(root), root / "photos"


def explain(job: tuple[Path, Path], out: Path, *extra: str) -> tuple[int, str]:
    model, photos = job
    args = ["explain", str(photos), "-M", str(model), "-o", str(out), "--engine", "ray", *extra]
    result = CliRunner().invoke(cli, args)
    return result.exit_code, result.output


def test_ray_missing_says_how_to_install(
    job: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    code, output = explain(job, tmp_path / "out")
    assert code == 2 and "pip install 'gradtap[ray]'" in output and "Traceback" not in output


def test_resume_and_an_existing_table_are_refused(job: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("ray")
    code, output = explain(job, tmp_path / "out", "--resume")
    assert code == 2 and "--engine local only" in output
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "out" / "results.parquet").write_bytes(b"")
    code, output = explain(job, tmp_path / "out")
    assert code == 2 and "--overwrite" in output


def test_image_list_file(job: tuple[Path, Path], tmp_path: Path) -> None:
    model, photos = job
    listing = tmp_path / "list.txt"
    names = sorted(photos.glob("*"))
    listing.write_text(f"# two photos\n{names[0]}\n\n{names[1]}\n")
    args = [
        "explain",
        f"@{listing}",
        "-M",
        str(model),
        "--format",
        "npy",
        "-o",
        str(tmp_path / "o"),
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.parent.name for p in (tmp_path / "o").rglob("*.npy")) == [n.stem for n in names]
    missing = CliRunner().invoke(cli, ["explain", f"@{tmp_path / 'nope.txt'}", "-M", str(model)])
    assert missing.exit_code == 2 and "nope.txt" in missing.output
