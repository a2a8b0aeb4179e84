"""Writing results: atomic files, no silent overwrites, and the folder's summary.json.

Every file is written to a hidden temporary name in its folder and renamed into place, so an
interrupted run leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from gradtap.runtime.atomic import atomic_path, write_bytes  # noqa: F401 - re-exported

SUMMARY = "summary.json"
GALLERY = "index.html"
SCHEMA = 1


class OutputExistsError(FileExistsError):
    """An output file exists and --overwrite was not given."""


class UnwritableError(OSError):
    """The output folder cannot be created or written to (a usage error: exit 2)."""


def write_text(dst: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``dst`` atomically."""
    write_bytes(dst, text.encode("utf-8"))


def write_chunks(dst: Path, chunks: Iterable[str]) -> None:
    """Write UTF-8 text given piece by piece to ``dst`` atomically (never whole in memory)."""
    with atomic_path(dst) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for chunk in chunks:
            f.write(chunk)


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
        self._resumable: frozenset[str] | None = None

    def resumable(self) -> frozenset[str]:
        """Files that runs interrupted before this one recorded: a rerun may replace them."""
        if self._resumable is None:
            self._resumable = interrupted_files(load_summary(self.root))
        return self._resumable

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
        for name in (SUMMARY, GALLERY):
            if (self.root / name).is_dir():
                raise UnwritableError(
                    f"{str(self.root / name)!r} is a folder; gradtap writes a file there: "
                    "move it away or choose another --out"
                )
        problem = summary_problem(self.root)
        if problem:
            raise UnwritableError(
                f"{str(self.root / SUMMARY)!r} is not a gradtap summary ({problem}): "
                "move it away or choose another --out"
            )

    def plan(self, rel_paths: Sequence[str]) -> None:
        """Refuse before computing anything if some of these outputs exist.

        Raises:
            OutputExistsError: naming the first existing file.
        """
        if self.overwrite:
            return
        for rel in rel_paths:
            if (self.root / rel).exists() and rel not in self.resumable():
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
                make_folder(dst.parent)
                staged.append((writer, stack.enter_context(atomic_path(dst))))
            for writer, tmp in staged:
                writer(tmp)


def make_folder(folder: Path) -> None:
    """``mkdir -p``; a file where the folder goes is an OSError that says so."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OSError(
            errno.ENOTDIR, "a file is in the way of the output folder", str(folder)
        ) from None


def _empty() -> dict[str, Any]:
    return {"schema": SCHEMA, "runs": [], "groups": {}, "items": []}


def summary_problem(root: Path) -> str:
    """Why ``root/summary.json`` is valid JSON but not a gradtap summary ('' when it is fine).

    A missing or unparsable file is no problem: it is started afresh.
    """
    try:
        data = json.loads((root / SUMMARY).read_text("utf-8"))
    except (OSError, ValueError):
        return ""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    if data.get("schema") != SCHEMA:
        return f"schema {data.get('schema')!r}, not {SCHEMA}"
    shapes = {"runs": list, "groups": dict, "items": list}
    for key, kind in shapes.items():
        if not isinstance(data.get(key), kind):
            return f"{key!r} is not a JSON {'list' if kind is list else 'object'}"
    if not all(isinstance(i, dict) and isinstance(i.get("key"), str) for i in data["items"]):
        return "an item without a 'key'"
    if not all(isinstance(r, dict) for r in data["runs"]):
        return "a run that is not an object"
    return ""


def load_summary(root: Path) -> dict[str, Any]:
    """The folder's summary.json, or an empty one (a missing, unparsable or foreign file)."""
    path = root / SUMMARY
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return _empty()
    if summary_problem(root):
        return _empty()
    return data


