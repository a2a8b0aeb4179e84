"""Explainer: the typed facade over session, preprocessing, methods and presentation."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, TypeAlias

import numpy as np

from gradtap.runtime import catalog
from gradtap.runtime.errors import TargetError
from gradtap.runtime.figure import summary_panel
from gradtap.runtime.image.geometry import Geometry, ImageLike, to_batch, to_input
from gradtap.runtime.image.read import DEFAULT_MAX_PIXELS, as_image, load_image
from gradtap.runtime.info import ModelInfo
from gradtap.runtime.methods.adversarial import Attack, Labels, fgsm, fool
from gradtap.runtime.methods.base import Explanation
from gradtap.runtime.methods.localize import Localization, grabcut
from gradtap.runtime.methods.registry import get_method
from gradtap.runtime.methods.visualize import (
    AscentConfig,
    Progress,
    Visualization,
    class_visualization,
)
from gradtap.runtime.present.postprocess import heatmap
from gradtap.runtime.session import ExplainSession, ModelSource
from gradtap.runtime.targets import Each, TargetSpec

Images: TypeAlias = "ImageLike | Sequence[ImageLike]"


class RandomWeightsWarning(UserWarning):
    """The model was exported with random weights: its explanations mean nothing."""


def resolve_model(model: ModelSource) -> ModelSource:
    """A model name (no folder, no ``.onnx`` suffix, not an existing file) to its graph's path."""
    if isinstance(model, str) and "/" not in model and os.sep not in model:
        if not model.endswith(".onnx") and not os.path.exists(model):
            return catalog.resolve_name(model)
    return model


