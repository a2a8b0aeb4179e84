"""Explanation methods: each a small function over one fused session call, registered in METHODS."""

from __future__ import annotations

from gradtap.runtime.methods.cam import (
    cam,
    gradcam,
    gradcam_map,
    gradcampp,
    gradcampp_map,
    guided_gradcam,
)
from gradtap.runtime.methods.gradient import deconvnet, guided_backprop, saliency, saliency_map
from gradtap.runtime.methods.registry import METHODS, Method, get_method
from gradtap.runtime.methods.sampling import integrated_gradients, occlusion, smoothgrad

__all__ = [
    "METHODS",
    "Method",
    "cam",
    "deconvnet",
    "get_method",
    "gradcam",
    "gradcam_map",
    "gradcampp",
    "gradcampp_map",
    "guided_backprop",
    "guided_gradcam",
    "integrated_gradients",
    "occlusion",
    "saliency",
    "saliency_map",
    "smoothgrad",
]
