"""``make demo`` (gradtap.cli.demo): its inputs, its index page, and a quick full run (slow)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import click
import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from skimage import data

from gradtap.cli import demo


def links(page: str) -> list[str]:
    class Collect(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.found: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.found += [v for k, v in attrs if k in ("href", "src") and v]

    parser = Collect()
    parser.feed(page)
    return parser.found


def test_photos_are_the_scikit_image_samples(tmp_path: Path) -> None:
    paths = demo.write_photos(tmp_path, ["coffee", "rocket"])
    assert [p.name for p in paths] == ["coffee.png", "rocket.png"]
    rgb = cv2.cvtColor(cv2.imread(str(paths[0])), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(rgb, data.coffee())


def test_shapes_are_named_by_their_class(tmp_path: Path) -> None:
    from gradtap.runtime.evaluate.synthetic import CLASS_NAMES

    paths = demo.write_shapes(tmp_path, 3, size=64)
    assert [p.name for p in paths] == [
        f"{i:02d}-{CLASS_NAMES[i % len(CLASS_NAMES)]}.png" for i in range(3)
    ]
    assert cv2.imread(str(paths[0])).shape == (64, 64, 3)


def test_index_links_the_galleries(tmp_path: Path) -> None:
    for name in demo.SECTIONS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "index.html").write_text("<html></html>")
    page = demo.write_index(tmp_path, demo.SECTIONS).read_text()
    assert sorted(links(page)) == sorted(f"{n}/index.html" for n in demo.SECTIONS)


def test_a_failing_step_stops_the_demo() -> None:
    with pytest.raises(click.ClickException, match="`gradtap info` failed with exit code 2"):
        demo.gradtap("info", "/nonexistent/model.onnx")


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    monkeypatch.setenv("GRADTAP_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    result = CliRunner().invoke(demo.main, ["-o", str(out), "--quick"])
    assert result.exit_code == 0, result.output
    assert f"open {out / 'index.html'}" in result.output
    eff = out / "efficientnet_lite0"
    summary = json.loads((eff / "summary.json").read_text())
    assert summary["groups"]["coffee"]["predictions"][0]["class"] == 967  # espresso
    kinds = {(i["kind"], i["method"]) for i in summary["items"]}
    for method in demo.EXPLAIN_METHODS.split(","):
        assert ("explain", method) in kinds
    assert ("attack", "fgsm") in kinds and ("attack", "fool-1") in kinds
    assert len([i for i in summary["items"] if i["kind"] == "visualize"]) == 3
    assert len([i for i in summary["items"] if i["kind"] == "localize"]) == 2
    for gallery in (out / "index.html", eff / "index.html", out / "smallcnn" / "index.html"):
        page = gallery.read_text()
        for url in links(page):
            if url.startswith("#"):  # the table of contents: an anchor on the page
                assert f'id="{url[1:]}"' in page, url
                continue
            assert (gallery.parent / unquote(url)).is_file(), url