class Explainer:
    """Explain images with an augmented gradtap model.

    Images are file paths or RGB(A)/grayscale arrays (one, or a list); they are preprocessed by
    the model's own metadata, and results carry the geometry to map them back onto the
    originals. ``target=None`` explains the predicted class.

    Example::

        ex = Explainer("smallcnn")  # or a .gradtap.onnx file, or "efficientnet_lite0"
        e = ex.gradcam("cat.jpg")
        print(e.target_labels[0], e.target_prob[0])
        heat = ex.heatmap(e)  # [H, W] in [0, 1] on the original image

    Args:
        model: a model name resolved exactly as ``gradtap -M NAME`` does (a cached export, or a
            packaged model such as ``"smallcnn"``; see ``gradtap.runtime.catalog``), the path of
            a ``.gradtap.onnx`` file, an ``onnx.ModelProto`` or its bytes.
        alpha: how image transparency is flattened: ``"white"``, ``"black"`` or ``"drop"``.
        max_pixels: the largest image file accepted (refused from its header).
        resample: ``"area"`` or ``"torchvision"`` (Pillow's antialiased bilinear: the inputs,
            hence the predictions, of torchvision's ``Resize(256) + CenterCrop(224)``).
        **session_options: ``providers``, ``threads``, ``batch_size`` (see ExplainSession).
    """

    def __init__(
        self,
        model: ModelSource,
        *,
        alpha: str = "white",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        resample: str = "area",
        **session_options: Any,
    ) -> None:
        self.session = ExplainSession(resolve_model(model), **session_options)
        self.alpha, self.max_pixels, self.resample = alpha, max_pixels, resample
        if catalog.is_random(self.info.weights):
            warnings.warn(
                catalog.random_weights_warning(self.info.name), RandomWeightsWarning, stacklevel=2
            )

    @property
    def info(self) -> ModelInfo:
        """The model's metadata."""
        return self.session.info

    def inputs(self, images: Images) -> tuple[np.ndarray, tuple[Geometry, ...]]:
        """Preprocess images into a model batch and their geometries."""
        return to_batch(self.load(images), self.info, resample=self.resample)

    def load(self, images: Images) -> list[np.ndarray]:
        """Images (paths, PIL images, HWC or CHW arrays, uint8 or float, or a list) as RGB."""
        out = []
        for image in _as_list(images):
            if isinstance(image, (str, os.PathLike)):
                out.append(load_image(image, alpha=self.alpha, max_pixels=self.max_pixels))
            else:
                out.append(as_image(_array(image), alpha=self.alpha))
        return out

    def explain(
        self,
        method: str,
        images: Images,
        target: TargetSpec = None,
        *,
        targets_each: Sequence[int | str] | None = None,
        **options: Any,
    ) -> Explanation:
        """Run any method of ``METHODS`` by name; options go to the method.

        ``target`` is one class for all images, ``None`` (the prediction), ``"top-k"``, or a
        list aligned with the images (one target per image, as captum); ``targets_each``
        explains every image for each of its classes instead (the cross product).
        """
        if targets_each is not None:
            if target is not None:
                raise TargetError("give target= or targets_each=, not both")
            target = Each(targets_each)
        rgb = self.load(images)
        x, geometries = to_batch(rgb, self.info, resample=self.resample)
        result = get_method(method)(self.session, x, target, **options)
        return replace(result, geometries=geometries, images=tuple(rgb))

    def saliency(self, images: Images, target: TargetSpec = None, **options: Any) -> Explanation:
        """Saliency maps [R, H, W]; options ``signed``, ``times_input``, ``input_scale``."""
        return self.explain("saliency", images, target, **options)

    def guided_backprop(
        self, images: Images, target: TargetSpec = None, **options: Any
    ) -> Explanation:
        """Guided backpropagation: colour maps [R, 3, H, W]."""
        return self.explain("guided_backprop", images, target, **options)

    def deconvnet(self, images: Images, target: TargetSpec = None, **options: Any) -> Explanation:
        """Deconvnet: colour maps [R, 3, H, W]."""
        return self.explain("deconvnet", images, target, **options)

    def cam(self, images: Images, target: TargetSpec = None, **options: Any) -> Explanation:
        """CAM at tap resolution; options ``tap``, ``relu``."""
        return self.explain("cam", images, target, **options)

    def gradcam(self, images: Images, target: TargetSpec = None, **options: Any) -> Explanation:
        """Grad-CAM at tap resolution; options ``tap``, ``relu``."""
        return self.explain("gradcam", images, target, **options)

    def gradcampp(self, images: Images, target: TargetSpec = None, **options: Any) -> Explanation:
        """Grad-CAM++ at tap resolution; option ``tap``."""
        return self.explain("gradcam++", images, target, **options)

    def guided_gradcam(
        self, images: Images, target: TargetSpec = None, **options: Any
    ) -> Explanation:
        """Guided Grad-CAM, colour maps [R, 3, H, W]; options ``tap``, ``upsample``."""
        return self.explain("guided_gradcam", images, target, **options)

    def smoothgrad(self, images: Images, target: TargetSpec = None, **options: Any) -> Explanation:
        """SmoothGrad; options ``samples``, ``noise``, ``squared``, ``seed``."""
        return self.explain("smoothgrad", images, target, **options)

    def integrated_gradients(
        self, images: Images, target: TargetSpec = None, **options: Any
    ) -> Explanation:
        """Integrated Gradients; options ``baseline``, ``steps``, ``rule``, ``seed``."""
        return self.explain("integrated_gradients", images, target, **options)

    def occlusion(self, images: Images, target: TargetSpec = None, **options: Any) -> Explanation:
        """Occlusion; options ``window``, ``stride``, ``baseline``."""
        return self.explain("occlusion", images, target, **options)

    def lrp(self, images: Images, target: TargetSpec = None, **options: Any) -> Explanation:
        """LRP, computed by the graph; option ``lrp_rule`` (the composite, README "LRP")."""
        return self.explain("lrp", images, target, **options)

    def predict(self, images: Images, k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-``k`` (label, probability) per image."""
        x, _ = self.inputs(images)
        probs = self.info.probabilities(self.session.logits(x))
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [
            [(self.info.labels[c], float(p[c])) for c in row]
            for p, row in zip(probs, order, strict=True)
        ]

    def fgsm(
        self, images: Images, eps: float, *, label: Labels = None, target: Labels = None
    ) -> Attack:
        """FGSM at ``eps`` pixel units (see ``adversarial.fgsm``); images at model resolution."""
        x, _ = self.inputs(images)
        return fgsm(self.session, x, eps, label=label, target=target)

    def fool(self, images: Images, target: Labels, **options: Any) -> Attack:
        """Iterative fooling towards ``target``; options ``step``, ``eps``, ``max_steps``."""
        x, _ = self.inputs(images)
        return fool(self.session, x, target, **options)

    def visualize(
        self,
        target: int | str | Sequence[int | str],
        *,
        init: str | ImageLike = "mean",
        callback: Progress | None = None,
        **settings: Any,
    ) -> Visualization:
        """Class-model visualisation; settings are :class:`AscentConfig` fields (steps, lr, ...).

        ``init`` may be ``"mean"``, ``"zeros"``, ``"noise"``, or an image (path or array),
        preprocessed to the model's input.
        """
        if not (isinstance(init, str) and init in ("mean", "zeros", "noise")):
            x, _ = self.inputs(init)
            init = x[0].transpose(1, 2, 0)
        config = AscentConfig(**settings)
        return class_visualization(
            self.session, target, init=init, config=config, callback=callback
        )

    def localize(
        self,
        image: ImageLike,
        target: TargetSpec = None,
        *,
        method: str = "saliency",
        **grabcut_options: Any,
    ) -> tuple[Localization, Explanation]:
        """GrabCut localisation on the original image from a ``method`` map of one target."""
        (rgb,) = self.load(image)
        x, geometry = to_input(rgb, self.info, resample=self.resample)
        expl = get_method(method)(self.session, x, target)
        expl = replace(expl, geometries=(geometry,), images=(rgb,))
        loc = grabcut(rgb, self.heatmap(expl, 0, outlier_perc=0), **grabcut_options)
        return loc, expl

    def summary_panel(
        self, image: ImageLike, target: int | str | None = None, **options: Any
    ) -> np.ndarray:
        """The labelled figure original | saliency | Grad-CAM | guided Grad-CAM | FGSM image.

        Options: ``eps``, ``colormap``, ``height`` (see ``figure.summary_panel``).
        """
        return summary_panel(self.session, image, target, **options)

    def heatmap(self, expl: Explanation, row: int = 0, *, outlier_perc: float = 2.0) -> np.ndarray:
        """Row ``row`` of an explanation as an [H, W] map in [0, 1] on its original image."""
        geometry = expl.geometries[expl.image_index[row]] if expl.geometries else None
        return heatmap(expl.maps[row], geometry, outlier_perc=outlier_perc)


def _as_list(images: Images) -> list[ImageLike]:
    if isinstance(images, (str, os.PathLike, np.ndarray)) or _is_pil(images):
        return [images]
    return list(images)


def _is_pil(image: object) -> bool:
    return hasattr(image, "convert") and hasattr(image, "mode") and hasattr(image, "size")


def _array(image: Any) -> np.ndarray:
    """A PIL image or an array as an HWC array: CHW ([1 or 3, H, W] with H, W > 4) transposed."""
    if _is_pil(image):
        keep = image.mode in ("RGB", "RGBA", "L", "LA")
        return np.asarray(image if keep else image.convert("RGBA" if "A" in image.mode else "RGB"))
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[2] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)
    return arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr
