"""Argument expansion, output naming, atomic writes and the summary merge of the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from gradtap.cli.config import expand_providers
from gradtap.cli.errors import Failures, about
from gradtap.cli.inputs import expand, slug, unique_stems
from gradtap.cli.outputs import OutDir, OutputExistsError, atomic_path, merge_summary, write_npy
from gradtap.runtime.errors import ImageError


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_expand_files_folders_and_globs_in_order(tmp_path: Path) -> None:
    a = touch(tmp_path / "a.JPG")
    b = touch(tmp_path / "dir" / "b.png")
    c = touch(tmp_path / "dir" / "sub" / "c.webp")
    touch(tmp_path / "dir" / "notes.txt")
    touch(tmp_path / "dir" / ".hidden.png")
    got = expand([str(a), str(tmp_path / "dir"), str(tmp_path / "**" / "*.webp"), str(a)])
    assert got.files == (a, b, c) and got.problems == ()
    assert expand([str(tmp_path / "dir")], recursive=True).files == (b, c)


def test_expand_reports_what_matched_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    got = expand([str(tmp_path / "nope.png"), str(tmp_path / "empty"), str(tmp_path / "*.gif")])
    assert got.files == ()
    reasons = [p[1] for p in got.problems]
    assert "does not exist" in reasons[0]
    assert "holds no image files" in reasons[1] and "matches no image files" in reasons[2]


def test_expand_survives_a_symlink_loop(tmp_path: Path) -> None:
    loop = tmp_path / "loop.png"
    os.symlink(loop, loop)
    touch(tmp_path / "ok.png")
    got = expand([str(tmp_path)], recursive=True)
    assert loop in got.files and tmp_path / "ok.png" in got.files  # the loop fails on reading


def test_unique_stems_and_slugs() -> None:
    files = [Path("a/cat.png"), Path("b/cat.jpg"), Path("Cat.bmp"), Path("dog photo (1).png")]
    assert unique_stems(files) == ["cat", "cat-2", "Cat-3", "dog_photo_1"]
    assert slug("tabby, tabby cat") == "tabby_tabby_cat" and slug("../..") == "image"
    assert slug("caf\u00e9 \u732b/../x") == "caf\u00e9_\u732b_.._x"


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    dst = tmp_path / "x.npy"
    with pytest.raises(KeyboardInterrupt), atomic_path(dst) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    write_npy(dst, np.arange(3, dtype=np.float32))
    np.testing.assert_array_equal(np.load(dst), [0, 1, 2])
    assert list(tmp_path.iterdir()) == [dst]


def test_outdir_refuses_existing_files_unless_overwrite(tmp_path: Path) -> None:
    touch(tmp_path / "s" / "gradcam.png")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        OutDir(tmp_path, overwrite=False).plan(["s/saliency.png", "s/gradcam.png"])
    OutDir(tmp_path, overwrite=True).plan(["s/gradcam.png"])
    OutDir(tmp_path, overwrite=False).plan(["s/saliency.png"])


def test_outdir_write_check_names_the_folder(tmp_path: Path) -> None:
    blocker = touch(tmp_path / "f")
    with pytest.raises(OSError, match="not writable") as err:
        OutDir(blocker / "out", overwrite=False).check_writable()
    assert str(blocker / "out") in str(err.value)


def test_merge_summary_replaces_items_by_key_and_keeps_runs(tmp_path: Path) -> None:
    first = {
        "command": "explain",
        "groups": {"cat": {"source": "cat.png", "input": "cat/input.png"}},
        "items": [{"key": "cat/gradcam.png", "group": "cat", "v": 1}],
        "failures": [],
    }
    second = {
        "command": "attack",
        "groups": {"cat": {"predictions": []}},
        "items": [
            {"key": "cat/gradcam.png", "group": "cat", "v": 2},
            {"key": "cat/fgsm.png", "group": "cat"},
        ],
        "failures": [],
    }
    merge_summary(tmp_path, first)
    summary = merge_summary(tmp_path, second)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert [i.get("v") for i in summary["items"]] == [2, None]
    assert summary["groups"]["cat"] == {
        "source": "cat.png",
        "input": "cat/input.png",
        "predictions": [],
    }
    assert [r["command"] for r in summary["runs"]] == ["explain", "attack"]
    assert summary["runs"][1]["items"] == ["cat/gradcam.png", "cat/fgsm.png"]


def test_a_corrupt_summary_is_started_afresh(tmp_path: Path) -> None:
    (tmp_path / "summary.json").write_text("{not json")
    summary = merge_summary(tmp_path, {"command": "x", "items": [{"key": "k", "group": "g"}]})
    assert [i["key"] for i in summary["items"]] == ["k"]


def test_failures_print_one_line_naming_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    failures = Failures()
    failures.add("a.png", ImageError("image file 'a.png' is empty (0 bytes)"))
    failures.add("b.png", ValueError("bad\nsecond line"))
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "gradtap: error: image file 'a.png' is empty (0 bytes)",
        "gradtap: error: b.png: bad",
    ]
    assert failures.exit_code() == 1 and Failures().exit_code() == 0
    assert about("x/y.png", OSError(2, "No such file", "x/y.png")) == "x/y.png: No such file"


def test_provider_aliases_keep_cpu_last() -> None:
    assert expand_providers(()) is None
    assert expand_providers(("cpu", "cuda")) == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert expand_providers(("MyEP",)) == ("MyEP",)
