"""docs/embedding.md follows the code: the contract's names, the files it points to, the filter."""

from __future__ import annotations

import re
from pathlib import Path

from gradtap.runtime import contract as c

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "embedding.md").read_text("utf-8")


def test_every_input_is_documented_with_its_plain_value() -> None:
    for name in c.INPUTS:
        assert f"| `{name}` |" in DOC, name
    for name, (_, value) in c.CONTROL_DEFAULTS.items():
        row = next(line for line in DOC.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"| {value:g} |" in row, name


def test_the_files_it_points_to_exist() -> None:
    paths = set(
        re.findall(r"((?:examples|bench|tests/examples)/[\w./-]+\.(?:cpp|mjs|html|py))", DOC)
    )
    assert len(paths) >= 8
    for path in paths:
        assert (ROOT / path).is_file(), path


def test_it_names_the_filter_the_metadata_carries() -> None:
    assert c.RESIZE_FILTER in DOC and "INTER_AREA" in DOC and "INTER_LINEAR" in DOC
