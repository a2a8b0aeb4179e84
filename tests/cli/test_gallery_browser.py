"""The gallery of a real run, rendered by headless Chromium at desktop and phone widths.

One row per image, one column per method, the input once per row; no console errors, every
image resolves, nothing wider than the viewport. Chromium comes from ``make setup``.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from gradtap.cli.main import cli
from tests.browser import Browser, chromium

METHODS = ["gradcam", "saliency", "guided_backprop"]
SHAPES = {"wide": (60, 240), "tall": (240, 60), "caf\u00e9_\u732b": (90, 90)}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gallery")
    for i, (name, (h, w)) in enumerate(SHAPES.items()):
        img = np.full((h, w, 3), 40 + 60 * i, np.uint8)
        cv2.circle(img, (w // 2, h // 2), min(h, w) // 3, (30, 200, 240), -1)
        ok, buf = cv2.imencode(".png", img)
        (root / f"{name}.png").write_bytes(buf.tobytes())
    out = root / "out"
    args = ["-q", "explain", str(root), "-M", "smallcnn", "-o", str(out)]
    args += [a for m in METHODS for a in ("-m", m)] + ["-t", "top-2"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    return out / "index.html"


@pytest.fixture(scope="module")
def browser():  # noqa: ANN201
    assert chromium(), "chromium is missing: `make setup` installs the Debian package"
    with Browser() as b:
        yield b


LAYOUT = """(() => {
  const rows = [...document.querySelectorAll('table.grid tbody tr')];
  const imgs = [...document.images];
  return {
    header: [...document.querySelectorAll('table.grid thead th')].map(t => t.textContent),
    rows: rows.map(r => ({group: r.dataset.group, th: r.querySelectorAll('th').length,
                          td: r.querySelectorAll('td').length,
                          figures: [...r.querySelectorAll('td')].map(
                              d => d.querySelectorAll('figure').length)})),
    images: imgs.map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0,
                            width: i.getBoundingClientRect().width})),
    toc: [...document.querySelectorAll('nav.toc a')].map(a => a.getAttribute('href')),
    scrollWidth: document.documentElement.scrollWidth,
    cellDisplay: getComputedStyle(document.querySelector('table.grid td')).display,
  };
})()"""


def _load(browser: Browser, page: Path, width: int, *, mobile: bool = False) -> dict:
    browser.load(page.as_uri(), width=width, mobile=mobile)
    browser.evaluate(  # images load lazily: load them all before reading the layout
        "document.querySelectorAll('img').forEach(i => i.loading = 'eager'), "
        "Promise.all([...document.images].map(i => i.decode().catch(() => 0)))",
        wait=True,
    )
    return browser.evaluate(LAYOUT)


def test_gallery_grid_at_desktop_width(gallery: Path, browser: Browser, tmp_path: Path) -> None:
    layout = _load(browser, gallery, 1400)
    assert browser.errors() == []
    assert layout["header"] == ["image", *METHODS]
    assert sorted(r["group"] for r in layout["rows"]) == sorted(SHAPES)
    for row in layout["rows"]:
        assert row["th"] == 1 and row["td"] == len(METHODS)
        assert row["figures"] == [2] * len(METHODS)  # top-2: two targets per method cell
    inputs = len(SHAPES)
    assert len(layout["images"]) == inputs + len(SHAPES) * len(METHODS) * 2
    assert all(i["ok"] for i in layout["images"]), [i for i in layout["images"] if not i["ok"]]
    assert min(i["width"] for i in layout["images"]) >= 120  # legible, wide or tall photo
    assert layout["toc"] == ["#g0", "#g1", "#g2"]
    assert layout["scrollWidth"] <= 1400
    shot = browser.screenshot(tmp_path / "gallery.png")
    assert 1370 <= cv2.imread(str(shot)).shape[1] <= 1400  # less a scroll bar, if any


def test_gallery_stacks_on_a_phone(gallery: Path, browser: Browser) -> None:
    layout = _load(browser, gallery, 390, mobile=True)
    assert browser.errors() == []
    assert layout["cellDisplay"] == "block"
    assert layout["scrollWidth"] <= 390
    assert all(i["ok"] for i in layout["images"])


def test_evaluation_page_renders(browser: Browser, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    args = ["-q", "evaluate", "-M", "smallcnn", "--dataset", "synthetic", "-n", "6"]
    args += ["-m", "saliency,gradcam,random", "--sanity-images", "2", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    browser.load((out / "evaluation.html").as_uri(), width=1400)
    browser.evaluate(
        "Promise.all([...document.images].map(i => i.decode().catch(() => 0)))", wait=True
    )
    page = browser.evaluate(
        """({rows: [...document.querySelectorAll('tbody tr')].map(r => r.cells[0].textContent),
             cols: document.querySelectorAll('thead th').length,
             images: [...document.images].map(i => i.complete && i.naturalWidth > 0),
             width: document.documentElement.scrollWidth})"""
    )
    assert browser.errors() == []
    # the scores table first; the trust checks add tables of their own below it
    assert page["rows"][:3] == ["saliency", "gradcam", "random"] and page["cols"] >= 10
    assert page["images"] == [True, True, True]  # curves, sanity cascade, examples
    assert page["width"] <= 1400
