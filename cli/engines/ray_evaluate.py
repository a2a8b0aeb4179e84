"""``gradtap evaluate --engine ray``: per-image scores over Ray Data, the summary from the rows.

The driver hands Ray Data one row per image index; ``map_batches`` sends batches of indices to a
pool of :class:`EvaluateActor` actors, each holding one session, which draw their images of the
set themselves (the sets are generated: image ``i`` is the same wherever it is drawn, see
:func:`~gradtap.runtime.evaluate.data.load_set`), explain them for their ground-truth class and
score them exactly as the single-process :func:`~gradtap.runtime.evaluate.run.evaluate` does.
Each (image, method) is one row of ``results.parquet``; a bad image is an error row. The
driver builds the summary table from the rows, in image order, so its numbers are the
single-process ones; the sanity check, the trust checks and the example maps use only the
first few images and run in the driver.

Methods that draw noise per call (SmoothGrad; Integrated Gradients with a uniform baseline)
draw it per batch of images sharing a target, so their per-image numbers are another draw of
the same noise than a single-process run's (the batches differ); every other method's are the
same.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gradtap.cli.engines.ray_engine import RayOptions, _init, _quiet_data
from gradtap.cli.errors import one_line, recoverable
from gradtap.runtime.evaluate.data import EvalSet, load_set
from gradtap.runtime.evaluate.maps import RANDOM, compute_maps, not_applicable
from gradtap.runtime.evaluate.result import EvalResult, Examples, MethodScores
from gradtap.runtime.evaluate.run import EvalConfig, _image, _Job, pick_targets
from gradtap.runtime.session import ExplainSession

RESULTS = "results.parquet"
BAD_ENV = "GRADTAP_RAY_BAD_IMAGE"
"""Fault injection for tests: ``I`` makes the actors turn image ``I`` into NaN pixels."""
SCORES = ("pointing", "pointing_wide", "energy", "deletion", "insertion", "iou")
CURVES = ("fractions", "deletion_curve", "insertion_curve")

COLUMNS: tuple[tuple[str, str], ...] = (
    ("index", "int64"),
    ("method", "string"),
    ("target", "int64"),
    ("correct", "bool"),
    *((name, "float64") for name in SCORES),
    ("map_seconds", "float64"),
    *((name, "list<float64>") for name in CURVES),
    ("error", "string"),
)
"""The results table: one row per (image, method), or one error row per failed image."""


def schema() -> Any:
    """The Arrow schema of :data:`COLUMNS`."""
    import pyarrow as pa

    types = {
        "int64": pa.int64(),
        "bool": pa.bool_(),
        "string": pa.string(),
        "float64": pa.float64(),
        "list<float64>": pa.list_(pa.float64()),
    }
    return pa.schema([(name, types[kind]) for name, kind in COLUMNS])


def _runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive runs ``(start, n)`` of sorted indices."""
    found: list[tuple[int, int]] = []
    for i in indices:
        if found and found[-1][0] + found[-1][1] == i:
            found[-1] = (found[-1][0], found[-1][1] + 1)
        else:
            found.append((i, 1))
    return found


def draw(name: str, session: ExplainSession, indices: Sequence[int], seed: int | None) -> EvalSet:
    """Images ``indices`` (sorted) of the set ``name``, as one set."""
    parts = [load_set(name, session.info, n, seed=seed, start=s) for s, n in _runs(indices)]
    if len(parts) == 1:
        return parts[0]
    return EvalSet(
        parts[0].name,
        np.concatenate([p.images for p in parts]),
        tuple(c for p in parts for c in p.classes),
        np.concatenate([p.masks for p in parts]),
        np.concatenate([p.boxes for p in parts]),
        parts[0].mask_kind,
    )


