"""gradtap.runtime: explanations from an augmented ONNX graph with onnxruntime, numpy and OpenCV.

Never imports torch. Start with :class:`Explainer`; the pieces underneath are public too.
"""

from __future__ import annotations

from gradtap.runtime.adversarial import Attack, fgsm, fool
from gradtap.runtime.attribution import integrated_gradients, occlusion, smoothgrad
from gradtap.runtime.errors import (
    GradtapError,
    ImageError,
    ModelError,
    NonFiniteError,
    OptionError,
    TargetError,
)
from gradtap.runtime.explainer import Explainer
from gradtap.runtime.explanation import Explanation
from gradtap.runtime.figure import summary_panel
from gradtap.runtime.images import as_image, load_image
from gradtap.runtime.info import ModelInfo
from gradtap.runtime.localize import Localization, grabcut
from gradtap.runtime.methods import (
    cam,
    deconvnet,
    gradcam,
    gradcampp,
    guided_backprop,
    guided_gradcam,
    saliency,
)
from gradtap.runtime.overlay import (
    COLORMAPS,
    colorize,
    overlay_heatmap,
    panel,
    to_uint8,
    write_image,
)
from gradtap.runtime.postprocess import gradient_image, heatmap, minmax, normalize
from gradtap.runtime.preprocess import Geometry, to_batch, to_input, to_original
from gradtap.runtime.registry import METHODS, Method, get_method
from gradtap.runtime.session import ExplainSession, Pass
from gradtap.runtime.targets import ce_seed, onehot, softmax
from gradtap.runtime.visualize import AscentConfig, Visualization, class_visualization

__all__ = [
    "COLORMAPS",
    "METHODS",
    "AscentConfig",
    "Attack",
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
