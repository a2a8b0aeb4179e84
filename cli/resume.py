"""``gradtap explain --resume``: an interrupted job goes on where it stopped.

What a run finished is on record twice: in ``summary.json`` (written when the run ends, also on
Ctrl-C) and, chunk by chunk while it runs, in a journal beside it (``.gradtap-journal.jsonl``,
one JSON line per chunk: the chunk's summary items and groups), which survives a run that was
killed outright. A rerun with ``--resume`` skips every image whose outputs are complete: for
each requested method at least one result of the same model, targets and method options, with
every requested format on disk. The journal's results are carried into the new run's summary,
and the journal is removed once summary.json has them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gradtap.cli.batch import Run, Source
from gradtap.cli.outputs import load_summary

JOURNAL = ".gradtap-journal.jsonl"


def _identity(model: Mapping[str, Any], options: Mapping[str, Any]) -> str:
    """What must match for an earlier result to count: model and what decides the maps."""
    return json.dumps(
        [model.get("name"), model.get("classes"), options.get("target"), options.get("set")],
        sort_keys=True,
        default=str,
    )


class Journal:
    """The running job's journal: appends the results of each finished chunk."""

    def __init__(self, root: Path, run: Run) -> None:
        self.path = root / JOURNAL
        self._run = run
        self._items = len(run.items)  # results carried over are on record already
        self._identity = _identity(run.model, run.options)

    def checkpoint(self) -> None:
        """Append the items recorded since the last checkpoint (one line, one write)."""
        items = self._run.items[self._items :]
        if not items:
            return
        self._items = len(self._run.items)
        groups = {
            i["group"]: self._run.groups[i["group"]]
            for i in items
            if i["group"] in self._run.groups
        }
        line = json.dumps(
            {"id": self._identity, "items": items, "groups": groups}, ensure_ascii=False
        )
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def remove(self) -> None:
        """Forget the journal once summary.json holds every result in it (else keep it)."""
        keys = {
            i["key"] for rec in _journal_records(self.path.parent) for i in rec.get("items", [])
        }
        recorded = {i["key"] for i in load_summary(self.path.parent)["items"]}
        if keys <= recorded:
            self.path.unlink(missing_ok=True)


def _journal_records(root: Path) -> Iterable[dict[str, Any]]:
    try:
        lines = (root / JOURNAL).read_text("utf-8").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:  # the last line of a killed run may be cut short
            continue
    return records


def _complete(
    items: Sequence[Mapping[str, Any]], root: Path, methods: Sequence[str], formats: Sequence[str]
) -> bool:
    for method in methods:
        found = [i for i in items if i.get("method") == method]
        if not found or not all(
            fmt in i.get("files", {}) and (root / i["files"][fmt]).is_file()
            for i in found
            for fmt in formats
        ):
            return False
    return True


def resume(root: Path, files: Sequence[Source], run: Run) -> tuple[list[Source], int]:
    """The sources still to do, and how many were done; journal results join ``run``.

    Call it after ``run.model`` and ``run.options`` are set.
    """
    want = _identity(run.model, run.options)
    summary = load_summary(root)
    made_by = {key: r for r in summary["runs"] for key in r.get("items", [])}
    items: dict[str, dict[str, Any]] = {}
    groups: dict[str, Any] = dict(summary["groups"])
    for item in summary["items"]:
        r = made_by.get(item["key"], {})
        if _identity(r.get("model", {}), r.get("options", {})) == want:
            items[item["key"]] = item
    carried: dict[str, dict[str, Any]] = {}
    for rec in _journal_records(root):
        if rec.get("id") == want:
            for item in rec.get("items", []):
                items[item["key"]] = carried[item["key"]] = item
            groups.update(rec.get("groups", {}))
    by_group: dict[str, list[dict[str, Any]]] = {}
    for item in items.values():
        by_group.setdefault(item["group"], []).append(item)
    methods, formats = run.options["methods"], run.options["formats"]
    todo, done = [], set()
    for src in files:
        group = groups.get(src.stem, {})
        same = group.get("source") == str(src.path)
        if same and _complete(by_group.get(src.stem, []), root, methods, formats):
            done.add(src.stem)
        else:
            todo.append(src)
    for item in carried.values():  # killed runs never wrote these into summary.json
        if item["group"] in done:
            run.items.append(item)
            run.groups.setdefault(item["group"], groups[item["group"]])
    return todo, len(done)