class EvaluateActor:
    """One session in a Ray worker; called with batches of image indices."""

    def __init__(
        self,
        model: str,
        dataset: str,
        seed: int | None,
        config: EvalConfig,
        providers: Any,
        threads: int | None,
    ) -> None:
        self.session = ExplainSession(model, providers=providers, threads=threads)
        self.dataset, self.seed, self.config = dataset, seed, config
        self.methods = [m for m in config.methods if not not_applicable(self.session, m)]

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        index = sorted(int(i) for i in batch["index"])
        rows = self.score(index)
        return pa.Table.from_pylist([{k: r.get(k) for k, _ in COLUMNS} for r in rows], schema())

    def score(self, index: Sequence[int]) -> list[dict[str, Any]]:
        """The rows of images ``index``: per method its scores, or one error row per image."""
        data = draw(self.dataset, self.session, index, self.seed)
        images = data.images.copy()
        bad = os.environ.get(BAD_ENV)
        rows: list[dict[str, Any]] = []
        good: list[int] = []
        for k, i in enumerate(index):
            if bad is not None and i == int(bad):
                images[k] = np.nan
            try:
                self.session.check_input(images[k : k + 1].transpose(0, 3, 1, 2))
                good.append(k)
            except recoverable() as err:
                rows.append({"index": i, "error": f"image {i}: {one_line(err)}"})
        if not good:
            return rows
        sub = EvalSet(
            data.name,
            images[good],
            tuple(data.classes[k] for k in good),
            data.masks[good],
            data.boxes[good],
            data.mask_kind,
        )
        ids = np.array([index[k] for k in good], np.int64)
        rows += self._scores(sub, ids)
        return rows

    def _scores(self, data: EvalSet, ids: np.ndarray) -> list[dict[str, Any]]:
        s, c = self.session, self.config
        x = s.check_input(data.batch)
        h, w = x.shape[2:]
        targets, correct = pick_targets(s.logits(x), data.classes)
        step, sigma = math.ceil(h * w / c.curve_steps), c.blur_sigma or min(h, w) / 32
        job = _Job(s, data, x, targets, c, step, sigma, None)
        rows: list[dict[str, Any]] = []
        for m in self.methods:
            t0 = time.perf_counter()
            maps = compute_maps(s, m, x, targets, c.maps, index=ids)
            each = (time.perf_counter() - t0) / len(x)
            for k, i in enumerate(ids):
                row: dict[str, Any] = {"index": int(i), "method": m, "target": int(targets[k])}
                row["correct"] = bool(correct[k])
                try:
                    scores, dele, ins = _image(job, k, maps[k])
                except recoverable() as err:
                    rows.append({**row, "error": f"image {i}: {m}: {one_line(err)}"})
                    continue
                row.update(zip(SCORES, map(float, scores), strict=True))
                row.update(map_seconds=each, fractions=list(map(float, dele.fractions)))
                row.update(deletion_curve=list(map(float, dele.scores)))
                row.update(insertion_curve=list(map(float, ins.scores)))
                rows.append(row)
        return rows


class Collected:
    """The rows of a run, by method and image, for the summary table."""

    def __init__(self) -> None:
        self.by_method: dict[str, dict[int, dict[str, Any]]] = {}
        self.targets: dict[int, tuple[int, bool]] = {}
        self.failed: dict[int, str] = {}

    def add(self, row: dict[str, Any]) -> None:
        """One result row: a score or an error."""
        i = row["index"]
        if row["error"] is not None:
            self.failed.setdefault(i, row["error"])
            return
        self.by_method.setdefault(row["method"], {})[i] = row
        self.targets[i] = (row["target"], row["correct"])

    def images(self) -> list[int]:
        """Images scored by every method, in order (a failed image counts for none)."""
        return sorted(i for i in self.targets if i not in self.failed)

    def method_scores(self, method: str, keep: Sequence[int]) -> MethodScores:
        """One method's scores over images ``keep``, as the single-process evaluate sums them."""
        rows = [self.by_method[method][i] for i in keep]
        cols = [np.array([r[k] for r in rows], np.float64) for k in SCORES]
        dele = np.mean([r["deletion_curve"] for r in rows], 0)
        ins = np.mean([r["insertion_curve"] for r in rows], 0)
        seconds = float(sum(r["map_seconds"] for r in rows))
        fractions = np.array(rows[0]["fractions"], np.float64)
        return MethodScores(method, *cols, seconds, fractions, dele, ins)


def run_ray_evaluate(
    session: ExplainSession,
    dataset: str,
    n: int,
    seed: int | None,
    config: EvalConfig,
    opts: RayOptions,
    out: Path,
) -> tuple[EvalResult, dict[str, Any]]:
    """Evaluate images ``0..n-1`` of ``dataset`` on Ray; rows into ``out/results.parquet``.

    Returns:
        The result (over the images that did not fail) and the engine's record: images done
        and failed with their errors, the Ray start-up and scoring times.
    """
    import pyarrow.parquet as pq
    import ray

    from gradtap.cli.outputs import atomic_path

    start = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        _init(opts)
    ready = time.perf_counter()
    _quiet_data()
    env = {k: v for k, v in os.environ.items() if k.startswith("GRADTAP_")}
    batch = max(1, min(64, math.ceil(n / (4 * opts.workers))))  # a few batches per actor
    got = Collected()
    try:
        # rows from the driver, as explain's engine does: read tasks would wait for the CPUs the
        # actors hold
        rows = ray.data.from_items(
            [{"index": i} for i in range(n)], override_num_blocks=math.ceil(n / batch)
        )
        mapped = rows.map_batches(
            EvaluateActor,
            batch_size=batch,
            batch_format="numpy",
            fn_constructor_args=(opts.model, dataset, seed, config, opts.providers, opts.threads),
            concurrency=opts.workers,
            num_cpus=opts.num_cpus,
            num_gpus=opts.num_gpus or None,
            runtime_env={"env_vars": env} if env else None,
        )
        with atomic_path(out / RESULTS) as tmp:
            writer = pq.ParquetWriter(str(tmp), schema())
            try:
                for table in mapped.iter_batches(batch_format="pyarrow", batch_size=None):
                    writer.write_table(table.cast(schema()))
                    for row in table.to_pylist():
                        got.add(row)
            finally:
                writer.close()
    finally:
        if started_here:
            ray.shutdown()
    scored = time.perf_counter()
    result = summarise(session, dataset, seed, config, got, time.perf_counter() - start)
    record = {
        "address": opts.address or "local",
        "workers": opts.workers,
        "results": RESULTS,
        "images_done": len(got.images()),
        "images_failed": len(got.failed),
        "failures": [got.failed[i] for i in sorted(got.failed)],
        "startup_seconds": round(ready - start, 3),
        "score_seconds": round(scored - ready, 3),
    }
    return result, record


