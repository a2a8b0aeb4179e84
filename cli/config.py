"""The global options every command sees (click's ``ctx.obj``), and logging set-up."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import click

# More intra-op threads than this only contend for the cores (1,000 threads on 2 cores stall).
MAX_THREADS = 4 * (os.cpu_count() or 1)
# Short provider names accepted by --provider, and what each expands to (CPU always last).
PROVIDER_ALIASES: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    "openvino": ("OpenVINOExecutionProvider", "CPUExecutionProvider"),
    "coreml": ("CoreMLExecutionProvider", "CPUExecutionProvider"),
    "dml": ("DmlExecutionProvider", "CPUExecutionProvider"),
}


@dataclass(frozen=True)
class Config:
    """Global settings.

    Attributes:
        providers: onnxruntime execution providers in priority order; ``None`` = gradtap's default
            (CUDA then CPU when a GPU is usable, else CPU).
        threads: intra-op threads for onnxruntime; ``None`` = onnxruntime's default.
        verbosity: -1 quiet, 0 normal, 1 info (-v), 2 debug (-vv).
    """

    providers: tuple[str, ...] | None = None
    threads: int | None = None
    verbosity: int = 0

    @property
    def quiet(self) -> bool:
        """Whether -q was given."""
        return self.verbosity < 0

    def show_progress(self) -> bool:
        """Progress bars only on an interactive stderr and without -q."""
        return not self.quiet and sys.stderr.isatty()

    def note(self, message: str) -> None:
        """A human-readable line on stderr, unless -q."""
        if not self.quiet:
            click.echo(message, err=True)


def expand_providers(values: tuple[str, ...]) -> tuple[str, ...] | None:
    """``--provider`` values (short aliases or full onnxruntime names) to a provider list."""
    if not values:
        return None
    out: list[str] = []
    for value in values:
        for name in PROVIDER_ALIASES.get(value.lower(), (value,)):
            if name not in out:
                out.append(name)
    if "CPUExecutionProvider" in out:  # keep the CPU fallback last
        out.remove("CPUExecutionProvider")
        out.append("CPUExecutionProvider")
    return tuple(out)


def setup_logging(verbosity: int) -> None:
    """Log to stderr: warnings by default, info with -v, debug with -vv, errors only with -q."""
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("gradtap: %(levelname)s: %(message)s"))
    root = logging.getLogger("gradtap")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # Library warnings (Pillow on odd EXIF data, for instance) are details: shown with -v.
    logging.captureWarnings(True)
    warned = logging.getLogger("py.warnings")
    warned.handlers[:] = [handler]
    warned.setLevel(logging.WARNING if verbosity >= 1 else logging.ERROR)
    warned.propagate = False
