"""The ``explain`` loop: batches of images through every chosen method, files and summary items.

Output names: ``<out>/<image-stem>/<method>.png`` (overlay), ``<method>.heatmap.png``,
``<method>.npy`` (raw map at native resolution, float32), ``<method>.panel.png``; when an image
is explained for several classes each name gets ``-<class index>`` after the method.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from gradtap.cli.batch import Array, Progress, Run, Source, attempt, chunks, top_k
from gradtap.cli.errors import recoverable
from gradtap.cli.outputs import OutDir, OutputExistsError, make_folder, save_npy
from gradtap.runtime.errors import ModelError, OptionError
from gradtap.runtime.image.geometry import Geometry, to_input
from gradtap.runtime.image.read import DEFAULT_MAX_PIXELS, load_image
from gradtap.runtime.methods.base import Explanation
from gradtap.runtime.methods.registry import METHODS
from gradtap.runtime.present.overlay import write_image
from gradtap.runtime.present.pictures import for_display, pictures
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import TargetSpec, needs_logits

FORMATS = ("overlay", "heatmap", "npy", "panel")
SUFFIX = {"overlay": ".png", "heatmap": ".heatmap.png", "npy": ".npy", "panel": ".panel.png"}


@dataclass(frozen=True)
class Settings:
    """What ``explain`` was asked to do."""

    methods: tuple[str, ...]
    target: TargetSpec
    formats: tuple[str, ...]
    options: Mapping[str, Any]
    batch_size: int
    max_side: int
    max_pixels: int = DEFAULT_MAX_PIXELS
    resample: str = "area"  # or "torchvision" (runtime.image.resample.RESAMPLE_MODES)


@dataclass
class Loaded:
    """An image read and preprocessed: model input, display image and geometry."""

    source: Source
    x: Array
    image: Array
    geometry: Geometry
    original_size: tuple[int, int] | None = None  # [H, W] of the photo; geometry's is displayed


def accepted_options(methods: Sequence[str]) -> set[str]:
    """Keyword options any of ``methods`` accepts (from their records)."""
    return {o for m in methods for o in METHODS[m].options}


def run_explain(
    session: ExplainSession,
    sources: Sequence[Source],
    s: Settings,
    out: OutDir,
    run: Run,
    bar: Progress,
    *,
    pipelined: bool = False,
    checkpoint: Callable[[], Any] | None = None,
) -> None:
    """Explain every source with every method; results and failures go into ``run``.

    Each method makes its own fused call per chunk: it predicts, resolves the targets and
    explains them, and its :class:`Explanation` rows carry the image index, target and logits
    that name the files and fill the summary. Nothing is predicted separately here.
    ``pipelined`` reads the next chunk and writes the previous one while onnxruntime computes
    (:mod:`gradtap.cli.pipeline`); the results are the same. ``checkpoint()`` runs after each
    chunk's results are recorded (the resume journal).
    """
    if pipelined:
        from gradtap.cli.pipeline import run_pipelined

        run_pipelined(session, sources, s, out, run, bar, checkpoint=checkpoint)
        return

    def read_all(chunk: Sequence[Source]) -> list[Loaded | Exception]:
        return [read_or_error(session, src, s) for src in chunk]

    read = ((c, read_all(c)) for c in chunks(sources, s.batch_size))
    explain_chunks(session, read, s, out, run, bar, checkpoint=checkpoint)


def now(func: Callable[[], Any]) -> None:
    """The serial ``emit``: run it here and now."""
    func()


def explain_chunks(
    session: ExplainSession,
    read: Iterable[tuple[Sequence[Source], list[Loaded | Exception]]],
    s: Settings,
    out: OutDir,
    run: Run,
    bar: Progress,
    emit: Callable[[Callable[[], Any]], None] = now,
    *,
    checkpoint: Callable[[], Any] | None = None,
) -> None:
    """The batch loop over chunks already read (an image or the error that stopped it).

    Only the computation happens here; whatever touches ``run``, ``bar`` or the output files
    goes through ``emit`` in the serial order, so a pipelined run records the same things.
    """
    disabled: set[str] = set()
    for chunk, results in read:
        loaded: list[Loaded] = []
        for src, res in zip(chunk, results, strict=True):
            if isinstance(res, Exception):
                emit(lambda src=src, res=res: run.failures.add(src.path, res, what="read"))
            elif (busy := _existing_output(res, s, out)) is not None:
                emit(lambda src=src, busy=busy: run.failures.add(src.path, busy, what="outputs"))
            else:
                loaded.append(res)
        for method in s.methods:
            if loaded and method not in disabled:
                _explain_chunk(session, method, loaded, s, out, run, disabled, bar, emit)
            else:
                emit(partial(bar.update, len(loaded)))
            emit(partial(bar.update, len(chunk) - len(loaded)))
        if checkpoint is not None:
            emit(checkpoint)


def read_or_error(session: ExplainSession, src: Source, s: Settings) -> Loaded | Exception:
    """:func:`read_source`, or the user error that stopped it (anything else is a bug)."""
    try:
        return read_source(session, src, s)
    except recoverable() as err:
        return err


def read_source(session: ExplainSession, src: Source, s: Settings) -> Loaded:
    """Decode and preprocess one image (no run state: safe in a reader thread)."""
    rgb = load_image(src.path, max_pixels=s.max_pixels)
    x, geometry = to_input(rgb, session.info, resample=s.resample)
    image, display = for_display(rgb, geometry, s.max_side)
    return Loaded(src, x, image, display, original_size=geometry.original_size)


def _known_targets(target: TargetSpec) -> list[int | str] | None:
    """The explicit targets of each image, or None when they depend on the prediction."""
    items = list(target) if isinstance(target, (list, tuple)) else [target]  # Each: repeated -t
    if any(needs_logits(t) for t in items if t is not None) or (len(items) > 1 and None in items):
        return None
    return [t for t in items if t is not None]


def _existing_output(im: Loaded, s: Settings, out: OutDir) -> OutputExistsError | None:
    """Refuse an image before computing when its output names are known and some exist."""
    known = _known_targets(s.target)
    if known is None:
        return None
    several = len(known) > 1
    try:
        out.plan(
            [_name(im.source.stem, m, t, f, several) for m in s.methods for t in known or [0]
             for f in s.formats]
        )  # fmt: skip
    except OutputExistsError as err:
        return err
    return None


def _name(stem: str, method: str, target: int | str, fmt: str, several: bool) -> str:
    base = f"{method}-{target}" if several else method
    return f"{stem}/{base}{SUFFIX[fmt]}"


def _explain_chunk(
    session: ExplainSession,
    method: str,
    loaded: list[Loaded],
    s: Settings,
    out: OutDir,
    run: Run,
    disabled: set[str],
    bar: Progress,
    emit: Callable[[Callable[[], Any]], None] = now,
) -> None:
    """One method over a chunk; a failing chunk is retried image by image to isolate the bad one.

    Everything after the computation (pictures, files, the run record) goes through ``emit``,
    which runs it at once (serial) or in order on a writer thread (:mod:`gradtap.cli.pipeline`).
    """
    x = np.concatenate([im.x for im in loaded])
    record = METHODS[method]
    start = time.perf_counter()
    try:
        expl = record(session, x, s.target, **record.accepted(dict(s.options)))
    except OptionError:  # the same for every image: one usage error (see explain.py)
        raise
    except ModelError as err:  # the method does not apply to this model at all
        disabled.add(method)
        emit(partial(_failed, run, bar, f"method {method}", err, method, len(loaded)))
        return
    except recoverable() as err:
        if len(loaded) > 1:
            for one in loaded:
                _explain_chunk(session, method, [one], s, out, run, disabled, bar, emit)
        else:
            emit(partial(_failed, run, bar, loaded[0].source.path, err, method, 1))
        return
    seconds = (time.perf_counter() - start) / max(1, len(expl.target))
    emit(lambda: _write_chunk(expl, loaded, s, out, run, seconds, bar))


def _failed(
    run: Run, bar: Progress, path: Path | str, err: BaseException, method: str, n: int
) -> None:
    run.failures.add(path, err, what=method)
    bar.update(n)


def _write_chunk(
    expl: Explanation,
    loaded: list[Loaded],
    s: Settings,
    out: OutDir,
    run: Run,
    seconds: float,
    bar: Progress,
) -> None:
    """Pictures, files and summary items of one method's chunk, image by image."""
    for k, im in enumerate(loaded):
        rows = np.flatnonzero(expl.image_index == k)
        for r in rows:
            several = len(rows) > 1
            attempt(
                run,
                im.source.path,
                lambda r=r, im=im, several=several: _write_row(
                    expl, int(r), im, s, out, run, seconds, several
                ),
                what=expl.method,
            )
        bar.update(1)


