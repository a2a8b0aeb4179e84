"""METHODS: the explanation methods that return maps, as records, by name (``gradtap explain -m``).

A record says what the CLI, the presentation, the :class:`~gradtap.runtime.Explainer` and the
evaluation need to know about a method without calling it or reading its signature: the paper,
whether it needs a tap (and the class weights of a GAP -> linear head), which rectifier rule it
runs, whether its maps are spatial ``[R, h, w]`` or colour ``[R, 3, H, W]``, whether they are
signed, and the keyword options it takes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError
from gradtap.runtime.methods import pair
from gradtap.runtime.methods.base import Explanation
from gradtap.runtime.methods.cam import cam, gradcam, gradcampp, guided_gradcam
from gradtap.runtime.methods.cam_score import ablationcam, scorecam
from gradtap.runtime.methods.cam_variants import (
    eigencam,
    eigengradcam,
    hirescam,
    layercam,
    xgradcam,
)
from gradtap.runtime.methods.fullgrad import fullgrad
from gradtap.runtime.methods.gradient import deconvnet, guided_backprop, saliency
from gradtap.runtime.methods.lrp import lrp
from gradtap.runtime.methods.perturb import gradient_shap, input_x_gradient, noise_tunnel, rise
from gradtap.runtime.methods.sampling import integrated_gradients, occlusion, smoothgrad
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import TargetSpec

MethodFunc = Callable[..., Explanation]
Output = Literal["spatial", "colour"]
_NOT_OPTIONS = frozenset({"session", "x", "target"})


@dataclass(frozen=True)
class Method:
    """One explanation method: ``method(session, x, target=None, **options) -> Explanation``.

    Attributes:
        name: the registry name (``-m NAME``).
        func: the function computing it.
        paper: where the method comes from.
        output: ``"spatial"`` maps [R, h, w] or ``"colour"`` gradient images [R, 3, H, W].
        needs_tap: reads a tap (the CAM family).
        needs_head: reads the class weights of a GAP -> linear head after the tap (CAM).
        rectifier: the ``relu_rule`` it runs (``"guided"``, ``"deconvnet"``), or None.
        signed: its maps keep a meaningful sign (shown with a diverging colour map).
        needs_bias: reads the graph's ``bias_grad/<k>`` outputs (FullGrad).
        options: keyword options the function accepts (derived from its signature).
    """

    name: str
    func: MethodFunc
    paper: str
    output: Output = "spatial"
    needs_tap: bool = False
    needs_head: bool = False
    rectifier: str | None = None
    signed: bool = False
    needs_bias: bool = False
    options: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        params = inspect.signature(self.func).parameters
        object.__setattr__(self, "options", tuple(p for p in params if p not in _NOT_OPTIONS))

    def __call__(
        self,
        session: ExplainSession,
        x: npt.NDArray[np.float32],
        target: TargetSpec = None,
        **options: Any,
    ) -> Explanation:
        return self.func(session, x, target, **options)

    def accepted(self, options: dict[str, Any]) -> dict[str, Any]:
        """The subset of ``options`` this method takes."""
        return {k: v for k, v in options.items() if k in self.options}


def _registry(*methods: Method) -> dict[str, Method]:
    return {m.name: m for m in methods}


METHODS: dict[str, Method] = _registry(
    Method("saliency", saliency, "https://arxiv.org/abs/1312.6034"),
    Method(
        "deconvnet",
        deconvnet,
        "https://arxiv.org/abs/1311.2901",
        output="colour",
        rectifier="deconvnet",
    ),
    Method(
        "guided_backprop",
        guided_backprop,
        "https://arxiv.org/abs/1412.6806",
        output="colour",
        rectifier="guided",
    ),
    Method("cam", cam, "https://arxiv.org/abs/1512.04150", needs_tap=True, needs_head=True),
    Method("gradcam", gradcam, "https://arxiv.org/abs/1610.02391", needs_tap=True),
    Method("gradcam++", gradcampp, "https://arxiv.org/abs/1710.11063", needs_tap=True),
    Method(
        "guided_gradcam",
        guided_gradcam,
        "https://arxiv.org/abs/1610.02391",
        output="colour",
        needs_tap=True,
        rectifier="guided",
    ),
    Method("smoothgrad", smoothgrad, "https://arxiv.org/abs/1706.03825"),
    Method(
        "integrated_gradients",
        integrated_gradients,
        "https://arxiv.org/abs/1703.01365",
        signed=True,
    ),
    Method("occlusion", occlusion, "https://arxiv.org/abs/1311.2901", signed=True),
    Method("hirescam", hirescam, "https://arxiv.org/abs/2011.08891", needs_tap=True),
    Method("xgradcam", xgradcam, "https://arxiv.org/abs/2008.02312", needs_tap=True),
    Method("layercam", layercam, "https://doi.org/10.1109/TIP.2021.3089943", needs_tap=True),
    Method("eigencam", eigencam, "https://arxiv.org/abs/2008.00299", needs_tap=True),
    Method("eigengradcam", eigengradcam, "https://arxiv.org/abs/2008.00299", needs_tap=True),
    Method("scorecam", scorecam, "https://arxiv.org/abs/1910.01279", needs_tap=True),
    Method(
        "ablationcam",
        ablationcam,
        "https://doi.org/10.1109/WACV45572.2020.9093360",
        needs_tap=True,
    ),
    Method("input_x_gradient", input_x_gradient, "https://arxiv.org/abs/1605.01713", signed=True),
    Method("gradient_shap", gradient_shap, "https://arxiv.org/abs/1705.07874", signed=True),
    Method("noise_tunnel", noise_tunnel, "https://arxiv.org/abs/1810.03307"),
    Method("rise", rise, "https://arxiv.org/abs/1806.07421"),
    Method("fullgrad", fullgrad, "https://arxiv.org/abs/1905.00780", needs_bias=True),
    Method(
        "lrp",
        lrp,
        "https://doi.org/10.1371/journal.pone.0130140",
        rectifier="lrp_epsilon_plus",  # the default composite: graphs without LRP are skipped
        signed=True,
    ),
)
if pair.available():  # PAIR saliency's methods over the session (the `pair` extra)
    METHODS.update(
        _registry(
            Method("xrai", pair.xrai, "https://arxiv.org/abs/1906.02825"),
            Method("blur_ig", pair.blur_ig, "https://arxiv.org/abs/2004.03383", signed=True),
            Method("guided_ig", pair.guided_ig, "https://arxiv.org/abs/2106.09788", signed=True),
        )
    )


def get_method(name: str) -> Method:
    """Look a method up by name.

    Raises:
        OptionError: unknown name (the valid names are listed).
    """
    try:
        return METHODS[name]
    except KeyError:
        raise OptionError(f"unknown method {name!r}; valid: {sorted(METHODS)}") from None
