"""The standard labelled figure: original | saliency | Grad-CAM | guided Grad-CAM | adversarial."""

from __future__ import annotations

import os

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import TargetError
from gradtap.runtime.image.geometry import ImageLike, to_input, to_original
from gradtap.runtime.image.read import as_image, load_image
from gradtap.runtime.methods.adversarial import fgsm
from gradtap.runtime.methods.cam import gradcam, guided_gradcam
from gradtap.runtime.methods.gradient import saliency
from gradtap.runtime.present.overlay import colorize, overlay_heatmap, panel
from gradtap.runtime.present.postprocess import gradient_image, heatmap
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import softmax

Rgb8 = npt.NDArray[np.uint8]


def summary_panel(
    session: ExplainSession,
    image: ImageLike,
    target: int | str | None = None,
    *,
    eps: float = 2 / 255,
    colormap: str = "jet",
    height: int = 224,
) -> Rgb8:
    """One image explained five ways, side by side, with class names and probabilities.

    Tiles: the original with its top prediction; the saliency map and the Grad-CAM overlay for
    ``target``; guided Grad-CAM; and the FGSM image at ``eps`` with the model's new prediction.
    Maps are shown on the original image (crop-aware); the adversarial image at model input.

    Args:
        session: the model.
        image: a path or an RGB(A)/grayscale array.
        target: the class to explain (index or name); ``None`` = the predicted class.
        eps: FGSM step in [0, 1] pixel units.
        colormap: colour map of the Grad-CAM overlay.
        height: tile height in pixels.

    Returns:
        RGB uint8 image.
    """
    if isinstance(target, (list, tuple)):
        raise TargetError("summary_panel explains one target; give an index, a name or None")
    rgb = load_image(image) if isinstance(image, (str, os.PathLike)) else as_image(image)
    x, geo = to_input(rgb, session.info)
    sal = saliency(session, x, target)
    cam = gradcam(session, x, target)
    guided = guided_gradcam(session, x, target)
    attack = fgsm(session, x, eps, label=int(sal.target[0]))
    name = sal.target_labels[0]
    adv_probs = softmax(attack.logits_after)[0]
    adv_label, adv_prob = session.info.labels[int(adv_probs.argmax())], float(adv_probs.max())
    tiles = [
        (f"original\n{sal.predicted_labels[0]} {sal.predicted_prob[0]:.2f}", rgb),
        (f"saliency\n{name} {sal.target_prob[0]:.2f}", colorize(heatmap(sal.maps[0], geo), "gray")),
        (f"Grad-CAM\n{name}", overlay_heatmap(rgb, heatmap(cam.maps[0], geo), colormap=colormap)),
        (
            f"guided Grad-CAM\n{name}",
            to_original(gradient_image(guided.maps[0]), geo, fill=0.5).clip(0, 1),
        ),
        (
            f"FGSM {eps * 255:.3g}/255\n{adv_label} {adv_prob:.2f}",
            attack.x[0].transpose(1, 2, 0),
        ),
    ]
    return panel(tiles, height=height, title=f"{session.info.name}: {name}")
