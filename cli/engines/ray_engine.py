"""``gradtap explain --engine ray``: the batch over Ray Data, on this machine or a cluster.

The driver turns the image list into a Ray dataset of (image, stem) rows; ``map_batches`` sends
batches to a pool of :class:`ExplainActor` actors, each holding one
:class:`~gradtap.runtime.session.ExplainSession`, which run the same batch loop as the local
engine (:func:`~gradtap.cli.commands.explain_run.explain_chunks`) and write maps and pictures
into the output folder (which every node must see at the same path). Each batch comes back as
rows of one fixed Arrow schema, a result or an error; the driver streams them into one Parquet
table (``results.parquet``) and builds ``summary.json`` and the gallery from them.

Faults: a bad image is an error row. A worker that dies takes its batch with it; Ray restarts
the actor and runs the batch again (Ray Data's actor pools default to ``max_restarts=-1`` and
``max_task_retries=-1``: restart and retry without limit), and only the rows of
the attempt that finished reach the table, so no row is lost or doubled. Files are renamed
into place whole, and a retry writes the same bytes again. Each batch attempt leaves a marker
in ``.gradtap-ray/`` so the summary can count the retried batches.

Ray is imported only here, and only when this engine is chosen.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gradtap.cli.batch import Run, Source
from gradtap.cli.commands.explain_run import Settings, explain_chunks, read_or_error
from gradtap.cli.config import Config
from gradtap.cli.outputs import OutDir, atomic_path

RESULTS = "results.parquet"
ATTEMPTS = ".gradtap-ray"
FAULT_ENV = "GRADTAP_RAY_FAULT"
"""Fault injection for tests: ``N:MARKER`` makes an actor exit hard on its Nth batch, once
(the first process to create the file ``MARKER`` dies)."""

COLUMNS: tuple[tuple[str, str], ...] = (
    ("image", "string"),
    ("stem", "string"),
    ("model", "string"),
    ("method", "string"),
    ("target", "int64"),
    ("target_label", "string"),
    ("target_prob", "float64"),
    ("predicted", "int64"),
    ("predicted_label", "string"),
    ("top_classes", "list<int64>"),
    ("top_labels", "list<string>"),
    ("top_probs", "list<float64>"),
    ("map_min", "float64"),
    ("map_max", "float64"),
    ("map_mean", "float64"),
    ("map_std", "float64"),
    ("files", "string"),
    ("error", "string"),
    ("item", "string"),
    ("group", "string"),
)
"""The results table: one row per explanation (method, target) of an image, or per failure."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray engine runs."""

    address: str | None
    workers: int
    model: str
    providers: Sequence[str] | None = None
    threads: int | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0


def schema() -> Any:
    """The Arrow schema of :data:`COLUMNS`."""
    import pyarrow as pa

    types = {
        "string": pa.string(),
        "int64": pa.int64(),
        "float64": pa.float64(),
        "list<int64>": pa.list_(pa.int64()),
        "list<string>": pa.list_(pa.string()),
        "list<float64>": pa.list_(pa.float64()),
    }
    return pa.schema([(name, types[kind]) for name, kind in COLUMNS])


def result_rows(sources: Sequence[Source], run: Run, model: str) -> list[dict[str, Any]]:
    """The table rows of one batch's run record, in the batch's order."""
    rows: list[dict[str, Any]] = []
    path_of = {s.stem: str(s.path) for s in sources}
    for item in run.items:
        group = run.groups.get(item["group"], {})
        preds = group.get("predictions", [])
        stats = item.get("map", {})
        rows.append(
            {
                "image": path_of.get(item["group"], group.get("source")),
                "stem": item["group"],
                "model": model,
                "method": item["method"],
                "target": item["target"],
                "target_label": item["target_label"],
                "target_prob": item["target_prob"],
                "predicted": item["predicted"],
                "predicted_label": item["predicted_label"],
                "top_classes": [p["class"] for p in preds],
                "top_labels": [p["label"] for p in preds],
                "top_probs": [p["prob"] for p in preds],
                **{f"map_{k}": stats.get(k) for k in ("min", "max", "mean", "std")},
                "files": json.dumps(item["files"]),
                "error": None,
                "item": json.dumps(item, ensure_ascii=False),
                "group": json.dumps(group, ensure_ascii=False),
            }
        )
    stem_of = {str(s.path): s.stem for s in sources}
    for failure in run.failures.items:
        step = failure.get("step", "")
        rows.append(
            {
                "image": failure["input"],
                "stem": stem_of.get(failure["input"]),
                "model": model,
                "method": step if step not in ("read", "outputs") else None,
                "error": failure["error"],
            }
        )
    return [{name: row.get(name) for name, _ in COLUMNS} for row in rows]


class _Quiet:
    def update(self, n: int = 1) -> None:
        pass


class ExplainActor:
    """One model session in a Ray worker; called with batches of ``image``/``stem`` rows."""

    def __init__(
        self, model: str, settings: Settings, out: str, providers: Any, threads: int | None
    ) -> None:
        from gradtap.runtime.session import ExplainSession

        self.session = ExplainSession(
            model, providers=providers, threads=threads, batch_size=settings.batch_size
        )
        self.settings = settings
        self.out = OutDir(Path(out), overwrite=True)  # a retried batch rewrites the same bytes
        self.name = self.session.info.name
        self.calls = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        self.calls += 1
        sources = [
            Source(Path(str(p)), str(s)) for p, s in zip(batch["image"], batch["stem"], strict=True)
        ]
        _mark_attempt(self.out.root, sources)
        _maybe_fault(self.calls)
        run = Run("explain")
        read = [(sources, [read_or_error(self.session, s, self.settings) for s in sources])]
        explain_chunks(self.session, read, self.settings, self.out, run, _Quiet())  # type: ignore[arg-type]
        _record_worker(self.out.root, self.calls)
        return pa.Table.from_pylist(result_rows(sources, run, self.name), schema=schema())


