"""The torch side: captum, pytorch-grad-cam and plain torch autograd on the same weights.

The model is ``gradtap.export.models.zoo.pixel_space(build(name, weights))``: the module the ONNX
graph was exported from, taking RGB pixels in [0, 1]. Parameters keep ``requires_grad`` as a user
would have them; captum and the autograd cases differentiate with respect to the input (or tap)
only, pytorch-grad-cam calls ``loss.backward()``, as each library does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from bench import config as cfg
from bench import torch_autograd
from gradtap.export.models.zoo import build, pixel_space, tap_module

Array = npt.NDArray[np.float32]
Case = Callable[[], object]


class TorchSide:
    """One model in torch, and the cases of one library (``captum``, ``gradcam`` or ``torch``)."""

    def __init__(self, name: str, weights: str, *, library: str, threads: int) -> None:
        torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):  # only settable before any parallel work
            torch.set_num_interop_threads(1)
        model, spec = build(name, weights)
        self.net = pixel_space(model, spec).eval()
        self.spec = spec
        self.layer = tap_module(self.net.model, spec)
        self.mean = spec.mean
        self.input_size = tuple(spec.input_size)
        self.num_classes = spec.num_classes
        self.library = library

    def logits(self, x: Array) -> Array:
        """Forward pass only."""
        with torch.no_grad():
            return self.net(torch.from_numpy(x)).numpy()

    def cases(self, x: Array, target: int) -> dict[str, Case]:
        """One zero-argument call per method this library has."""
        xt = torch.from_numpy(x)
        if self.library == "captum":
            return captum_cases(self.net, self.layer, xt, target)
        if self.library == "gradcam":
            # looked up per call: GuidedBackpropReLUModel swaps ReLU modules (VGG16's tap is one)
            return gradcam_cases(
                self.net, lambda: tap_module(self.net.model, self.spec), xt, target
            )
        return torch_autograd.cases(self.net, self.layer, self.mean, xt, target)


def captum_cases(net: nn.Module, layer: nn.Module, x: torch.Tensor, t: int) -> dict[str, Case]:
    """captum's attribution classes with the shared settings."""
    from captum.attr import (
        GuidedBackprop,
        GuidedGradCam,
        IntegratedGradients,
        LayerGradCam,
        NoiseTunnel,
        Occlusion,
        Saliency,
    )
    from captum.robust import FGSM

    n = len(x)
    per_chunk = cfg.samples_per_chunk(n)
    sigma = cfg.SMOOTHGRAD_NOISE * float(x.max() - x.min())
    st = cfg.settings()
    window = (3, st.occlusion_window, st.occlusion_window)
    return {
        "saliency": lambda: Saliency(net).attribute(x, target=t),
        "guided_backprop": lambda: GuidedBackprop(net).attribute(x, target=t),
        "gradcam": lambda: LayerGradCam(net, layer).attribute(x, target=t, relu_attributions=True),
        "guided_gradcam": lambda: GuidedGradCam(net, layer).attribute(x, target=t),
        "smoothgrad": lambda: NoiseTunnel(Saliency(net)).attribute(
            x,
            nt_type="smoothgrad",
            nt_samples=st.smoothgrad_samples,
            nt_samples_batch_size=per_chunk,
            stdevs=sigma,
            target=t,
        ),
        "integrated_gradients": lambda: IntegratedGradients(net).attribute(
            x,
            baselines=0.0,
            target=t,
            n_steps=st.ig_steps,
            method="gausslegendre",
            internal_batch_size=per_chunk * n,
        ),
        "occlusion": lambda: Occlusion(net).attribute(
            x,
            sliding_window_shapes=window,
            strides=window,
            baselines=0.0,
            target=t,
            perturbations_per_eval=per_chunk,
        ),
        "fgsm": lambda: FGSM(net, lower_bound=0.0, upper_bound=1.0).perturb(
            x, epsilon=cfg.FGSM_EPS, target=t
        ),
    }


def gradcam_cases(
    net: nn.Module, layer: Callable[[], nn.Module], x: torch.Tensor, t: int
) -> dict[str, Case]:
    """pytorch-grad-cam's GradCAM and GuidedBackpropReLUModel, as its README uses them."""
    from pytorch_grad_cam import GradCAM, GuidedBackpropReLUModel
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(t)] * len(x)

    def grad_cam() -> np.ndarray:
        with GradCAM(model=net, target_layers=[layer()]) as cam:
            return cam(input_tensor=x, targets=targets)

    inplace = {name: m.inplace for name, m in net.named_modules() if isinstance(m, nn.ReLU)}

    def guided() -> np.ndarray:
        # GuidedBackpropReLUModel explains only the first image of a batch: one call per image
        model = GuidedBackpropReLUModel(model=net, device=None)
        maps = np.stack([model(x[i : i + 1], target_category=t) for i in range(len(x))])
        for name, m in net.named_modules():  # it puts back new ReLUs without inplace
            if isinstance(m, nn.ReLU) and name in inplace:
                m.inplace = inplace[name]
        return maps

    return {
        "gradcam": grad_cam,
        "guided_backprop": guided,
        "guided_gradcam": lambda: grad_cam()[..., None] * guided(),
    }
