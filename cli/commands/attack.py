"""``gradtap attack``: FGSM and iterative fooling images, with before/after predictions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from gradtap.cli.batch import FiniteRange, Run, Source, finish, model_record, sources, top_k
from gradtap.cli.config import Config
from gradtap.cli.modelref import open_session, resolve_model
from gradtap.cli.outputs import OutDir, save_npy
from gradtap.cli.shared import class_option, each_image, image_inputs, results_options, writable
from gradtap.runtime.image.geometry import to_input
from gradtap.runtime.image.read import load_image
from gradtap.runtime.methods.adversarial import Attack, fgsm, fool
from gradtap.runtime.present.overlay import panel, write_image
from gradtap.runtime.present.pictures import perturbation_picture
from gradtap.runtime.session import ExplainSession

FGSM_EPS = 0.01
UNIT = FiniteRange(min=0.0, max=1.0, min_open=True)


@dataclass(frozen=True)
class Settings:
    """What ``attack`` was asked to do, per image."""

    tag: str
    target: int | None
    eps: float | None
    steps: int
    step_size: float
    max_pixels: int


def _tag(target: int | None, steps: int) -> str:
    if steps > 1:
        return f"fool-{target}"
    return "fgsm" if target is None else f"fgsm-{target}"


def _attack(
    session: ExplainSession,
    x: np.ndarray,
    target: int | None,
    eps: float | None,
    steps: int,
    step_size: float,
) -> Attack:
    if steps > 1:
        return fool(session, x, target, step=step_size, eps=eps, max_steps=steps)
    return fgsm(session, x, FGSM_EPS if eps is None else eps, target=target)


def _row(attack: Attack, k: int, session: ExplainSession) -> dict[str, Any]:
    labels = session.info.labels
    before, after = (
        top_k(attack.logits_before[k : k + 1], labels, 1, head=session.info.head)[0][0],
        top_k(attack.logits_after[k : k + 1], labels, 1, head=session.info.head)[0][0],
    )
    adv8 = np.rint(attack.x[k : k + 1] * 255) / 255  # what the written 8-bit PNG holds
    after8 = int(session.logits(adv8.astype(np.float32)).argmax())
    return {
        "class": int(attack.cls[k]),
        "class_label": labels[int(attack.cls[k])],
        "targeted": attack.targeted,
        "success": bool(attack.success[k]),
        "steps": int(attack.steps[k]),
        "linf": round(float(attack.linf[k]), 6),
        "l2": round(float(attack.l2[k]), 6),
        "before": before,
        "after": after,
        "after_8bit_png": {"class": after8, "label": labels[after8]},
    }


def _names(src: Source, tag: str) -> dict[str, str]:
    kinds = (("image", ".png"), ("panel", ".panel.png"), ("npy", ".npy"))
    return {kind: f"{src.stem}/{tag}{suffix}" for kind, suffix in kinds}


def _write(
    out: OutDir,
    src: Source,
    tag: str,
    x: np.ndarray,
    attack: Attack,
    k: int,
    row: dict[str, Any],
    title: str,
) -> dict[str, str]:
    names = _names(src, tag)
    adv = attack.x[k].transpose(1, 2, 0)
    b, a = row["before"], row["after"]
    tiles = [
        (f"before: {b['label']}\np={b['prob']:.3f}", x[0].transpose(1, 2, 0)),
        (f"perturbation\nLinf={row['linf']:.4f}", perturbation_picture(attack.perturbation[k])),
        (f"after: {a['label']}\np={a['prob']:.3f}", adv),
    ]
    pictures = {"image": adv, "panel": panel(tiles, title=title)}
    out.write_all(
        {
            names["image"]: lambda p: write_image(p, pictures["image"]),
            names["panel"]: lambda p: write_image(p, pictures["panel"]),
            names["npy"]: lambda p: save_npy(p, attack.x[k]),
        }
    )
    return names


@click.command()
@image_inputs
@click.option(
    "--eps",
    type=UNIT,
    help="FGSM step, or the L-inf budget of the iterative attack, in [0, 1] pixel units "
    f"[default: {FGSM_EPS} for FGSM, no budget when iterative].",
)
@click.option(
    "-t",
    "--target",
    "--target-class",
    "target_class",
    metavar="CLASS",
    help="Push towards this class (index or name) [default: untargeted FGSM].",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=1,
    help="1 = FGSM; more = iterative fooling towards --target, stopping once fooled.",
)
@click.option(
    "--step-size",
    type=UNIT,
    default=1 / 255,
    help="Step of the iterative attack, in [0, 1] pixel units.",
)
@results_options("gradtap-out")
def attack(
    cfg: Config,
    images: tuple[str, ...],
    model: str | None,
    eps: float | None,
    target_class: str | None,
    steps: int,
    step_size: float,
    max_pixels: int,
    out: Path,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Adversarial images: FGSM (one step) or an iterative fooling image towards a class.

    Writes OUT/<image>/fgsm.png (or fool-<class>.png) at the model's input size, a
    before/perturbation/after .panel.png and the float image as .npy.

    \b
    Example:
      gradtap attack cat.jpg -M efficientnet_lite0 --eps 0.01
      gradtap attack cat.jpg -M efficientnet_lite0 -t "goldfish" --steps 50 --eps 0.05
    """
    if steps > 1 and target_class is None:
        raise click.UsageError("--steps > 1 (iterative fooling) needs -t/--target")
    path = resolve_model(model)
    session = open_session(cfg, str(path))
    target = class_option(target_class, session.info.labels)
    run = Run("attack", model=model_record(session, path))
    run.options = {"eps": eps, "target_class": target, "steps": steps, "step_size": step_size}
    outdir = writable(out, overwrite=overwrite)
    files = sources(images, run, cfg)
    settings = Settings(_tag(target, steps), target, eps, steps, step_size, max_pixels)
    each_image(
        cfg, run, files, "attacking", "attack", lambda s: _one(session, s, settings, outdir, run)
    )
    finish(cfg, outdir, run, as_json=as_json)


def _one(session: ExplainSession, src: Source, s: Settings, out: OutDir, run: Run) -> None:
    tag, target, eps, steps = s.tag, s.target, s.eps, s.steps
    out.plan(list(_names(src, tag).values()))
    x, _ = to_input(load_image(src.path, max_pixels=s.max_pixels), session.info)
    run.groups[src.stem] = {
        "source": str(src.path),
        "predictions": top_k(session.logits(x), session.info.labels, head=session.info.head)[0],
    }
    result = _attack(session, x, target, eps, steps, s.step_size)
    row = _row(result, 0, session)
    kind = f"fool towards {row['class_label']}" if steps > 1 else f"fgsm eps={eps or FGSM_EPS:g}"
    files = _write(out, src, tag, x, result, 0, row, f"{kind} - {src.stem}")
    status = "fooled" if row["success"] else "not fooled"
    caption = [
        f"{tag}: {row['before']['label']} -> {row['after']['label']}",
        f"{status}, {row['steps']} step(s), Linf {row['linf']:.4f}",
    ]
    run.items.append(
        {
            "key": files["image"],
            "group": src.stem,
            "kind": "attack",
            "method": tag,
            "files": files,
            "caption": caption,
            **row,
        }
    )