def summarise(
    session: ExplainSession,
    dataset: str,
    seed: int | None,
    config: EvalConfig,
    got: Collected,
    seconds: float,
) -> EvalResult:
    """The :class:`EvalResult` of the rows: scores in image order; sanity check, trust checks
    and example maps on the first images, here (as the single-process evaluate does)."""
    from gradtap.runtime.errors import OptionError
    from gradtap.runtime.evaluate.cascade import sanity_check
    from gradtap.runtime.evaluate.checks import run_checks

    keep = got.images()
    if not keep:
        raise OptionError(f"no image could be evaluated: {next(iter(got.failed.values()), '')}")
    skipped = {m: why for m in config.methods if (why := not_applicable(session, m))}
    methods = [m for m in config.methods if m not in skipped]
    scores = tuple(got.method_scores(m, keep) for m in methods)
    head = keep[: max(config.sanity_images if config.sanity else 0, config.checks.images,
                      config.examples, 1)]  # fmt: skip
    data = draw(dataset, session, head, seed)
    x = session.check_input(data.batch)
    t = np.array([got.targets[i][0] for i in head], np.int64)
    checked = [m for m in methods if m != RANDOM]
    curves = []
    if config.sanity and checked:
        k = min(config.sanity_images, len(x))
        curves = sanity_check(
            session, x[:k], t[:k], checked, config.maps, steps=config.sanity_steps,
            seed=config.seed,
        )  # fmt: skip
    checks = run_checks(session, x, t, methods, config.checks, config.maps)
    n_ex = min(config.examples, len(x))
    kept = {
        m: compute_maps(session, m, x[:n_ex], t[:n_ex], config.maps, index=np.array(head[:n_ex]))
        for m in methods
    }
    h, w = x.shape[2:]
    return EvalResult(
        model=session.info.name,
        weights=session.info.weights,
        dataset=data.name,
        mask_kind=data.mask_kind,
        targets=np.array([got.targets[i][0] for i in keep], np.int64),
        correct=np.array([got.targets[i][1] for i in keep], bool),
        labels=session.info.labels,
        config=config,
        step=math.ceil(h * w / config.curve_steps),
        blur_sigma=float(config.blur_sigma or min(h, w) / 32),
        scores=scores,
        sanity=tuple(curves),
        skipped=skipped,
        examples=Examples(data.images[:n_ex], data.boxes[:n_ex], kept),
        seconds=seconds,
        checks=checks,
    )


def evaluate_on_ray(
    cfg: Any,
    session: ExplainSession,
    model: str | None,
    dataset: str,
    n: int,
    seed: int | None,
    config: EvalConfig,
    out: Any,
    as_json: bool,
    where: tuple[str | None, int, float, float],
) -> None:
    """The ``evaluate --engine ray`` command: run, write the report and the table, exit 0/1.

    The report (evaluation.md, .json, plots) is the single-process one; evaluation.json gets a
    ``ray`` record (images done and failed, with why). A failed image makes the exit code 1.
    """
    import importlib.util
    import json

    import click

    from gradtap.cli.errors import EXIT_FAILED, user_errors
    from gradtap.cli.modelref import resolve_model
    from gradtap.cli.outputs import write_json
    from gradtap.runtime.evaluate.report import FILES, write_report

    if importlib.util.find_spec("ray") is None:
        raise click.UsageError("--engine ray needs Ray: pip install 'gradtap[ray]'")
    if not out.overwrite and (out.root / RESULTS).exists():
        raise click.UsageError(
            f"{str(out.root / RESULTS)!r} exists; pass --overwrite to replace it"
        )
    address, workers, cpus, gpus = where
    threads = cfg.threads or max(1, round(cpus))  # actors share the cores
    opts = RayOptions(
        address, workers, str(resolve_model(model)), cfg.providers, threads, cpus, gpus
    )
    cfg.note(f"evaluate: {session.info.name} on {dataset}, {n} images, Ray with {workers} actor(s)")
    with user_errors():
        result, record = run_ray_evaluate(session, dataset, n, seed, config, opts, out.root)
        written = write_report(result, out.root)
    data = result.to_dict()
    data["ray"] = record
    write_json(out.root / FILES["json"], data)
    if as_json:
        click.echo(json.dumps(data, indent=1, ensure_ascii=False))
    for line in record["failures"][:5]:
        click.echo(f"gradtap: error: {line}", err=True)
    done, failed = record["images_done"], record["images_failed"]
    cfg.note(f"evaluate: {done} image(s) scored, {failed} failed; wrote {len(written) + 1} files")
    click.echo(str(written["markdown"]), err=as_json)
    click.get_current_context().exit(EXIT_FAILED if failed else 0)
