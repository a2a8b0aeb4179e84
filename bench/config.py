"""What the benchmark runs: models, methods, libraries and the method settings shared by all sides.

Every side runs the same method with the same settings on the same weights and inputs; the
numbers here are the only place those settings live.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

MODELS = ("resnet50", "vgg16", "efficientnet_lite0")
SMOKE_MODELS = ("smallcnn",)
WEIGHTS = {"efficientnet_lite0": "IMAGENET1K"}  # packaged real weights; the others "random"

METHODS = (
    "saliency",
    "guided_backprop",
    "gradcam",
    "guided_gradcam",
    "smoothgrad",
    "integrated_gradients",
    "occlusion",
    "fgsm",
    "class_vis_step",
)

LIBRARIES = ("gradtap", "captum", "gradcam", "torch")
LIBRARY_TITLES = {
    "gradtap": "gradtap",
    "captum": "captum",
    "gradcam": "pytorch-grad-cam",
    "torch": "torch autograd",
}
SUPPORTED = {
    "gradtap": frozenset(METHODS),
    "captum": frozenset(METHODS) - {"class_vis_step"},
    "gradcam": frozenset({"gradcam", "guided_backprop", "guided_gradcam"}),
    "torch": frozenset(METHODS),
}
REFERENCE = "gradtap"

SMOKE_ENV = "GRADTAP_BENCH_SMOKE"  # "1": the tiny settings (set by --smoke for the workers)
SMOOTHGRAD_NOISE = 0.15  # std as a fraction of the image's value range (max - min)
FGSM_EPS = 2.0 / 255
CHUNK_ROWS = 16  # rows per forward/backward call for the sampling methods, on every side
TARGET_CLASS = 281  # explained class for every image (modulo the model's classes)


@dataclass(frozen=True)
class Settings:
    """Sample counts of the sampling methods.

    Attributes:
        smoothgrad_samples: noisy copies per image.
        ig_steps: Gauss-Legendre points of Integrated Gradients (black baseline on every side).
        occlusion_window: square window in pixels, also the stride (zero baseline).
    """

    smoothgrad_samples: int = 25
    ig_steps: int = 32
    occlusion_window: int = 32  # non-overlapping: 7 x 7 windows at 224 x 224


FULL = Settings()
TINY = Settings(smoothgrad_samples=2, ig_steps=2, occlusion_window=112)


def settings() -> Settings:
    """The tiny settings when ``SMOKE_ENV`` is "1", else the full ones."""
    return TINY if os.environ.get(SMOKE_ENV) == "1" else FULL


def titles() -> dict[str, str]:
    """Method name -> table title, with the sample counts in use."""
    st = settings()
    return {
        "saliency": "Saliency",
        "guided_backprop": "Guided backprop",
        "gradcam": "Grad-CAM",
        "guided_gradcam": "Guided Grad-CAM",
        "smoothgrad": f"SmoothGrad ({st.smoothgrad_samples})",
        "integrated_gradients": f"Integrated Gradients ({st.ig_steps})",
        "occlusion": f"Occlusion ({st.occlusion_window}px windows)",
        "fgsm": "FGSM",
        "class_vis_step": "Class visualisation, 1 step",
    }


def target_class(num_classes: int) -> int:
    """The class every benchmark row explains."""
    return TARGET_CLASS % num_classes


def samples_per_chunk(batch: int) -> int:
    """Samples (noisy copies, path points or windows) per call so a call has <= CHUNK_ROWS rows."""
    return max(1, CHUNK_ROWS // batch)


def inputs(batch: int, size: tuple[int, int]) -> npt.NDArray[np.float32]:
    """The benchmark images: seeded uniform pixels in [0, 1], identical in every process."""
    rng = np.random.default_rng(20240601)
    return rng.random((batch, 3, *size), dtype=np.float32)
