"""The scripts a pytorch-grad-cam user and a captum user write to explain a folder of photos.

``python -m bench.e2e_scripts gradcam|captum MODEL WEIGHTS FOLDER OUT --batch B --format F``

Each does what ``gradtap explain FOLDER -m ... --format F`` does, the way the library's own
examples do it: PIL opens the photo, torchvision transforms build the input (the model's
resize, crop and normalisation), the library computes the maps for the predicted class of a
batch, and each map is resized to the photo, blended over it (``show_cam_on_image`` for
pytorch-grad-cam, the same colour map and blend with OpenCV for captum) and written with
``cv2.imwrite``; with ``--format npy`` the raw maps are saved instead. The model is
``zoo.build(MODEL, WEIGHTS)``: the same weights as the explanation graph.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torchvision import transforms

from gradtap.export.models.zoo import build, tap_module

EXTENSIONS = (".jpg", ".jpeg", ".png")


def preprocess(spec) -> transforms.Compose:  # noqa: ANN001
    """The model's preprocessing as torchvision transforms."""
    size = tuple(spec.input_size)
    if spec.resize_policy == "shorter_side_center_crop":
        steps = [transforms.Resize(spec.resize_size), transforms.CenterCrop(size)]
    else:
        steps = [transforms.Resize(size)]
    return transforms.Compose(
        [*steps, transforms.ToTensor(), transforms.Normalize(spec.mean, spec.std)]
    )


def overlay(rgb: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's ``show_cam_on_image`` over the photo (float RGB in [0, 1])."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(rgb, cam, use_rgb=True)


def normalised(m: np.ndarray) -> np.ndarray:
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def write(out: Path, stem: str, method: str, photo: Image.Image, m: np.ndarray, fmt: str) -> None:
    folder = out / stem
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "npy":
        np.save(folder / f"{method}.npy", m.astype(np.float32))
        return
    rgb = np.asarray(photo, dtype=np.float32) / 255
    heat = cv2.resize(normalised(m).astype(np.float32), (rgb.shape[1], rgb.shape[0]))
    vis = overlay(rgb, heat)
    cv2.imwrite(str(folder / f"{method}.png"), cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))


def gradcam_script(model, layer, batches, out: Path, fmt: str, methods) -> None:  # noqa: ANN001
    from pytorch_grad_cam import GradCAM

    cam = GradCAM(model=model, target_layers=[layer])
    for stems, photos, x in batches:
        maps = cam(input_tensor=x, targets=None)  # the predicted class of each image
        for stem, photo, m in zip(stems, photos, maps, strict=True):
            write(out, stem, "gradcam", photo, m, fmt)


def captum_script(model, layer, batches, out: Path, fmt: str, methods) -> None:  # noqa: ANN001
    from captum.attr import GuidedBackprop, LayerAttribution, LayerGradCam, Saliency

    explainers = {
        "gradcam": LayerGradCam(model, layer),
        "guided_backprop": GuidedBackprop(model),
        "saliency": Saliency(model),
    }
    for stems, photos, x in batches:
        with torch.no_grad():
            target = model(x).argmax(1)
        for method in methods:
            if method == "gradcam":
                a = explainers[method].attribute(x, target=target, relu_attributions=True)
                a = a[:, 0] if fmt == "npy" else LayerAttribution.interpolate(a, x.shape[2:])[:, 0]
            elif method == "saliency":
                a = explainers[method].attribute(x, target=target, abs=True).amax(1)
            else:
                a = explainers[method].attribute(x, target=target).abs().amax(1)
            for stem, photo, m in zip(stems, photos, a.detach().numpy(), strict=True):
                write(out, stem, method, photo, m, fmt)


def batches(folder: Path, tf: transforms.Compose, size: int):  # noqa: ANN201
    """(stems, PIL photos, input tensor) per batch of photos in the folder."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS)
    for start in range(0, len(paths), size):
        chunk = paths[start : start + size]
        photos = [Image.open(p).convert("RGB") for p in chunk]
        yield [p.stem for p in chunk], photos, torch.stack([tf(im) for im in photos])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("library", choices=("gradcam", "captum"))
    ap.add_argument("model")
    ap.add_argument("weights")
    ap.add_argument("folder", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--format", default="overlay", choices=("overlay", "npy"))
    ap.add_argument("--methods", default="gradcam")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(1)
    model, spec = build(args.model, args.weights)
    model.eval()
    layer = tap_module(model, spec)
    script = gradcam_script if args.library == "gradcam" else captum_script
    data = batches(args.folder, preprocess(spec), args.batch)
    script(model, layer, data, args.out, args.format, args.methods.split(","))


if __name__ == "__main__":
    main()
