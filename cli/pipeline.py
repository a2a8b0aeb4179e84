"""The pipelined batch path of ``gradtap explain``: read ahead, compute, write behind.

Three stages overlap: reader threads decode and preprocess the next chunks, the calling thread
runs onnxruntime (which releases the GIL), and one writer thread draws and writes the previous
chunks' pictures and records them. Both queues are bounded (``depth`` chunks each), so memory
does not grow with the number of images. The writer runs the serial path's record-keeping in
the serial order (a FIFO with one thread), so a pipelined run writes and records exactly what
the serial one does.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from gradtap.cli.batch import Progress, Run, Source, chunks
from gradtap.cli.commands.explain_run import (
    Loaded,
    Settings,
    explain_chunks,
    read_or_error,
)
from gradtap.cli.outputs import OutDir
from gradtap.runtime.session import ExplainSession

DEPTH = 1
"""Chunks read ahead of the computation, and chunks of results waiting to be written: one of
each is enough to keep the three stages busy, and more only holds more images in memory."""


def reader_threads() -> int:
    """Decoding threads: the cores left after onnxruntime's, at least one and at most four."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


class WriteBehind:
    """Runs ``emit``-ed work on one thread, in order; at most ``depth`` chunks wait.

    Work emitted while a chunk is computed is collected and handed over as one task when the
    next chunk starts (:meth:`flush`); handing over waits while ``depth`` tasks are pending.
    When a task fails (a bug, or Ctrl-C raised in the writer), nothing queued after it runs,
    as in the serial loop, and its error is raised here.
    """

    def __init__(self, pool: ThreadPoolExecutor, depth: int = DEPTH) -> None:
        self._pool = pool
        self._depth = depth
        self._current: list[Callable[[], Any]] = []
        self._pending: deque[Future[None]] = deque()
        self._failed = False
        self._stop = threading.Event()  # set by the writer thread when a task of it fails

    def emit(self, func: Callable[[], Any]) -> None:
        """Queue ``func`` behind everything emitted before it."""
        self._current.append(func)

    def flush(self) -> None:
        """Hand the collected work to the writer thread; wait while too much is pending."""
        if self._current and not self._failed:
            work, self._current = self._current, []
            self._pending.append(self._pool.submit(self._run_all, work))
        self._wait(self._depth)

    def drain(self) -> None:
        """Write everything still queued, in order (nothing more after a failure)."""
        self.flush()
        self._wait(0)

    def _run_all(self, work: Sequence[Callable[[], Any]]) -> None:
        if self._stop.is_set():  # an earlier task failed: the serial loop would have stopped
            return
        try:
            for func in work:
                func()
        except BaseException:
            self._stop.set()
            raise

    def _wait(self, depth: int) -> None:
        while len(self._pending) > depth:
            try:
                self._pending.popleft().result()
            except BaseException:
                self._failed = True
                self._current = []
                for later in self._pending:
                    later.cancel()
                self._pending.clear()
                raise


def read_ahead(
    pool: ThreadPoolExecutor,
    session: ExplainSession,
    sources: Sequence[Source],
    s: Settings,
    on_next: Callable[[], None],
    depth: int = DEPTH,
) -> Iterator[tuple[Sequence[Source], list[Loaded | Exception]]]:
    """Chunks with their images read, ``depth`` chunks ahead; ``on_next()`` between chunks."""
    todo = iter(chunks(sources, s.batch_size))
    ahead: deque[tuple[Sequence[Source], list[Future[Loaded | Exception]]]] = deque()

    def submit() -> None:
        chunk = next(todo, None)
        if chunk is not None:
            ahead.append((chunk, [pool.submit(read_or_error, session, src, s) for src in chunk]))

    for _ in range(depth):
        submit()
    try:
        while ahead:
            chunk, futures = ahead.popleft()
            submit()
            yield chunk, [f.result() for f in futures]
            on_next()
    finally:  # interrupted or failed: read nothing more
        for _, futures in ahead:
            for f in futures:
                f.cancel()


def run_pipelined(
    session: ExplainSession,
    sources: Sequence[Source],
    s: Settings,
    out: OutDir,
    run: Run,
    bar: Progress,
    *,
    depth: int = DEPTH,
    readers: int | None = None,
    checkpoint: Callable[[], Any] | None = None,
) -> None:
    """:func:`~gradtap.cli.commands.explain_run.run_explain` with the stages overlapped.

    On Ctrl-C the computation stops, and what was computed before is still written (the
    writer drains its queue) before the interruption goes on to be recorded.
    """
    with (
        ThreadPoolExecutor(readers or reader_threads(), thread_name_prefix="gradtap-read") as rp,
        ThreadPoolExecutor(1, thread_name_prefix="gradtap-write") as wp,
    ):
        behind = WriteBehind(wp, depth)
        try:
            explain_chunks(
                session,
                read_ahead(rp, session, sources, s, behind.flush, depth),
                s,
                out,
                run,
                bar,
                behind.emit,
                checkpoint=checkpoint,
            )
        finally:
            behind.drain()
