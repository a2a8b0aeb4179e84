"""A run's summary items and groups kept on disk, so a 100,000-image job holds none of them.

:class:`Spool` is a SQLite database in a temporary file (SQLite is in Python's standard
library); :class:`ItemLog` behaves as the run's list of items (append, len, iteration in order,
slices) and :class:`GroupLog` as its dict of groups. SQLite keeps a bounded page cache
(``CACHE_KIB``), so what a run holds in memory does not grow with the number of images.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

CACHE_KIB = 2048
"""SQLite's page cache per database: the memory a spool holds, whatever its size."""


class Spool:
    """Items (in order) and groups (by name, in order of first use) in a temporary database."""

    def __init__(self, *, unique_keys: bool = False) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="gradtap-spool-"))
        self._lock = threading.Lock()
        self.db = sqlite3.connect(self._dir / "run.sqlite", check_same_thread=False)
        self.db.executescript(
            f"""PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-{CACHE_KIB};
            CREATE TABLE items (seq INTEGER PRIMARY KEY, key TEXT, body TEXT);
            CREATE TABLE groups (seq INTEGER PRIMARY KEY, name TEXT UNIQUE, body TEXT);"""
        )
        if unique_keys:  # a merge: an item replaces the earlier one of its key, in its place
            self.db.execute("CREATE UNIQUE INDEX item_key ON items (key)")
        self.items = ItemLog(self)
        self.groups = GroupLog(self)

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of one statement (under the spool's lock: the writer thread appends)."""
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    def stream(self, sql: str, args: tuple[Any, ...] = (), page: int = 500) -> Iterator[Any]:
        """The first column of a ``... WHERE seq > ? ORDER BY seq`` query, page by page."""
        last = 0
        while True:
            rows = self.query(f"{sql} LIMIT {page}", (*args, last))
            if not rows:
                return
            for _seq, value in rows:
                yield value
            last = rows[-1][0]

    def close(self) -> None:
        """Remove the database."""
        self.db.close()
        shutil.rmtree(self._dir, ignore_errors=True)


class ItemLog:
    """The run's items: a list that lives in the spool."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._n = 0

    def append(self, item: dict[str, Any]) -> None:
        """Add one item at the end."""
        body = json.dumps(item, ensure_ascii=False)
        self._spool.query("INSERT INTO items (key, body) VALUES (?, ?)", (item["key"], body))
        self._n += 1

    def put(self, item: dict[str, Any]) -> None:
        """Add an item, or replace the one of the same key where it is (unique-key spools)."""
        body = json.dumps(item, ensure_ascii=False)
        if self._spool.query("SELECT 1 FROM items WHERE key = ?", (item["key"],)):
            self._spool.query("UPDATE items SET body = ? WHERE key = ?", (body, item["key"]))
        else:
            self._spool.query("INSERT INTO items (key, body) VALUES (?, ?)", (item["key"], body))
            self._n += 1

    def __len__(self) -> int:
        return self._n

    def __bool__(self) -> bool:
        return self._n > 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        sql = "SELECT seq, body FROM items WHERE seq > ? ORDER BY seq"
        return (json.loads(b) for b in self._spool.stream(sql))

    def keys(self) -> Iterator[str]:
        """The items' keys, in order."""
        return self._spool.stream("SELECT seq, key FROM items WHERE seq > ? ORDER BY seq")

    def __getitem__(self, index: slice) -> list[dict[str, Any]]:
        start, stop, _ = index.indices(self._n)  # only slices: the journal's "since the last"
        rows = self._spool.query(
            "SELECT body FROM items WHERE seq > ? AND seq <= ? ORDER BY seq", (start, stop)
        )
        return [json.loads(b) for (b,) in rows]


class GroupLog(MutableMapping[str, Any]):
    """The run's groups: a dict that lives in the spool (insertion order kept)."""

    def __init__(self, spool: Spool) -> None:
        self._spool = spool

    def __getitem__(self, name: str) -> Any:
        rows = self._spool.query("SELECT body FROM groups WHERE name = ?", (name,))
        if not rows:
            raise KeyError(name)
        return json.loads(rows[0][0])

    def __setitem__(self, name: str, info: Any) -> None:
        body = json.dumps(info, ensure_ascii=False)
        self._spool.query(
            "INSERT INTO groups (name, body) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET body = excluded.body",
            (name, body),
        )

    def __delitem__(self, name: str) -> None:
        self._spool.query("DELETE FROM groups WHERE name = ?", (name,))

    def __contains__(self, name: object) -> bool:
        return bool(self._spool.query("SELECT 1 FROM groups WHERE name = ?", (name,)))

    def __iter__(self) -> Iterator[str]:
        return self._spool.stream("SELECT seq, name FROM groups WHERE seq > ? ORDER BY seq")

    def __len__(self) -> int:
        return int(self._spool.query("SELECT COUNT(*) FROM groups")[0][0])

    def items(self) -> Iterator[tuple[str, Any]]:  # type: ignore[override]
        """(name, info) pairs in order, streamed."""
        sql = "SELECT seq, name || char(0) || body FROM groups WHERE seq > ? ORDER BY seq"
        for pair in self._spool.stream(sql):
            name, _, body = pair.partition("\0")
            yield name, json.loads(body)
