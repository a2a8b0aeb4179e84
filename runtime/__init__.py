"""gradtap.runtime: explanations from an augmented ONNX graph with onnxruntime, numpy and OpenCV.

Never imports torch. Start with :class:`Explainer`; the pieces underneath are public too.
"""

from __future__ import annotations

from gradtap.runtime.errors import (
    GradtapError,
    ImageError,
    ModelError,
    NonFiniteError,
    OptionError,
    TargetError,
)
from gradtap.runtime.explainer import Explainer
from gradtap.runtime.figure import summary_panel
from gradtap.runtime.image.geometry import Geometry, to_batch, to_input, to_original
from gradtap.runtime.image.read import as_image, load_image
from gradtap.runtime.info import ModelInfo
from gradtap.runtime.methods.adversarial import Attack, fgsm, fool
from gradtap.runtime.methods.base import Explanation
from gradtap.runtime.methods.cam import cam, gradcam, gradcampp, guided_gradcam
from gradtap.runtime.methods.gradient import deconvnet, guided_backprop, saliency
from gradtap.runtime.methods.localize import Localization, grabcut
from gradtap.runtime.methods.registry import METHODS, Method, get_method
from gradtap.runtime.methods.sampling import integrated_gradients, occlusion, smoothgrad
from gradtap.runtime.methods.visualize import AscentConfig, Visualization, class_visualization
from gradtap.runtime.present.overlay import (
    COLORMAPS,
    colorize,
    overlay_heatmap,
    panel,
    to_uint8,
    write_image,
)
from gradtap.runtime.present.postprocess import gradient_image, heatmap, minmax, normalize
from gradtap.runtime.session import ExplainSession, Pass
from gradtap.runtime.targets import Each, ce_seed, onehot, softmax

__all__ = [
    "COLORMAPS",
    "METHODS",
    "AscentConfig",
    "Attack",
    "Each",
    "ExplainSession",
    "Explainer",
    "Explanation",
    "Geometry",
    "GradtapError",
    "ImageError",
    "Localization",
    "Method",
    "ModelError",
    "ModelInfo",
    "NonFiniteError",
    "OptionError",
    "Pass",
    "TargetError",
    "Visualization",
    "as_image",
    "cam",
    "ce_seed",
    "class_visualization",
    "colorize",
    "deconvnet",
    "fgsm",
    "fool",
    "get_method",
    "gradcam",
    "gradcampp",
    "gradient_image",
    "grabcut",
    "guided_backprop",
    "guided_gradcam",
    "heatmap",
    "integrated_gradients",
    "load_image",
    "minmax",
    "normalize",
    "occlusion",
    "onehot",
    "overlay_heatmap",
    "panel",
    "saliency",
    "smoothgrad",
    "softmax",
    "summary_panel",
    "to_batch",
    "to_input",
    "to_original",
    "to_uint8",
    "write_image",
]
