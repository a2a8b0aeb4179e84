"""The gradtap side: every method through ``gradtap.runtime``'s public API; never imports torch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bench import config as cfg
from gradtap.runtime import (
    AscentConfig,
    ExplainSession,
    class_visualization,
    fgsm,
    gradcam,
    guided_backprop,
    guided_gradcam,
    integrated_gradients,
    occlusion,
    saliency,
    smoothgrad,
)

Array = npt.NDArray[np.float32]
Case = Callable[[], object]


class GradtapSide:
    """One augmented model in an :class:`ExplainSession`."""

    def __init__(self, path: str | Path, *, threads: int) -> None:
        self.session = ExplainSession(path, threads=threads)
        self.input_size: tuple[int, int] = tuple(self.session.info.input_size)  # type: ignore[assignment]
        self.num_classes = self.session.info.num_classes

    def logits(self, x: Array) -> Array:
        """Forward pass only."""
        return self.session.logits(x)

    def cases(self, x: Array, target: int) -> dict[str, Case]:
        """One zero-argument call per method, on images ``x`` explaining class ``target``."""
        s, n = self.session, len(x)
        st = cfg.settings()
        window = st.occlusion_window
        return {
            "saliency": lambda: saliency(s, x, target),
            "guided_backprop": lambda: guided_backprop(s, x, target),
            "gradcam": lambda: gradcam(s, x, target),
            "guided_gradcam": lambda: guided_gradcam(s, x, target),
            "smoothgrad": lambda: smoothgrad(
                s, x, target, samples=st.smoothgrad_samples, noise=cfg.SMOOTHGRAD_NOISE
            ),
            "integrated_gradients": lambda: integrated_gradients(
                s, x, target, steps=st.ig_steps, baseline="black"
            ),
            "occlusion": lambda: occlusion(s, x, target, window=window, stride=window),
            "fgsm": lambda: fgsm(s, x, cfg.FGSM_EPS, label=target),
            "class_vis_step": lambda: class_visualization(
                s, [target] * n, config=AscentConfig(steps=1)
            ),
        }
