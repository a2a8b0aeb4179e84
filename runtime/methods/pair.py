"""PAIR saliency (pip ``saliency``, the ``pair`` extra) over an explanation graph.

:func:`call_model_function` turns an :class:`ExplainSession` and a target class into the
``call_model_function`` PAIR's ``saliency.core`` methods take: batches of channels-last images
in, input gradients, tap values and tap gradients (of the target logit) and the target logit
out, each from one fused session call. XRAI and Blur IG run on it unchanged and are registered
as ``xrai`` and ``blur_ig`` when ``saliency`` is installed. PAIR's Guided IG (0.2.1) calls
``np.quantile(..., interpolation=...)``, a keyword numpy 2 removed (``method=`` since numpy
1.22); ``guided_ig`` runs it with its module seeing numpy through :class:`_QuantileKeyword`,
which passes that keyword on under its new name, and nothing else changed.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError
from gradtap.runtime.methods.base import Explanation, finish, prepare
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import TargetSpec, onehot

Array = npt.NDArray[np.float32]

INPUT_GRADIENTS = "INPUT_OUTPUT_GRADIENTS"
TAP_VALUES = "CONVOLUTION_LAYER_VALUES"
TAP_GRADIENTS = "CONVOLUTION_OUTPUT_GRADIENTS"
OUTPUT_VALUES = "OUTPUT_LAYER_VALUES"


def available() -> bool:
    """Whether PAIR's ``saliency`` package is installed (looked up, not imported: it pulls in
    scikit-image and SciPy, which the CLI's start-up should not pay for)."""
    return importlib.util.find_spec("saliency") is not None


def call_model_function(
    session: ExplainSession, target: int, *, tap: str | None = None
) -> Callable[..., dict[str, Array]]:
    """PAIR's ``call_model_function(x_batch, call_model_args, expected_keys)`` for ``target``.

    ``x_batch`` is [N, H, W, 3] RGB pixels (channels last, as PAIR passes them); the returned
    arrays are channels last as well.
    """
    alias = session.info.tap(tap) if session.info.taps else None

    def call(
        x_batch: Array, call_model_args: Any = None, expected_keys: Sequence[str] | None = None
    ) -> dict[str, Array]:
        keys = set(expected_keys or (INPUT_GRADIENTS,))
        x = np.ascontiguousarray(np.asarray(x_batch, np.float32).transpose(0, 3, 1, 2))
        seed = onehot(np.full(len(x), target, np.int64), session.info.num_classes)
        wants_tap = bool(keys & {TAP_VALUES, TAP_GRADIENTS})
        if wants_tap and alias is None:
            raise OptionError(f"model {session.info.name!r} has no tap for {sorted(keys)}")
        run = session.run(
            x,
            seed,
            grad_input=INPUT_GRADIENTS in keys,
            taps=[alias] if wants_tap and alias else [],
        )
        out: dict[str, Array] = {OUTPUT_VALUES: run.logits[:, target]}
        if INPUT_GRADIENTS in keys:
            out[INPUT_GRADIENTS] = run.grad_input.transpose(0, 2, 3, 1)
        if wants_tap and alias:
            out[TAP_VALUES] = run.taps[alias].transpose(0, 2, 3, 1)
            out[TAP_GRADIENTS] = run.tap_grads[alias].transpose(0, 2, 3, 1)
        return out

    return call


def _each_row(
    name: str,
    session: ExplainSession,
    x: Array,
    target: TargetSpec,
    mask: Callable[[Any, Array, Callable[..., dict[str, Array]]], Array],
) -> Explanation:
    if not available():
        raise OptionError(f"{name} needs PAIR saliency: pip install 'gradtap[pair]'")
    import saliency.core as sc

    prep = prepare(session, x, target)
    maps = []
    for image, t in zip(prep.x, prep.rows.target, strict=True):
        m = mask(sc, image.transpose(1, 2, 0), call_model_function(session, int(t)))
        maps.append(m.sum(axis=2) if m.ndim == 3 else m)
    return finish(name, np.stack(maps), prep, session)


def xrai(
    session: ExplainSession, x: Array, target: TargetSpec = None, *, batch_size: int = 16
) -> Explanation:
    """XRAI (Kapishnikov et al. 2019, https://arxiv.org/abs/1906.02825) by PAIR saliency.

    Returns:
        Maps [R, H, W]: region-level attributions.
    """
    return _each_row(
        "xrai",
        session,
        x,
        target,
        lambda sc, im, f: sc.XRAI().GetMask(im, f, batch_size=batch_size),
    )


def blur_ig(
    session: ExplainSession,
    x: Array,
    target: TargetSpec = None,
    *,
    steps: int = 20,
    max_sigma: float = 50.0,
    batch_size: int = 16,
) -> Explanation:
    """Blur IG (Xu et al. 2020, https://arxiv.org/abs/2004.03383) by PAIR saliency.

    Returns:
        Maps [R, H, W]: channel sums of the attributions.
    """
    return _each_row(
        "blur_ig",
        session,
        x,
        target,
        lambda sc, im, f: sc.BlurIG().GetMask(
            im, f, max_sigma=max_sigma, steps=steps, batch_size=batch_size
        ),
    )


class _QuantileKeyword:
    """numpy as PAIR's Guided IG module sees it: ``quantile(interpolation=)`` becomes
    ``quantile(method=)``; every other name is numpy's own."""

    def __init__(self, numpy: ModuleType) -> None:
        self._numpy = numpy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._numpy, name)

    def quantile(self, a: Any, q: Any, *args: Any, interpolation: Any = None, **kw: Any) -> Any:
        if interpolation is not None:
            kw.setdefault("method", interpolation)
        return self._numpy.quantile(a, q, *args, **kw)


_SHIM_LOCK = threading.Lock()  # the swap is a module global: one Guided IG at a time


@contextmanager
def numpy2_guided_ig() -> Iterator[None]:
    """Within the block, PAIR's Guided IG runs on numpy 2 (see :class:`_QuantileKeyword`)."""
    import saliency.core.guided_ig as module

    with _SHIM_LOCK:
        real = module.np
        module.np = _QuantileKeyword(real)
        try:
            yield
        finally:
            module.np = real


def guided_ig(
    session: ExplainSession,
    x: Array,
    target: TargetSpec = None,
    *,
    steps: int = 200,
    fraction: float = 0.25,
    max_dist: float = 0.02,
) -> Explanation:
    """Guided IG (Kapishnikov et al. 2021, https://arxiv.org/abs/2106.09788) by PAIR saliency.

    From a black baseline; each of the ``steps`` session calls moves the ``fraction`` of the
    pixels with the smallest |gradient|, at most ``max_dist`` (share of the L1 distance) off
    the straight line (``max_dist = 0`` is Integrated Gradients on the straight line).

    Returns:
        Maps [R, H, W]: channel sums of the attributions.
    """

    def mask(sc: Any, im: Array, f: Callable[..., dict[str, Array]]) -> Array:
        with numpy2_guided_ig():
            return sc.GuidedIG().GetMask(
                im, f, x_baseline=np.zeros_like(im), x_steps=steps, fraction=fraction,
                max_dist=max_dist,
            )  # fmt: skip

    return _each_row("guided_ig", session, x, target, mask)
