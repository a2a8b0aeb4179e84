"""bench/scorecam.py's smoke run on the custom CNN: it prints its rows, and it fails when the two
sides' maps disagree. Speed-ups are never asserted."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("pytorch_grad_cam")
pytest.importorskip("skimage")

from bench import scorecam  # noqa: E402

ARGS = ["--model", "smallcnn", "--images", "1", "--threads", "1", "--batch", "16"]


def test_prints_a_row_per_method_on_photos(capsys: pytest.CaptureFixture[str]) -> None:
    assert scorecam.main([*ARGS, "--photos"]) == 0
    out = capsys.readouterr().out
    assert "1 photo(s) 128x128" in out
    assert "all-zero tap channels per image (one shared Score-CAM pass): [" in out
    for method in ("forward", "scorecam", "ablationcam"):
        assert any(line.startswith(f"{method} ") for line in out.splitlines()), method


def test_fails_when_the_maps_disagree(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = scorecam.ablationcam

    def flipped(*args: object, **kw: object) -> SimpleNamespace:
        return SimpleNamespace(maps=np.flip(real(*args, **kw).maps, axis=-1))  # type: ignore[arg-type]

    monkeypatch.setattr(scorecam, "ablationcam", flipped)
    assert scorecam.main([*ARGS, "--methods", "ablationcam"]) == 1
    assert (
        "error: the two sides disagree, ablationcam: max map difference" in capsys.readouterr().err
    )


def test_photos_are_real_images_in_range() -> None:
    x = scorecam.photos(7, (32, 48))
    assert x.shape == (7, 3, 32, 48) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1
    assert np.array_equal(x[0], x[len(scorecam.PHOTOS)])  # cycled
    assert not np.array_equal(x[0], x[1])
    assert x.std() > 0.1  # photos, not a flat image