def interrupted_files(summary: Mapping[str, Any]) -> frozenset[str]:
    """The files of items that interrupted runs recorded (a rerun picks these up)."""
    keys = {
        key
        for run in summary.get("runs", [])
        if isinstance(run, dict) and run.get("interrupted")
        for key in run.get("items", [])
        if isinstance(key, str)
    }
    files: set[str] = set()
    for item in summary.get("items", []):
        if item.get("key") in keys and isinstance(item.get("files"), dict):
            files.update(f for f in item["files"].values() if isinstance(f, str))
    return frozenset(files)


@contextmanager
def summary_lock(root: Path) -> Iterator[None]:
    """Hold an advisory lock on the output folder itself: one summary update at a time.

    Runs into one folder, in one process or several, take turns at reading, merging and writing
    summary.json, so no run's record is lost; the lock is on the folder, so no lock file is left
    behind. Where ``fcntl`` is missing (Windows) the lock is a no-op.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def merge_summary(
    root: Path,
    run: Mapping[str, Any],
    *,
    then: Callable[[Mapping[str, Any]], Any] | None = None,
    result: bool = True,
) -> dict[str, Any] | None:
    """Add one run to the folder's summary.json; items replace earlier items for the same key.

    The merge goes through a temporary database and summary.json is written item by item
    (:func:`_merge`), so a run's items and groups may be spooled ones
    (:class:`~gradtap.cli.spool.ItemLog`, :class:`~gradtap.cli.spool.GroupLog`) and are never
    all in memory; the earlier runs of the folder are read whole.

    Args:
        root: the output folder.
        run: ``{"command", "model", ..., "groups": {...}, "items": [...], "failures": [...]}``.
        then: called with the merged summary while the folder is still locked (the gallery is
            rebuilt there, so a concurrent run cannot overwrite it with an older summary); its
            ``groups`` and ``items`` are streamed views, valid during the call.
        result: return the merged summary, read back (False: return None, hold nothing).

    Returns:
        The merged summary, also written to ``root/summary.json`` (None with ``result=False``).
    """
    with summary_lock(root):
        _merge(root, run, then)
        return load_summary(root) if result else None


def _merge(
    root: Path, run: Mapping[str, Any], then: Callable[[Mapping[str, Any]], Any] | None
) -> None:
    from gradtap.cli.spool import Spool

    summary = load_summary(root)
    merged = Spool(unique_keys=True)
    try:
        for item in summary.pop("items"):
            merged.items.put(item)
        for item in run.get("items", []):
            merged.items.put(item)
        for name, info in summary.pop("groups").items():
            merged.groups[name] = info
        for name, info in run.get("groups", {}).items():
            merged.groups[name] = {**merged.groups.get(name, {}), **info}
        record = {k: v for k, v in run.items() if k not in ("items", "groups")}
        keys = run["items"].keys() if hasattr(run.get("items"), "keys") else (
            i["key"] for i in run.get("items", [])
        )  # fmt: skip
        write_chunks(root / SUMMARY, _summary_text(summary["runs"], record, keys, merged))
        if then is not None:
            then({"schema": SCHEMA, "runs": [*summary["runs"], record],
                  "groups": merged.groups, "items": merged.items})  # fmt: skip
    finally:
        merged.close()


def _summary_text(runs: Sequence[Any], record: Any, keys: Any, merged: Any) -> Iterator[str]:
    """summary.json piece by piece: one run, group or item a line, this run's keys streamed."""
    dump = partial(json.dumps, ensure_ascii=False)
    yield (f'{{\n"schema": {SCHEMA},\n"runs": [\n')
    for r in runs:
        yield (dump(r) + ",\n")
    yield (dump(record)[:-1] + (', "items": [' if record else '"items": ['))
    for n, key in enumerate(keys):
        yield (("," if n else "") + dump(key))
    yield (']}\n],\n"groups": {')
    for n, (name, info) in enumerate(merged.groups.items()):
        yield (("," if n else "") + f"\n{dump(name)}: {dump(info)}")
    yield ('\n},\n"items": [')
    for n, item in enumerate(merged.items):
        yield (("," if n else "") + "\n" + dump(item))
    yield ("\n]\n}\n")
