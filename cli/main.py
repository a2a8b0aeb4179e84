"""The ``gradtap`` command group: global options and the subcommands.

Only ``gradtap export`` imports torch, lazily; every other command runs on onnxruntime alone.
"""

from __future__ import annotations

import click

from gradtap.cli.commands.attack import attack
from gradtap.cli.commands.evaluate import evaluate_cmd
from gradtap.cli.commands.explain import explain
from gradtap.cli.commands.localize import localize
from gradtap.cli.commands.model import augment, export, info
from gradtap.cli.commands.visualize import visualize
from gradtap.cli.config import (
    MAX_THREADS,
    PROVIDER_ALIASES,
    Config,
    expand_providers,
    setup_logging,
)
from gradtap.cli.errors import GradtapGroup

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}


@click.group(context_settings=CONTEXT, cls=GradtapGroup)
@click.option(
    "--provider",
    "providers",
    multiple=True,
    metavar="NAME",
    help="onnxruntime execution provider, repeatable, in priority order: "
    f"{', '.join(PROVIDER_ALIASES)} or a full name such as CUDAExecutionProvider "
    "[default: CUDA then CPU when a GPU is usable, else CPU].",
)
@click.option(
    "--threads",
    type=click.IntRange(min=1, max=MAX_THREADS),
    help=f"onnxruntime intra-op threads, at most {MAX_THREADS} (4 per core) [default: all cores].",
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    show_default=False,
    help="More log output on stderr (-vv for debug).",
)
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr; no progress bars.")
@click.version_option(package_name="gradtap", prog_name="gradtap")
@click.pass_context
def cli(
    ctx: click.Context, providers: tuple[str, ...], threads: int | None, verbose: int, quiet: bool
) -> None:
    """Explain CNN image classifiers from one standard ONNX graph, without torch.

    \b
    Example:
      gradtap export efficientnet_lite0 --weights IMAGENET1K
      gradtap explain photos/ -M efficientnet_lite0 -m gradcam -m guided_backprop --out out/
      gradtap attack cat.jpg -M efficientnet_lite0 --eps 0.01

    Exit codes: 0 all good, 1 some inputs failed, 2 usage error, 130 interrupted.
    """
    verbosity = -1 if quiet else verbose
    setup_logging(verbosity)
    ctx.obj = Config(providers=expand_providers(providers), threads=threads, verbosity=verbosity)


for _command in (export, augment, info, explain, attack, visualize, localize, evaluate_cmd):
    cli.add_command(_command)

if __name__ == "__main__":  # pragma: no cover
    cli()
