"""A self-contained HTML page from the small Markdown subset gradtap's reports use.

Headings (``#``..``####``), pipe tables (the header row, a ``---`` row, body rows), images
(``![alt](file.png)``, relative links only) and paragraphs. Everything else is escaped text; the
page has no scripts and no external resources, so it opens offline and from a zip.
"""

from __future__ import annotations

import html
import re
from urllib.parse import quote

_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")
_HEADING = re.compile(r"^(#{1,4})\s+(.*)$")
_STYLE = """
* { box-sizing: border-box; }
body { font-family: system-ui, "DejaVu Sans", sans-serif; margin: 1em auto; max-width: 1400px;
  padding: 0 1em; color: #222; background: #fafafa; line-height: 1.4; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; background: #fff; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 0.3em 0.5em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; position: sticky; left: 0; background: #f4f4f4; }
thead th { background: #eee; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; background: #fff; }
p { max-width: 60em; }
"""


def markdown_page(markdown: str, *, title: str) -> str:
    """The HTML page of ``markdown`` (see the module docstring for the subset)."""
    body: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line:
            i += 1
            continue
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(lines[i].strip())
                i += 1
            body.append(_table(rows))
            continue
        heading = _HEADING.match(line)
        image = _IMAGE.match(line)
        if heading:
            level = len(heading.group(1))
            body.append(f"<h{level}>{html.escape(heading.group(2))}</h{level}>")
        elif image and "://" not in image.group(2) and not image.group(2).startswith("/"):
            alt, src = html.escape(image.group(1), quote=True), quote(image.group(2), safe="/")
            body.append(f'<a href="{src}"><img src="{src}" alt="{alt}"></a>')
        else:
            para = [line]
            while i + 1 < len(lines) and lines[i + 1].strip() and not _special(lines[i + 1]):
                i += 1
                para.append(lines[i].strip())
            body.append(f"<p>{html.escape(' '.join(para))}</p>")
        i += 1
    head = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
    )
    return head + "\n" + "\n".join(body) + "\n</body></html>\n"


def _special(line: str) -> bool:
    s = line.strip()
    return s.startswith(("|", "#")) or bool(_IMAGE.match(s))


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def _table(rows: list[str]) -> str:
    header, body = rows[0], [r for r in rows[1:] if not re.fullmatch(r"\|?(\s*:?-+:?\s*\|)+\s*", r)]
    out = ['<div class="scroll"><table><thead><tr>']
    out += [f'<th scope="col">{html.escape(c)}</th>' for c in _cells(header)]
    out.append("</tr></thead><tbody>")
    for row in body:
        cells = _cells(row)
        out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)
