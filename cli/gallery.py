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

# The grid shows the overlay (the input has its own column); the panel repeats the input.
PICTURE_ORDER = ("overlay", "image", "heatmap", "panel")
GALLERY_LIMIT = 1000
"""Images on the page at most: a larger job's page shows the first ones (summary.json has all)."""
_STYLE = """
* { box-sizing: border-box; }
body { font-family: system-ui, "DejaVu Sans", sans-serif; margin: 1em; background: #fafafa;
  color: #222; }
h1 { font-size: 1.4em; margin: 0 0 0.3em; } h2 { font-size: 1.1em; margin: 1.2em 0 0.4em; }
.meta, .preds { font-size: 0.85em; color: #555; margin: 0.2em 0; overflow-wrap: anywhere; }
nav.toc ol { columns: 16em; font-size: 0.9em; padding-left: 1.5em; margin: 0.3em 0 1em; }
.scroll { overflow-x: auto; }
table.grid { border-collapse: collapse; background: #fff; min-width: 100%; }
.grid th, .grid td { border: 1px solid #ddd; padding: 0.4em; vertical-align: top; }
.grid thead th { position: sticky; top: 0; background: #eee; font-size: 0.9em; z-index: 1; }
.grid th.image { text-align: left; font-weight: normal; width: 14em; min-width: 10em;
  background: #f4f4f4; }
.grid td { min-width: 11em; }
figure { margin: 0 0 0.5em; }
figure img { display: block; width: 100%; max-height: 18em; object-fit: contain;
  background: #f0f0f0; }
figcaption { font-size: 0.8em; margin-top: 0.2em; overflow-wrap: anywhere; }
.files a { margin-right: 0.5em; font-size: 0.8em; }
.failures li { color: #a00; }
@media (max-width: 700px) {
  body { margin: 0.5em; }
  .grid thead { display: none; }
  .grid, .grid tbody, .grid tr, .grid th, .grid td { display: block; width: 100%; }
  .grid tr { margin-bottom: 1em; border: 1px solid #ccc; }
  .grid td::before { content: attr(data-label); display: block; font-weight: bold;
    font-size: 0.85em; }
  .grid th.image { width: 100%; }
}
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
    """The gallery page: a table of contents, then one row per image and one column per method."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">']
    parts.append('<meta name="viewport" content="width=device-width, initial-scale=1">')
    parts.append("<title>gradtap results</title>")
    parts.append(f"<style>{_STYLE}</style></head><body>")
    parts.append("<h1>gradtap results</h1>")
    parts += _models(summary.get("runs", []))
    groups, items, more = _shown(summary.get("groups", {}), summary.get("items", []))
    shown = {g for i in items for g in [i["group"]]}
    order = [g for g in _group_order(items, groups) if g in shown]
    columns = list(dict.fromkeys(_column(i) for i in items))
    if more:
        parts.append(
            f'<p class="meta">the first {len(order)} of {len(order) + more} images; '
            "every result is in summary.json</p>"
        )
    parts += _contents(order, groups)
    parts.append('<div class="scroll"><table class="grid">')
    head = "".join(f'<th scope="col">{esc(c)}</th>' for c in columns)
    parts.append(f'<thead><tr><th scope="col" class="image">image</th>{head}</tr></thead><tbody>')
    by_group: dict[str, list[Mapping[str, Any]]] = {}
    for it in items:
        by_group.setdefault(it["group"], []).append(it)
    for i, group in enumerate(order):
        mine = by_group.get(group, [])
        parts.append(_row(root, group, f"g{i}", groups.get(group, {}), mine, columns))
    parts.append("</tbody></table></div>")
    parts += _failures(summary.get("runs", []))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _shown(
    groups: Mapping[str, Any], items: Iterable[Mapping[str, Any]], limit: int = GALLERY_LIMIT
) -> tuple[dict[str, Any], list[Mapping[str, Any]], int]:
    """The groups and items the page shows: those of the first ``limit`` images with results,
    and how many more images the summary has.

    One pass over the items, holding only the shown ones, so a summary of any size (streamed
    from :func:`gradtap.cli.outputs.merge_summary`) makes a page of bounded size.
    """
    keep: dict[str, Any] = {}
    kept: list[Mapping[str, Any]] = []
    for item in items:
        g = item["group"]
        if g not in keep:
            if len(keep) >= limit:
                continue
            keep[g] = groups.get(g, {})
        kept.append(item)
    if len(groups) <= limit:  # the groups' own order, as always
        order = {name: k for k, name in enumerate(groups)}
        return {g: keep[g] for g in sorted(keep, key=lambda g: order.get(g, len(order)))}, kept, 0
    return keep, kept, max(0, len(groups) - len(keep))


def _column(item: Mapping[str, Any]) -> str:
    """The method (or other result kind) an item belongs to: its column in the grid."""
    caption = item.get("caption") or [""]
    return str(item.get("method") or caption[0] or item.get("kind") or "result")


def _contents(order: list[str], groups: Mapping[str, Any]) -> list[str]:
    if len(order) < 2:
        return []
    entries = []
    for i, group in enumerate(order):
        preds = groups.get(group, {}).get("predictions") or []
        top = f" &mdash; {esc(preds[0]['label'])}" if preds else ""
        entries.append(f'<li><a href="#g{i}">{esc(group)}</a>{top}</li>')
    return ['<nav class="toc"><h2>Contents</h2><ol>', *entries, "</ol></nav>"]


def _row(
    root: Path,
    name: str,
    anchor: str,
    info: Mapping[str, Any],
    items: list[Mapping[str, Any]],
    columns: list[str],
) -> str:
    head = [f"<strong>{esc(name)}</strong>"]
    source = info.get("input")
    if source and (root / source).is_file():
        img = f'<img src="{href(source)}" alt="{esc(name)}" loading="lazy">'
        head.insert(0, f'<figure><a href="{href(source)}">{img}</a></figure>')
    if info.get("source"):
        head.append(f'<p class="meta">source: {esc(info["source"])}</p>')
    preds = info.get("predictions") or []
    if preds:
        text = ", ".join(f"{p['label']} ({p['class']}) {p['prob']:.3f}" for p in preds)
        head.append(f'<p class="preds">top-{len(preds)}: {esc(text)}</p>')
    cells = []
    for column in columns:
        figures = "".join(_figure(root, it) for it in items if _column(it) == column)
        cells.append(f'<td data-label="{esc(column)}">{figures}</td>')
    return (
        f'<tr id="{anchor}" data-group="{esc(name)}"><th scope="row" class="image">'
        f"{''.join(head)}</th>{''.join(cells)}</tr>"
    )


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
