"""A prototype of the proposed runtime fast path, for measuring it before the runtime adopts it.

Two changes, both measured by ``bench.experiments`` and by the ``gradtap_fast`` column:

- one process-wide onnxruntime thread pool for all graph variants. Today every variant session
  (full, taps, forward) has its own intra-op pool; a method that alternates variants (FGSM,
  Guided Grad-CAM, class visualisation) leaves the last pool's worker spinning on the second
  core while the next session runs.
- the backward pass's stride-1 ConvTranspose nodes run as Conv (see ``bench.rewrites``).
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort

from bench.rewrites import transposed_as_conv
from gradtap.runtime import ExplainSession
from gradtap.runtime import session as session_module

POOLS = ("per_session", "no_spinning", "global")


def use_pools(mode: str, threads: int) -> None:
    """Make every ExplainSession created from now on use thread pools of kind ``mode``.

    ``global`` must be chosen before the process creates its first onnxruntime session.
    """
    if mode == "per_session":
        return
    if mode == "global":
        ort.set_global_thread_pool_sizes(threads, 1)
    original = session_module._options  # noqa: SLF001 - the prototype patches the runtime

    def options(count: int | None) -> ort.SessionOptions:
        opts = original(count)
        if mode == "global":
            opts.use_per_session_threads = False
        else:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return opts

    session_module._options = options  # noqa: SLF001


def fast_session(path: str | Path, threads: int) -> ExplainSession:
    """An ExplainSession with one shared thread pool and the backward convolutions as Conv."""
    use_pools("global", threads)
    model, _ = transposed_as_conv(onnx.load(str(path)))
    return ExplainSession(model, threads=threads)