def _record_image(
    im: Loaded, logits: Array, labels: Sequence[str], out: OutDir, run: Run, head: str | None
) -> None:
    """The image's summary group and its input picture, once, with its first result."""
    stem = im.source.stem
    if stem in run.groups:
        return
    dst = out.root / stem / "input.png"
    make_folder(dst.parent)
    if out.overwrite or not dst.exists():
        write_image(dst, im.image)
    run.groups[stem] = {
        "source": str(im.source.path),
        "input": f"{stem}/input.png",
        "size": list(im.original_size or im.geometry.original_size),
        "display_size": list(im.geometry.original_size),
        "geometry": im.geometry.to_dict(),  # maps a .npy map back onto the photo
        "predictions": top_k(logits[None], labels, head=head)[0],
    }


def _write_row(
    expl: Explanation,
    r: int,
    im: Loaded,
    s: Settings,
    out: OutDir,
    run: Run,
    seconds: float,
    several: bool,
) -> None:
    """Write the chosen formats of one explanation row and add its summary item."""
    method, target = expl.method, int(expl.target[r])
    record = METHODS[method]
    raw = expl.maps[r]
    colour = record.output == "colour"
    prob = float(expl.target_prob[r])
    caption = f"target {expl.labels[target]} ({target}) p={prob:.3f}"
    title = f"{method}: {caption} - {im.source.stem}"
    pics = pictures(raw, im.image, im.geometry, colour=colour, formats=s.formats, title=title)
    files = {fmt: _name(im.source.stem, method, target, fmt, several) for fmt in s.formats}
    _record_image(im, expl.logits[r], expl.labels, out, run, expl.head)
    out.write_all({files[fmt]: _writer(raw if fmt == "npy" else pics[fmt]) for fmt in s.formats})
    run.items.append(
        {
            "key": _name(im.source.stem, method, target, "overlay", several),
            "group": im.source.stem,
            "kind": "explain",
            "method": method,
            "target": target,
            "target_label": expl.labels[target],
            "target_prob": round(prob, 6),
            "predicted": int(expl.predicted[r]),
            "predicted_label": expl.predicted_labels[r],
            "files": files,
            "caption": [method, caption],
            "seconds": round(seconds, 4),
            "map": _map_stats(raw),
            **_extras(expl, r),
        }
    )


def _writer(content: np.ndarray) -> Callable[[Path], None]:
    """Writes a raw map as ``.npy``, or a picture as an image, to the path it is given."""

    def write(path: Path) -> None:
        if path.suffix == ".npy":
            save_npy(path, content)
        else:
            write_image(path, content)

    return write


def _map_stats(raw: np.ndarray) -> dict[str, float]:
    """Minimum, maximum, mean and standard deviation of the raw map (float64 sums)."""
    flat = np.asarray(raw, dtype=np.float64)
    return {
        k: round(float(f(flat)), 6)
        for k, f in (("min", np.min), ("max", np.max), ("mean", np.mean), ("std", np.std))
    }


def _extras(expl: Explanation, r: int) -> dict[str, Any]:
    """Scalar per-row extras (e.g. the completeness error of Integrated Gradients)."""
    found = {}
    for key, value in expl.extras.items():
        arr = np.asarray(value)
        if arr.ndim == 1 and len(arr) == len(expl.target):
            found[key] = round(float(arr[r]), 6)
    return found
