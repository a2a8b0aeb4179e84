"""The ``index.html`` gallery of an output folder: every picture with its labels, offline.

Built from ``summary.json``; links are relative and percent-encoded, and only files that exist
are linked, so the page works by double-click and when the folder is moved or zipped.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gradtap.cli.outputs import GALLERY, write_text

PICTURE_ORDER = ("panel", "overlay", "heatmap", "image")
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ccc; }
.meta, .preds { font-size: 0.9em; color: #555; }
.grid { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; background: #fff; padding: 0.5em; border: 1px solid #ddd; max-width: 100%; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 0.85em; margin-top: 0.3em; }
.files a { margin-right: 0.6em; font-size: 0.8em; }
.failures li { color: #a00; }
"""


def esc(text: Any) -> str:
    """HTML-escaped text."""
    return html.escape(str(text), quote=True)


def href(rel: str) -> str:
    """A relative link to a file inside the folder."""
    return quote(rel, safe="/")


def write_gallery(root: Path, summary: Mapping[str, Any]) -> Path:
    """Write ``root/index.html`` for ``summary`` (see ``outputs.merge_summary``)."""
    dst = root / GALLERY
    write_text(dst, render(root, summary))
    return dst


def render(root: Path, summary: Mapping[str, Any]) -> str:
    """The gallery page as a string."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">']
    parts.append("<title>gradtap results</title>")
    parts.append(f"<style>{_STYLE}</style></head><body>")
    parts.append("<h1>gradtap results</h1>")
    parts += _models(summary.get("runs", []))
    items = summary.get("items", [])
    groups = summary.get("groups", {})
    for group in _group_order(items, groups):
        parts += _group(
            root, group, groups.get(group, {}), [i for i in items if i["group"] == group]
        )
    parts += _failures(summary.get("runs", []))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _models(runs: Iterable[Mapping[str, Any]]) -> list[str]:
    seen: dict[str, str] = {}
    for run in runs:
        model = run.get("model") or {}
        if model.get("file"):
            what = f"{model.get('name')} ({model.get('weights') or 'weights unknown'})"
            seen[model["file"]] = f"{what}, {model.get('provider', '')}"
    return [f'<p class="meta">model: {esc(v)} &mdash; {esc(k)}</p>' for k, v in seen.items()]


def _group_order(items: Iterable[Mapping[str, Any]], groups: Mapping[str, Any]) -> list[str]:
    order = list(groups)
    for item in items:
        if item["group"] not in order:
            order.append(item["group"])
    return order


def _group(
    root: Path, name: str, info: Mapping[str, Any], items: list[Mapping[str, Any]]
) -> list[str]:
    if not items:
        return []
    parts = [f'<h2 id="{esc(name)}">{esc(name)}</h2>']
    if info.get("source"):
        parts.append(f'<p class="meta">source: {esc(info["source"])}</p>')
    preds = info.get("predictions") or []
    if preds:
        text = ", ".join(f"{p['label']} ({p['class']}) {p['prob']:.3f}" for p in preds)
        parts.append(f'<p class="preds">top-{len(preds)}: {esc(text)}</p>')
    parts.append('<div class="grid">')
    parts += [_figure(root, item) for item in items]
    parts.append("</div>")
    return parts


def _figure(root: Path, item: Mapping[str, Any]) -> str:
    files = {k: v for k, v in item.get("files", {}).items() if (root / v).is_file()}
    picture = next((files[k] for k in PICTURE_ORDER if k in files), None)
    caption = "<br>".join(esc(line) for line in item.get("caption", []))
    img = ""
    if picture:
        alt = esc(item.get("key", ""))
        img = (
            f'<a href="{href(picture)}"><img src="{href(picture)}" alt="{alt}" loading="lazy"></a>'
        )

    links = " ".join(f'<a href="{href(v)}">{esc(k)}</a>' for k, v in files.items())
    return (
        f'<figure>{img}<figcaption>{caption}<div class="files">{links}</div></figcaption></figure>'
    )


def _failures(runs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Failures of the latest run of each command (earlier runs may have been fixed since)."""
    latest: dict[str, Mapping[str, Any]] = {}
    for run in runs:
        latest[run.get("command", "")] = run
    lines = [
        f"{command}: {failure.get('error', '')}"
        for command, run in latest.items()
        for failure in run.get("failures", [])
    ]
    if not lines:
        return []
    body = [f"<li>{esc(line)}</li>" for line in dict.fromkeys(lines)]
    return ['<h2 id="failures">failures</h2>', '<ul class="failures">', *body, "</ul>"]
