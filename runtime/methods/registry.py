"""METHODS: the explanation methods that return maps, by name (``gradtap explain -m``)."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError
from gradtap.runtime.methods.base import Explanation
from gradtap.runtime.methods.cam import cam, gradcam, gradcampp, guided_gradcam
from gradtap.runtime.methods.gradient import deconvnet, guided_backprop, saliency
from gradtap.runtime.methods.sampling import integrated_gradients, occlusion, smoothgrad
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import TargetSpec


class Method(Protocol):
    """``method(session, x, target=None, **options) -> Explanation``."""

    def __call__(
        self,
        session: ExplainSession,
        x: npt.NDArray[np.float32],
        target: TargetSpec = None,
        **options: Any,
    ) -> Explanation: ...


METHODS: dict[str, Method] = {
    "saliency": saliency,
    "deconvnet": deconvnet,
    "guided_backprop": guided_backprop,
    "cam": cam,
    "gradcam": gradcam,
    "gradcam++": gradcampp,
    "guided_gradcam": guided_gradcam,
    "smoothgrad": smoothgrad,
    "integrated_gradients": integrated_gradients,
    "occlusion": occlusion,
}


def get_method(name: str) -> Method:
    """Look a method up by name.

    Raises:
        OptionError: unknown name (the valid names are listed).
    """
    try:
        return METHODS[name]
    except KeyError:
        raise OptionError(f"unknown method {name!r}; valid: {sorted(METHODS)}") from None