def _record_worker(root: Path, calls: int) -> None:
    """This worker's peak RSS so far, for the run record (one small file per process)."""
    import resource

    folder = root / ATTEMPTS / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    info = {"pid": os.getpid(), "batches": calls, "peak_rss_mib": round(peak, 1)}
    (folder / f"{os.getpid()}.json").write_text(json.dumps(info))


def worker_stats(root: Path) -> list[dict[str, Any]]:
    """What each worker process recorded (see :func:`_record_worker`)."""
    found = []
    for path in sorted((root / ATTEMPTS / "workers").glob("*.json")):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return found


def _mark_attempt(root: Path, sources: Sequence[Source]) -> None:
    folder = root / ATTEMPTS / "attempts"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{sources[0].stem}.{uuid.uuid4().hex[:8]}").write_text(str(len(sources)))


def _maybe_fault(calls: int) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    nth, _, marker = spec.partition(":")
    if calls == int(nth):
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)


def retried_batches(root: Path) -> int:
    """Batches that were started more than once (from the attempt markers)."""
    counts: dict[str, int] = {}
    for marker in (root / ATTEMPTS / "attempts").glob("*.*"):
        first = marker.name.rsplit(".", 1)[0]
        counts[first] = counts.get(first, 0) + 1
    return sum(1 for n in counts.values() if n > 1)


def _init(opts: RayOptions) -> None:
    """Join the cluster at ``opts.address``, or start a local instance bound to 127.0.0.1."""
    import ray

    if opts.address:
        ray.init(address=opts.address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=max(1, int(np.ceil(opts.workers * opts.num_cpus))),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            logging_level=logging.WARNING,
        )


def _quiet_data() -> None:
    """No progress bars or per-dataset log lines from Ray Data (gradtap reports the run)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)


def check_ray(out: OutDir, *, resume: bool) -> None:
    """Usage errors before Ray starts: Ray missing, --resume, an existing results table.

    Raises:
        click.UsageError: naming what to do instead.
    """
    import importlib.util

    import click

    if importlib.util.find_spec("ray") is None:
        raise click.UsageError("--engine ray needs Ray: pip install 'gradtap[ray]'")
    if resume:
        raise click.UsageError("--resume works with --engine local only")
    if not out.overwrite and (out.root / RESULTS).exists():
        raise click.UsageError(
            f"{str(out.root / RESULTS)!r} exists; pass --overwrite to replace it"
        )


def run_ray(
    sources: Sequence[Source], s: Settings, out: OutDir, run: Run, opts: RayOptions, cfg: Config
) -> None:
    """Explain ``sources`` on Ray; rows stream into ``results.parquet``, results into ``run``."""
    import pyarrow.parquet as pq
    import ray

    if not sources:
        return
    import shutil

    shutil.rmtree(out.root / ATTEMPTS, ignore_errors=True)
    started_here = not ray.is_initialized()
    start = time.perf_counter()
    if started_here:
        _init(opts)
    ready = time.perf_counter()
    _quiet_data()
    env = {k: v for k, v in os.environ.items() if k.startswith("GRADTAP_")}
    try:
        ds = ray.data.from_items(
            [{"image": str(src.path), "stem": src.stem} for src in sources],
            override_num_blocks=max(1, min(len(sources) // s.batch_size, 64 * opts.workers)),
        )
        mapped = ds.map_batches(
            ExplainActor,
            batch_size=s.batch_size,
            batch_format="numpy",
            fn_constructor_args=(opts.model, s, str(out.root), opts.providers, opts.threads),
            concurrency=opts.workers,
            num_cpus=opts.num_cpus,
            num_gpus=opts.num_gpus or None,
            runtime_env={"env_vars": env} if env else None,
        )
        with atomic_path(out.root / RESULTS) as tmp:
            writer = pq.ParquetWriter(str(tmp), schema())
            try:
                for batch in mapped.iter_batches(batch_format="pyarrow", batch_size=None):
                    writer.write_table(batch.cast(schema()))
                    _record(batch, run)
            finally:
                writer.close()
        done_at = time.perf_counter()
    finally:
        if started_here:
            ray.shutdown()
    done = len({(i["group"]) for i in run.items})
    run.options["ray"] = {
        "address": opts.address or "local",
        "workers": opts.workers,
        "results": RESULTS,
        "images_done": done,
        "images_failed": len({f["input"] for f in run.failures.items}),
        "batches_retried": retried_batches(out.root),
        "startup_seconds": round(ready - start, 3),
        "explain_seconds": round(done_at - ready, 3),
        "worker_peak_rss_mib": max(
            (w["peak_rss_mib"] for w in worker_stats(out.root)), default=None
        ),
    }


def _record(batch: Any, run: Run) -> None:
    """Add one batch of result rows to the run record (items, groups, failures)."""
    for row in batch.to_pylist():
        if row["error"] is not None:
            run.failures.add(row["image"], row["error"], what=row["method"] or "")
        else:
            item = json.loads(row["item"])
            run.items.append(item)
            run.groups.setdefault(item["group"], json.loads(row["group"]))
