"""The ``explain`` loop: batches of images through every chosen method, files and summary items.

Output names: ``<out>/<image-stem>/<method>.png`` (overlay), ``<method>.heatmap.png``,
``<method>.npy`` (raw map at native resolution, float32), ``<method>.panel.png``; when an image
is explained for several classes each name gets ``-<class index>`` after the method.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gradtap.cli.batch import Array, Progress, Run, Source, attempt, chunks, top_k
from gradtap.cli.errors import recoverable
from gradtap.cli.outputs import OutDir, OutputExistsError, save_npy
from gradtap.runtime.errors import ModelError
from gradtap.runtime.image.geometry import Geometry, to_input
from gradtap.runtime.image.read import DEFAULT_MAX_PIXELS, load_image
from gradtap.runtime.methods.base import Explanation
from gradtap.runtime.methods.registry import METHODS
from gradtap.runtime.present.overlay import write_image
from gradtap.runtime.present.pictures import explanation_panel, for_display, is_colour, pictures
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import TargetSpec, resolve

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


@dataclass
class Loaded:
    """An image read and preprocessed: model input, display image and geometry."""

    source: Source
    x: Array
    image: Array
    geometry: Geometry
    rows: list[int] | None = None


def options_for(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``--set`` options the method's signature accepts."""
    params = inspect.signature(METHODS[method]).parameters
    return {k: v for k, v in options.items() if k in params}


def accepted_options(methods: Sequence[str]) -> set[str]:
    """Keyword options any of ``methods`` accepts."""
    skip = {"session", "x", "target"}
    return {p for m in methods for p in inspect.signature(METHODS[m]).parameters} - skip


def run_explain(
    session: ExplainSession,
    sources: Sequence[Source],
    s: Settings,
    out: OutDir,
    run: Run,
    bar: Progress,
) -> None:
    """Explain every source with every method; results and failures go into ``run``."""
    disabled: set[str] = set()
    for chunk in chunks(sources, s.batch_size):
        loaded = [im for im in (_load(session, src, s, run) for src in chunk) if im is not None]
        loaded = _plan(session, loaded, s, out, run)
        if not loaded:
            bar.update(len(chunk) * len(s.methods))
            continue
        for method in s.methods:
            if method not in disabled:
                _explain_chunk(session, method, loaded, s, out, run, disabled)
            bar.update(len(chunk))


def _load(session: ExplainSession, src: Source, s: Settings, run: Run) -> Loaded | None:
    def read() -> Loaded:
        rgb = load_image(src.path, max_pixels=s.max_pixels)
        x, geometry = to_input(rgb, session.info)
        image, display = for_display(rgb, geometry, s.max_side)
        return Loaded(src, x, image, display)

    return attempt(run, src.path, read, what="read")


def _plan(
    session: ExplainSession, loaded: list[Loaded], s: Settings, out: OutDir, run: Run
) -> list[Loaded]:
    """Predict, resolve each image's target rows, refuse images whose outputs exist."""
    if not loaded:
        return []
    try:
        logits = session.logits(np.concatenate([im.x for im in loaded]))
    except recoverable() as err:  # a batch-level failure: retry image by image
        if len(loaded) == 1:
            run.failures.add(loaded[0].source.path, err, what="predict")
            return []
        return [im for one in loaded for im in _plan(session, [one], s, out, run)]
    rows = resolve(s.target, session.info.labels, len(loaded), logits)
    keep = []
    for k, im in enumerate(loaded):
        im.rows = [int(t) for t in rows.target[rows.image_index == k]]
        names = [_name(im, m, t, f) for m in s.methods for t in im.rows for f in s.formats]
        try:
            out.plan(names)
        except OutputExistsError as err:
            run.failures.add(im.source.path, str(err), what="outputs")
            continue
        _write_input(out, im)
        run.groups[im.source.stem] = {
            "source": str(im.source.path),
            "input": f"{im.source.stem}/input.png",
            "size": list(im.geometry.original_size),
            "geometry": im.geometry.to_dict(),  # maps a .npy map back onto the photo
            "predictions": top_k(logits[k : k + 1], session.info.labels)[0],
        }
        keep.append(im)
    return keep


def _write_input(out: OutDir, im: Loaded) -> None:
    dst = out.root / im.source.stem / "input.png"
    dst.parent.mkdir(parents=True, exist_ok=True)
    if out.overwrite or not dst.exists():
        write_image(dst, im.image)


def _name(im: Loaded, method: str, target: int, fmt: str) -> str:
    several = im.rows is not None and len(im.rows) > 1
    base = f"{method}-{target}" if several else method
    return f"{im.source.stem}/{base}{SUFFIX[fmt]}"


def _explain_chunk(
    session: ExplainSession,
    method: str,
    loaded: list[Loaded],
    s: Settings,
    out: OutDir,
    run: Run,
    disabled: set[str],
) -> None:
    """One method over a chunk; a failing chunk is retried image by image to isolate the bad one."""
    x = np.concatenate([im.x for im in loaded])
    start = time.perf_counter()
    try:
        expl = METHODS[method](session, x, s.target, **options_for(method, s.options))
    except ModelError as err:  # the method does not apply to this model at all
        run.failures.add(f"method {method}", err, what=method)
        disabled.add(method)
        return
    except recoverable() as err:
        if len(loaded) > 1:
            for one in loaded:
                _explain_chunk(session, method, [one], s, out, run, disabled)
        else:
            run.failures.add(loaded[0].source.path, err, what=method)
        return
    seconds = (time.perf_counter() - start) / max(1, len(expl.target))
    for r in range(len(expl.target)):
        im = loaded[int(expl.image_index[r])]
        attempt(
            run,
            im.source.path,
            lambda r=r, im=im: _write_row(expl, r, method, im, s, out, run, seconds),
            what=method,
        )


def _write_row(
    expl: Explanation,
    r: int,
    method: str,
    im: Loaded,
    s: Settings,
    out: OutDir,
    run: Run,
    seconds: float,
) -> None:
    """Write the chosen formats of one explanation row and add its summary item."""
    target = int(expl.target[r])
    raw = expl.maps[r]
    pics = pictures(raw, im.image, im.geometry)
    prob = float(expl.target_prob[r])
    caption = f"target {expl.labels[target]} ({target}) p={prob:.3f}"
    if "panel" in s.formats:
        title = f"{method}: {caption} - {im.source.stem}"
        pics["panel"] = explanation_panel(im.image, pics, title=title, colour=is_colour(raw))
    files = {fmt: _name(im, method, target, fmt) for fmt in s.formats}
    out.write_all({files[fmt]: _writer(raw if fmt == "npy" else pics[fmt]) for fmt in s.formats})
    run.items.append(
        {
            "key": _name(im, method, target, "overlay"),
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


def _extras(expl: Explanation, r: int) -> dict[str, Any]:
    """Scalar per-row extras (e.g. the completeness error of Integrated Gradients)."""
    found = {}
    for key, value in expl.extras.items():
        arr = np.asarray(value)
        if arr.ndim == 1 and len(arr) == len(expl.target):
            found[key] = round(float(arr[r]), 6)
    return found
