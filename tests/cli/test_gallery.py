"""The index.html gallery: offline, relative, escaped, and linking only to files that exist."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

from gradtap.cli.gallery import render, write_gallery


class Page(HTMLParser):
    """Collects links, image sources, figure captions and script tags."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[str] = []
        self.captions: list[str] = []
        self.scripts = 0
        self._in_caption = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "a" and values.get("href"):
            self.links.append(values["href"] or "")
        if tag == "img":
            self.images.append(values.get("src") or "")
        if tag in ("script", "link", "iframe"):
            self.scripts += 1
        if tag == "figcaption":
            self._in_caption = True
            self.captions.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "figcaption":
            self._in_caption = False

    def handle_data(self, data: str) -> None:
        if self._in_caption:
            self.captions[-1] += data


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    return page


def summary_for(root: Path) -> dict:
    files = {
        "photo 1/gradcam++.panel.png": b"png",
        "photo 1/gradcam++.png": b"png",
        "caf\u00e9#2/saliency.png": b"png",
    }
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    items = [
        {
            "key": "photo 1/gradcam++.png",
            "group": "photo 1",
            "caption": ["gradcam++", "<script>x</script> p=0.5"],
            "files": {
                "overlay": "photo 1/gradcam++.png",
                "panel": "photo 1/gradcam++.panel.png",
                "npy": "photo 1/gone.npy",
            },
        },
        {
            "key": "caf\u00e9#2/saliency.png",
            "group": "caf\u00e9#2",
            "caption": ["saliency"],
            "files": {"overlay": "caf\u00e9#2/saliency.png"},
        },
        {
            "key": "lost/x.png",
            "group": "lost",
            "caption": ["deleted since"],
            "files": {"overlay": "lost/x.png"},
        },
    ]
    runs = [
        {
            "command": "explain",
            "model": {"file": "m.onnx", "name": "m"},
            "failures": [{"error": "old failure"}],
        },
        {
            "command": "explain",
            "model": {"file": "m.onnx", "name": "m"},
            "failures": [{"error": "bad.png: truncated"}],
        },
    ]
    groups = {
        "photo 1": {
            "source": "in/photo 1.jpg",
            "predictions": [{"class": 3, "label": "a&b", "prob": 0.9}],
        }
    }
    return {"schema": 1, "runs": runs, "groups": groups, "items": items}


def test_links_are_relative_encoded_and_exist(tmp_path: Path) -> None:
    path = write_gallery(tmp_path, summary_for(tmp_path))
    page = parse(path.read_text("utf-8"))
    assert page.scripts == 0  # no scripts, stylesheets or frames: nothing to fetch
    assert page.images == ["photo%201/gradcam%2B%2B.png", "caf%C3%A9%232/saliency.png"]
    text = path.read_text("utf-8")
    for url in page.links + page.images:
        if url.startswith("#"):  # the table of contents: an anchor on this page
            assert f'id="{url[1:]}"' in text, url
            continue
        parsed = urlparse(url)
        assert not parsed.scheme and not parsed.netloc and not parsed.path.startswith("/")
        assert (tmp_path / unquote(parsed.path)).is_file(), url
    assert not any("gone.npy" in u or "lost/" in u for u in page.links)


def test_text_is_escaped_and_every_item_has_its_caption(tmp_path: Path) -> None:
    text = render(tmp_path, summary_for(tmp_path))
    page = parse(text)
    assert "<script>x</script>" not in text and "&lt;script&gt;" in text
    assert "a&amp;b (3) 0.900" in text
    assert page.captions[0].startswith("gradcam++<script>x</script> p=0.5")
    assert page.captions[1].startswith("saliency")
    assert len(page.captions) == 3 and "deleted since" in page.captions[2]


def test_only_the_latest_runs_failures_are_listed(tmp_path: Path) -> None:
    text = render(tmp_path, summary_for(tmp_path))
    assert "bad.png: truncated" in text and "old failure" not in text
