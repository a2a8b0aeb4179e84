"""Writing results: atomic files, no silent overwrites, and the folder's summary.json.

Every file is written to a hidden temporary name in its folder and renamed into place, so an
interrupted run leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

SUMMARY = "summary.json"
GALLERY = "index.html"
SCHEMA = 1


class OutputExistsError(FileExistsError):
    """An output file exists and --overwrite was not given."""


class UnwritableError(OSError):
    """The output folder cannot be created or written to (a usage error: exit 2)."""


@contextmanager
def atomic_path(dst: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dst`` (same suffix); rename it to ``dst`` on success."""
    tmp = dst.with_name(f".{dst.stem}.{uuid.uuid4().hex[:8]}.tmp{dst.suffix}")
    try:
        yield tmp
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(dst: Path, data: bytes) -> None:
    """Write ``data`` to ``dst`` atomically."""
    with atomic_path(dst) as tmp:
        tmp.write_bytes(data)


def write_text(dst: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``dst`` atomically."""
    write_bytes(dst, text.encode("utf-8"))


def write_json(dst: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    write_text(dst, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_npy(dst: Path, array: np.ndarray) -> None:
    """Write a NumPy array (``.npy``) atomically."""
    with atomic_path(dst) as tmp:
        save_npy(tmp, array)


def save_npy(path: Path, array: np.ndarray) -> None:
    """Save a NumPy array to exactly ``path`` (no pickles; numpy adds no suffix to open files)."""
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


class OutDir:
    """An output folder with gradtap's overwrite rule.

    Args:
        root: the folder (created on first write).
        overwrite: replace existing files; without it an existing file is an error.
    """

    def __init__(self, root: Path, *, overwrite: bool) -> None:
        self.root = root
        self.overwrite = overwrite

    def check_writable(self) -> None:
        """Create the folder and make sure files can be written in it.

        Raises:
            OSError: the folder cannot be created or written to (message names it).
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.root / ".gradtap-write-check") as tmp:
                tmp.write_bytes(b"")
            (self.root / ".gradtap-write-check").unlink()
        except OSError as err:
            raise UnwritableError(
                f"output folder {str(self.root)!r} is not writable: {err.strerror}"
            ) from None

    def plan(self, rel_paths: Sequence[str]) -> None:
        """Refuse before computing anything if some of these outputs exist.

        Raises:
            OutputExistsError: naming the first existing file.
        """
        if self.overwrite:
            return
        for rel in rel_paths:
            if (self.root / rel).exists():
                raise OutputExistsError(
                    f"{str(self.root / rel)!r} exists; pass --overwrite to replace it"
                )

    def write(self, rel: str, writer: Callable[[Path], None]) -> str:
        """Write one output with ``writer(temp_path)``; return ``rel`` for the summary."""
        self.write_all({rel: writer})
        return rel

    def write_all(self, writers: Mapping[str, Callable[[Path], None]]) -> None:
        """Write a group of outputs (one result's files) together, or none of them.

        Each ``writer(temp_path)`` writes a temporary file beside its destination; only when all
        have succeeded are they renamed into place, so an error or Ctrl-C part way through
        leaves neither half-written files nor half of the group.
        """
        self.plan(list(writers))
        with ExitStack() as stack:
            staged = []
            for rel, writer in writers.items():
                dst = self.root / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                staged.append((writer, stack.enter_context(atomic_path(dst))))
            for writer, tmp in staged:
                writer(tmp)


def load_summary(root: Path) -> dict[str, Any]:
    """The folder's summary.json, or an empty one (an unreadable file is started afresh)."""
    path = root / SUMMARY
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {"schema": SCHEMA, "runs": [], "groups": {}, "items": []}
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        return {"schema": SCHEMA, "runs": [], "groups": {}, "items": []}
    return data


def merge_summary(root: Path, run: Mapping[str, Any]) -> dict[str, Any]:
    """Add one run to the folder's summary.json; items replace earlier items for the same key.

    Args:
        root: the output folder.
        run: ``{"command", "model", ..., "groups": {...}, "items": [...], "failures": [...]}``.

    Returns:
        The merged summary, also written to ``root/summary.json``.
    """
    summary = load_summary(root)
    items = {item["key"]: item for item in summary["items"]}
    for item in run.get("items", []):
        items[item["key"]] = item
    summary["items"] = list(items.values())
    for name, info in run.get("groups", {}).items():
        summary["groups"][name] = {**summary["groups"].get(name, {}), **info}
    record = {k: v for k, v in run.items() if k not in ("items", "groups")}
    record["items"] = [item["key"] for item in run.get("items", [])]
    summary["runs"].append(record)
    write_json(root / SUMMARY, summary)
    return summary
