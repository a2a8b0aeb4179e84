"""The trust checks of ``gradtap evaluate`` on the first images of a set: input invariance,
fragility and the peers' metrics (:mod:`~gradtap.runtime.evaluate.invariance`,
:mod:`~gradtap.runtime.evaluate.fragility`, :mod:`~gradtap.runtime.evaluate.peers`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError
from gradtap.runtime.evaluate import metrics, peers
from gradtap.runtime.evaluate.fragility import DEFAULT_EPS, FragilityCurve, fragility
from gradtap.runtime.evaluate.invariance import (
    DEFAULT_SHIFT,
    TWIN_METHODS,
    InvarianceResult,
    input_invariance,
)
from gradtap.runtime.evaluate.maps import RANDOM, MapSettings, compute_maps
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import softmax

Array = npt.NDArray[np.float32]
PEER_METRICS = ("road", "drop", "increase", "infidelity", "sensitivity", "region")
REGION_CELLS = 8
"""Region perturbation: the image is cut into REGION_CELLS x REGION_CELLS patches (8 px at 64 px)."""


@dataclass(frozen=True)
class ChecksConfig:
    """Which trust checks run, on how many images (the first ones of the set).

    Attributes:
        images: images checked (0: no checks).
        invariance: run the input-shifted twin check, with input ``shift``.
        fragility: run the fragility check at radii ``eps`` (pixels in [0, 1]).
        peers: compute the peers' metrics; ``sensitivity_samples`` perturbations per image.
    """

    images: int = 8
    invariance: bool = True
    shift: float = DEFAULT_SHIFT
    fragility: bool = True
    eps: tuple[float, ...] = DEFAULT_EPS
    peers: bool = True
    sensitivity_samples: int = 4

    def __post_init__(self) -> None:
        if self.images < 0 or self.sensitivity_samples < 1:
            raise OptionError("check images must be >= 0 and sensitivity samples >= 1")
        if self.eps and not all(0 < e < 1 for e in self.eps):
            raise OptionError(f"fragility eps must lie in (0, 1), got {list(self.eps)}")


@dataclass(frozen=True)
class PeerScores:
    """One method's peer metrics, per checked image (see :mod:`peers`)."""

    method: str
    road: npt.NDArray[np.float64]
    drop: npt.NDArray[np.float64]
    increase: npt.NDArray[np.float64]
    infidelity: npt.NDArray[np.float64]
    sensitivity: npt.NDArray[np.float64]
    region: npt.NDArray[np.float64]


@dataclass(frozen=True)
class Checks:
    """What the trust checks measured."""

    images: int
    invariance: InvarianceResult | None
    fragility: tuple[FragilityCurve, ...]
    peers: tuple[PeerScores, ...]
    notes: tuple[str, ...] = ()


