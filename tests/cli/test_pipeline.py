"""The pipelined batch path writes and records exactly what the serial path does.

Oracle: the serial loop (``--serial``), byte for byte: every map, every picture and the summary
items in their order, with a corrupt file and an unreadable one among real photos.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from gradtap.cli.main import cli
from gradtap.cli.pipeline import WriteBehind
from tests.cli.photoset import photo_folder, tiny_model


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    photos = root / "photos"
    photo_folder(photos, 8)
    (photos / "img004.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return tiny_model(root), photos


def explain(model: Path, photos: Path, out: Path, *extra: str) -> dict:
    args = ["explain", str(photos), "-M", str(model), "-m", "gradcam,saliency,guided_backprop"]
    args += ["-t", "top-2", "--format", "npy,overlay,panel", "-b", "3", "-o", str(out), "--json"]
    result = CliRunner().invoke(cli, [*args, *extra])
    assert result.exit_code == 1, result.output  # the corrupt file fails, the rest is written
    return json.loads(result.stdout)


def files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in (".npy", ".png")
    }


def test_pipelined_equals_serial(job: tuple[Path, Path], tmp_path: Path) -> None:
    model, photos = job
    serial = explain(model, photos, tmp_path / "serial", "--serial")
    piped = explain(model, photos, tmp_path / "piped", "--pipeline")
    assert len(serial["items"]) == 7 * 3 * 2  # 7 good photos, 3 methods, top-2
    for item in [*serial["items"], *piped["items"]]:
        item.pop("seconds")
    assert piped["items"] == serial["items"]
    assert piped["groups"] == serial["groups"]
    assert piped["failures"] == serial["failures"] and len(serial["failures"]) == 1
    assert "img004" in serial["failures"][0]["input"]
    a, b = files(tmp_path / "serial"), files(tmp_path / "piped")
    assert len(a) == 7 * (1 + 3 * 2 * 3)  # input.png + methods x targets x formats
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_write_behind_keeps_order_and_bounds_the_queue() -> None:
    from concurrent.futures import ThreadPoolExecutor

    done: list[int] = []
    with ThreadPoolExecutor(1) as pool:
        behind = WriteBehind(pool, depth=2)
        for chunk in range(20):
            for k in range(3):
                behind.emit(lambda v=chunk * 3 + k: done.append(v))
            behind.flush()
            assert len(behind._pending) <= 2  # never more than depth chunks waiting
        behind.drain()
    assert done == list(range(60))


def test_writer_bug_is_raised_not_swallowed() -> None:
    from concurrent.futures import ThreadPoolExecutor

    def bug() -> None:
        raise ValueError("a bug")

    with ThreadPoolExecutor(1) as pool:
        behind = WriteBehind(pool, depth=0)
        behind.emit(bug)
        with pytest.raises(ValueError, match="a bug"):
            behind.drain()


def test_nothing_runs_after_a_failed_write() -> None:
    from concurrent.futures import ThreadPoolExecutor

    done: list[int] = []

    def interrupted() -> None:
        raise KeyboardInterrupt

    with ThreadPoolExecutor(1) as pool:
        behind = WriteBehind(pool, depth=1)
        behind.emit(lambda: done.append(0))
        behind.emit(interrupted)
        behind.emit(lambda: done.append(1))  # same chunk, after the failure
        behind.flush()
        behind.emit(lambda: done.append(2))  # the next chunk
        with pytest.raises(KeyboardInterrupt):
            behind.flush()
            behind.drain()
        behind.emit(lambda: done.append(3))
        behind.drain()  # after a failure nothing more is written
    assert done == [0]
