"""An evaluation as a markdown table, a JSON record, and a folder of report files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from gradtap.runtime.evaluate.maps import RANDOM
from gradtap.runtime.present.overlay import write_image
from gradtap.runtime.present.page import markdown_page

if TYPE_CHECKING:
    from gradtap.runtime.evaluate.cascade import SanityCurve
    from gradtap.runtime.evaluate.result import EvalResult, MethodScores

Floats = npt.NDArray[np.float64]
METRICS = ("pointing", "pointing_wide", "energy", "deletion", "insertion", "iou")
HEADER = (
    "| Method | Pointing ↑ | Pointing, wide ↑ | Energy PG ↑ | Deletion AUC ↓ | Insertion AUC ↑ | "
    "Del. < random | Ins. > random | GrabCut IoU ↑ | Sanity ρ, top layer | "
    "Sanity ρ, all layers ↓ | Sanity SSIM, all layers ↓ | ms / image |"
)
FILES = {
    "markdown": "evaluation.md",
    "html": "evaluation.html",
    "json": "evaluation.json",
    "sanity": "sanity.png",
    "curves": "curves.png",
    "examples": "examples.png",
}


def mean_sem(values: Floats) -> tuple[float, float]:
    """Mean and standard error of the mean (0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    sem = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0
    return float(v.mean()), sem


def _pm(values: Floats) -> str:
    mean, sem = mean_sem(values)
    return f"{mean:.3f} ± {sem:.3f}"


def _num(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def beats_random(result: EvalResult, s: MethodScores) -> tuple[float, float]:
    """Share of images where the method's deletion AUC is below, and its insertion AUC above,
    the random baseline's on the same image (NaN without the baseline)."""
    base = next((b for b in result.scores if b.method == RANDOM), None)
    if base is None:
        return math.nan, math.nan
    return float(np.mean(s.deletion < base.deletion)), float(np.mean(s.insertion > base.insertion))


def _sanity_cells(result: EvalResult, method: str) -> list[str]:
    curve = next((c for c in result.sanity if c.method == method), None)
    if curve is None:
        return ["—"] * 3
    top = _num(curve.spearman[0]) if curve.depth[0] == 1 else "—"
    return [top, _num(curve.spearman[-1]), _num(curve.ssim[-1])]  # the cascade ends with all


def _row(result: EvalResult, s: MethodScores) -> str:
    wins = beats_random(result, s)
    cells = [s.method] + [_pm(getattr(s, k)) for k in METRICS[:5]]
    cells += ["—" if s.method == RANDOM else _num(w) for w in wins]
    cells += [_pm(s.iou)] + _sanity_cells(result, s.method)
    cells += [f"{1000 * s.seconds / result.n_images:.1f}"]
    return "| " + " | ".join(cells) + " |"


def settings_text(result: EvalResult) -> str:
    """One paragraph with every setting the numbers depend on."""
    c, h = result.config, result.examples.images.shape[1] if len(result.examples.images) else 0
    text = (
        f"Deletion to `{c.substrate}`, insertion from a Gaussian blur (σ = {result.blur_sigma:.2g} "
        f"px), {c.curve_steps} stages of {result.step} pixels, softmax probability of the "
        f"target, trapezoid AUC. Pointing-game tolerance {c.tolerance:g} px, wide "
        f"{c.wide_tolerance:g} px, {'holes filled' if c.fill_holes else 'exact mask'}. SmoothGrad "
        f"{c.maps.samples} samples (noise 0.15), Integrated Gradients {c.maps.samples} "
        f"Gauss-Legendre points from black, occlusion window {c.maps.occlusion_window:.3g} and "
        f"stride {c.maps.occlusion_stride:.3g} of the input side. GrabCut seeded from the map "
        "(top 5% foreground, bottom 30% background)."
    )
    if result.sanity:
        first = result.sanity[0]
        text += (
            f" Sanity check on the first {min(c.sanity_images, result.n_images)} images: "
            f"cascading re-initialisation (seed {c.seed}) of {first.depth[-1]} layers from the "
            f"logits down, depths {', '.join(map(str, first.depth))}; ρ is the Spearman "
            "correlation of |map| between the original and randomised model's maps, SSIM "
            "compares maps scaled by their maximum."
        )
    return text + (f" Input {h}×{h} px." if h else "")


def to_markdown(result: EvalResult, *, heading: str = "###", plots: bool = False) -> str:
    """The results table with its caption, settings, skipped methods and (optionally) plots."""
    lines = [
        f"{heading} {result.model} on {result.dataset}",
        "",
        f"{result.n_images} images, ground truth: {result.mask_kind}; top-1 accuracy "
        f"{result.accuracy:.3f}. Maps explain the ground-truth class; mean ± standard error "
        "over images; the sanity columns are means over the sanity-check images.",
        "",
        HEADER,
        "|" + "---|" * (HEADER.count("|") - 1),
    ]
    lines += [_row(result, s) for s in result.scores]
    lines += ["", settings_text(result)]
    undefined = {c.method: sum(c.undefined) for c in result.sanity if sum(c.undefined)}
    if undefined:
        counts = ", ".join(f"{m} {k}" for m, k in undefined.items())
        lines += [
            "",
            "Spearman undefined (a constant randomised map, left out of the mean) for "
            f"image × depth pairs: {counts}.",
        ]
    if result.skipped:
        lines += [""] + [f"Skipped {m}: {why}" for m, why in result.skipped.items()]
    if result.checks is not None:
        from gradtap.runtime.evaluate.checks import to_markdown as checks_markdown

        lines += ["", checks_markdown(result.checks, heading=heading + "#").rstrip()]
    if plots:
        lines += ["", "![deletion and insertion curves](curves.png)"]
        if result.sanity:
            lines += ["", "![sanity check cascade](sanity.png)"]
        if len(result.examples.images) and result.examples.maps:
            lines += ["", "![example maps](examples.png)"]
    return "\n".join(lines) + "\n"


def _clean(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else round(float(value), 5)
    if isinstance(value, np.ndarray):
        return [_clean(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, np.integer):
        return int(value)
    return value


def _method_record(result: EvalResult, s: MethodScores) -> dict[str, Any]:
    record: dict[str, Any] = {
        k: dict(zip(("mean", "sem"), mean_sem(getattr(s, k)), strict=True)) for k in METRICS
    }
    wins = beats_random(result, s)
    record["deletion_below_random"], record["insertion_above_random"] = wins
    record["ms_per_image"] = 1000 * s.seconds / result.n_images
    record["per_image"] = {k: getattr(s, k) for k in METRICS}
    record["curves"] = {
        "fractions": s.fractions,
        "deletion": s.deletion_curve,
        "insertion": s.insertion_curve,
    }
    return record


def _sanity_record(c: SanityCurve) -> dict[str, Any]:
    keys = ("depth", "layers", "spearman", "spearman_signed", "ssim", "undefined")
    return {k: list(getattr(c, k)) for k in keys}


def to_dict(result: EvalResult) -> dict[str, Any]:
    """JSON-ready record of the evaluation (NaN becomes null)."""
    c = result.config
    record = {
        "model": {"name": result.model, "weights": result.weights},
        "dataset": {
            "name": result.dataset,
            "ground_truth": result.mask_kind,
            "n_images": result.n_images,
            "accuracy": result.accuracy,
            "targets": result.targets,
        },
        "settings": {
            "methods": list(c.methods),
            "curve_steps": c.curve_steps,
            "pixels_per_step": result.step,
            "substrate": c.substrate,
            "blur_sigma": result.blur_sigma,
            "tolerance": c.tolerance,
            "wide_tolerance": c.wide_tolerance,
            "fill_holes": c.fill_holes,
            "samples": c.maps.samples,
            "occlusion_window": c.maps.occlusion_window,
            "occlusion_stride": c.maps.occlusion_stride,
            "sanity": c.sanity,
            "sanity_images": c.sanity_images,
            "sanity_steps": c.sanity_steps,
            "seed": c.seed,
        },
        "methods": {s.method: _method_record(result, s) for s in result.scores},
        "sanity": {curve.method: _sanity_record(curve) for curve in result.sanity},
        "skipped": dict(result.skipped),
        "seconds": result.seconds,
    }
    if result.checks is not None:
        from gradtap.runtime.evaluate.checks import to_dict as checks_dict

        record["checks"] = checks_dict(result.checks)
    return _clean(record)


def write_report(result: EvalResult, out: str | Path) -> dict[str, Path]:
    """Write evaluation.md, evaluation.html, evaluation.json and the PNG figures into ``out``.

    Returns:
        What was written, by kind (``FILES`` keys); no sanity plot without a sanity check.
    """
    from gradtap.runtime.evaluate.plot import curves_figure, examples_figure, sanity_figure

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    written = {"curves": write_image(root / FILES["curves"], curves_figure(result))}
    if result.sanity:
        written["sanity"] = write_image(root / FILES["sanity"], sanity_figure(result))
    if len(result.examples.images) and result.examples.maps:
        written["examples"] = write_image(root / FILES["examples"], examples_figure(result))
    md = root / FILES["markdown"]
    markdown = to_markdown(result, heading="##", plots=True)
    md.write_text(markdown, encoding="utf-8")
    page = root / FILES["html"]
    page.write_text(markdown_page(markdown, title=f"gradtap evaluation: {result.model}"), "utf-8")
    data = root / FILES["json"]
    data.write_text(json.dumps(to_dict(result), indent=1, ensure_ascii=False), encoding="utf-8")
    return {"markdown": md, "html": page, "json": data, **written}
