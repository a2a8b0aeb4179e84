"""Drive one worker process per library over every (batch, method) cell of one model.

The workers of a model stay alive together and take turns cell by cell, so a change in machine
load during the run touches every library alike; each worker's peak RSS is reported when it quits.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import config as cfg

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ModelResult:
    """Everything measured for one model.

    Attributes:
        cells: (batch, method) -> library -> timing dict, or an error string.
        peak_rss_mb: library -> peak RSS of its worker over all cells.
        load_s: library -> seconds to load the model in its worker.
        logits_diff: library -> max |logits - gradtap logits| on the batch-1 image.
        torch_imported: library -> whether torch was in the worker's sys.modules.
    """

    model: str
    cells: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    load_s: dict[str, float] = field(default_factory=dict)
    logits_diff: dict[str, float] = field(default_factory=dict)
    torch_imported: dict[str, bool] = field(default_factory=dict)


class Worker:
    """A ``bench.worker`` process speaking JSON lines."""

    def __init__(self, library: str, model: str, weights: str, threads: int, graph: str) -> None:
        self.library = library
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{library}-", suffix=".log")  # noqa: SIM115
        cmd = [sys.executable, "-m", "bench.worker", library, model, weights, str(threads), graph]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True
        )
        self.ready: dict[str, Any] = {}

    def wait_ready(self) -> None:
        """Wait for the worker to load its model (raises RuntimeError if it died)."""
        self.ready = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.log.seek(0)
            tail = self.log.read().decode(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{self.library} worker exited: {' | '.join(tail)}")
        return json.loads(line)

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request and wait for its answer."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> dict[str, Any]:
        """Ask the worker to quit; its last words (peak RSS, torch imported)."""
        try:
            return self.ask({"cmd": "quit"})
        finally:
            self.proc.wait()
            self.log.close()


def start(
    libraries: list[str], model: str, weights: str, threads: int, graph: str
) -> dict[str, Worker | str]:
    """Start one worker per library, loading in parallel; a failed one maps to its error."""
    started = {lib: Worker(lib, model, weights, threads, graph) for lib in libraries}
    workers: dict[str, Worker | str] = {}
    for lib, worker in started.items():
        try:
            worker.wait_ready()
            workers[lib] = worker
            _say(f"[{model}] {lib}: loaded in {_ms(worker.ready['load_s'])}")
        except (RuntimeError, json.JSONDecodeError) as err:
            workers[lib] = str(err)
            _say(f"[{model}] {lib}: {err}")
    return workers


def run_model(
    model: str,
    weights: str,
    graph: str,
    *,
    libraries: list[str],
    batches: list[int],
    methods: list[str],
    threads: int,
    repeats: int,
    budget_s: float,
    min_s: float,
) -> ModelResult:
    """Time every (batch, method, library) cell of ``model``."""
    result = ModelResult(model)
    workers = start(libraries, model, weights, threads, graph)
    live = {lib: w for lib, w in workers.items() if isinstance(w, Worker)}
    try:
        result.load_s = {lib: w.ready["load_s"] for lib, w in live.items()}
        result.logits_diff = _logits_diff(live)
        turn = 0
        for batch in batches:
            for method in methods:
                order = libraries[turn % len(libraries) :] + libraries[: turn % len(libraries)]
                turn += 1
                cell = result.cells.setdefault((batch, method), {})
                for lib in order:
                    cell[lib] = _one(workers[lib], lib, method, batch, (repeats, budget_s, min_s))
                    _say(f"[{model} b{batch}] {method} {lib}: {_show(cell[lib])}")
        for lib, w in live.items():
            last = w.close()
            result.peak_rss_mb[lib] = last["peak_rss_mb"]
            result.torch_imported[lib] = last["torch"]
    finally:
        for w in live.values():
            if w.proc.poll() is None:
                w.proc.kill()
    return result


def _one(
    worker: Worker | str, lib: str, method: str, batch: int, limits: tuple[int, float, float]
) -> dict[str, Any] | str:
    if method not in cfg.SUPPORTED[lib]:
        return "n/a"
    if isinstance(worker, str):
        return "error: worker did not start"
    repeats, budget_s, min_s = limits
    req = {"cmd": "run", "method": method, "batch": batch, "repeats": repeats, "min_s": min_s}
    answer = worker.ask({**req, "budget_s": budget_s})
    return answer["timing"] if answer["ok"] else f"error: {answer['error']}"


def _logits_diff(live: dict[str, Worker]) -> dict[str, float]:
    request = {"cmd": "logits", "batch": 1}
    logits = {lib: np.asarray(w.ask(request)["logits"]) for lib, w in live.items()}
    ref = logits.get(cfg.REFERENCE)
    if ref is None:
        return {}
    return {lib: float(np.abs(v - ref).max()) for lib, v in logits.items() if lib != cfg.REFERENCE}


def _show(cell: dict[str, Any] | str) -> str:
    return cell if isinstance(cell, str) else f"{_ms(cell['median'])} (n={cell['runs']})"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