def _peer_scores(
    session: ExplainSession,
    method: str,
    x: Array,
    targets: npt.NDArray[np.int64],
    maps: Array,
    settings: MapSettings,
    config: ChecksConfig,
) -> PeerScores:
    std = float(np.mean(session.info.std)) if session.info.std else 1.0
    patch = max(1, x.shape[-1] // REGION_CELLS)

    def probs(b: Array) -> Array:
        return softmax(session.forward(np.asarray(b, np.float32)))

    rows = []
    for i, (img, m) in enumerate(zip(x, maps, strict=True)):
        t = int(targets[i])

        def prob(b: Array, t: int = t) -> Array:
            return softmax(session.forward(np.asarray(b, np.float32)))[:, t]

        def explain(b: Array, t: int = t) -> Array:
            b = np.clip(b, 0.0, 1.0).astype(np.float32)
            return compute_maps(session, method, b, np.full(len(b), t), settings)

        road = peers.road(prob, img, m, noise=peers.ROAD_NOISE * std, seed=i)[0]
        drop, inc = peers.confidence_change(prob, img, m)
        infid = peers.infidelity(prob, img, m, seed=i)
        sens = peers.max_sensitivity(explain, img, m, samples=config.sensitivity_samples, seed=i)
        region = metrics.deletion(
            probs, img, peers.region_map(m, patch), t, step=patch * patch, batch_size=64
        ).auc
        rows.append((road, drop, inc, infid, sens, region))
    cols = np.array(rows, np.float64).T
    return PeerScores(method, *cols)


def run_checks(
    session: ExplainSession,
    x: Array,
    targets: npt.NDArray[np.int64],
    methods: Sequence[str],
    config: ChecksConfig,
    settings: MapSettings,
) -> Checks | None:
    """Run the checks of ``config`` on the first ``config.images`` images of ``x``."""
    k = min(config.images, len(x))
    if k == 0:
        return None
    x, targets = x[:k], targets[:k]
    inv, notes = None, []
    if config.invariance:
        twin = [m for m in TWIN_METHODS if m in methods or m == "gradient_x_input"]
        try:
            inv = input_invariance(
                session, x, targets, twin, shift=config.shift, steps=settings.samples
            )
        except ValueError as err:  # the graph's first layer cannot absorb a shift
            notes.append(f"Input invariance not checked: {err}")
    frag: tuple[FragilityCurve, ...] = ()
    if config.fragility and config.eps:
        frag = fragility(session, x, targets, methods, eps=config.eps, settings=settings)
    scores = []
    if config.peers:
        for m in (m for m in methods if m != RANDOM):
            maps = compute_maps(session, m, x, targets, settings)
            scores.append(_peer_scores(session, m, x, targets, maps, settings, config))
    return Checks(k, inv, frag, tuple(scores), tuple(notes))


def _num(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.3f}"


def to_markdown(checks: Checks, heading: str = "####") -> str:
    """The three checks as markdown tables."""
    lines: list[str] = []
    if checks.peers:
        lines += [
            f"{heading} The peers' metrics",
            "",
            f"Means over the first {checks.images} images. ROAD (pytorch-grad-cam's definition, "
            "percentiles 10-90, noisy linear imputation) ↑; average drop (Chattopadhyay et al.: "
            "relative to the original probability) ↓ and increase in confidence ↑ of the image "
            "times the map; infidelity (captum, normalised, Gaussian σ 0.05 per pixel, 16 "
            "samples) ↓; max-sensitivity (captum, uniform radius 0.02) ↓; region perturbation "
            f"(Samek et al., as Quantus: {REGION_CELLS} x {REGION_CELLS} patches deleted to black "
            "in the order of their summed relevance, AUC of the probability) ↓.",
            "",
            "| Method | ROAD ↑ | Avg. drop ↓ | Increase ↑ | Infidelity ↓ | Max-sensitivity ↓ "
            "| Region pert. AUC ↓ |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in checks.peers:
            vals = [f"{float(np.mean(getattr(s, k))):.3g}" for k in PEER_METRICS]
            lines.append(f"| {s.method} | " + " | ".join(vals) + " |")
        lines.append("")
    if checks.invariance is not None:
        inv = checks.invariance
        shift = ", ".join(f"{v:g}" for v in inv.shift)
        lines += [
            f"{heading} Input invariance",
            "",
            f"The twin takes pixels shifted by ({shift}), absorbed by `{inv.absorbed.initializer}` "
            f"({inv.absorbed.op_type} `{inv.absorbed.node}`); largest logit difference "
            f"{inv.logit_difference:.2g}. Change: max |twin map − map| / max |map|, worst image.",
            "",
            "| Method | Unchanged | Change (worst image) | Spearman ρ (worst image) |",
            "|---|---|---|---|",
        ]
        for r in inv.rows:
            yes = "yes" if r.invariant else "**no**"
            lines.append(
                f"| {r.method} | {yes} | {_num(float(r.change.max()))} | "
                f"{_num(float(np.nanmin(r.spearman)))} |"
            )
        lines.append("")
    if checks.fragility:
        eps = checks.fragility[0].eps
        columns = " | ".join(f"ε = {e * 255:.0f}/255" for e in eps)
        lines += [
            f"{heading} Fragility",
            "",
            "Top-k intersection (k = 2 % of the pixels) of the map before and after a "
            "perturbation that keeps the predicted class; 1 = the same top pixels.",
            "",
            f"| Method | Perturbation | {columns} |",
            "|---|---|" + "---|" * len(eps),
        ]
        for c in checks.fragility:
            cells = " | ".join(_num(v) for v in c.intersection)
            lines.append(f"| {c.method} | {c.kind} | {cells} |")
        lines.append("")
    lines += [*checks.notes, ""] if checks.notes else []
    return "\n".join(lines)


def to_dict(checks: Checks) -> dict[str, Any]:
    """JSON-ready record of the checks."""
    record: dict[str, Any] = {"images": checks.images, "notes": list(checks.notes)}
    record["peers"] = {
        s.method: {k: getattr(s, k).tolist() for k in PEER_METRICS} for s in checks.peers
    }
    if checks.invariance is not None:
        inv = checks.invariance
        record["invariance"] = {
            "shift": list(inv.shift),
            "absorbed": vars(inv.absorbed),
            "logit_difference": inv.logit_difference,
            "methods": {
                r.method: {
                    "unchanged": r.invariant,
                    "change": r.change.tolist(),
                    "spearman": r.spearman.tolist(),
                }
                for r in inv.rows
            },
        }
    record["fragility"] = [
        {
            "method": c.method,
            "kind": c.kind,
            "eps": list(c.eps),
            "intersection": list(c.intersection),
            "kept": list(c.kept),
        }
        for c in checks.fragility
    ]
    return record
