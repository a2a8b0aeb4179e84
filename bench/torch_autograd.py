"""Plain torch autograd versions of every method: what a careful torch user writes by hand.

Gradients are taken with ``torch.autograd.grad`` with respect to the input (or the tap), so no
weight gradients are computed; sampling methods use the same chunks as the other sides.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench import config as cfg

Case = Callable[[], object]
RECTIFIERS = (nn.ReLU, nn.ReLU6)


class _PositiveGrad(torch.autograd.Function):
    """Identity forward; backward passes only the positive part of the gradient."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return x.view_as(x)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return grad.clamp(min=0)


@contextlib.contextmanager
def guided(net: nn.Module) -> Iterator[None]:
    """Guided backprop: every rectifier's output passes back only positive gradients."""
    handles = [
        m.register_forward_hook(lambda _m, _i, out: _PositiveGrad.apply(out))
        for m in net.modules()
        if isinstance(m, RECTIFIERS)
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def input_grad(net: nn.Module, x: torch.Tensor, t: int) -> torch.Tensor:
    """d sum_rows logits[:, t] / d x."""
    xi = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(net(xi)[:, t].sum(), xi)
    return grad


def tap_and_grad(
    net: nn.Module, layer: nn.Module, x: torch.Tensor, t: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tap's feature map and d sum_rows logits[:, t] / d tap (backward only to the tap)."""
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.enable_grad():
            logits = net(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits[:, t].sum(), seen[0])
    return seen[0].detach(), grad


def grad_cam(net: nn.Module, layer: nn.Module, x: torch.Tensor, t: int) -> torch.Tensor:
    """relu(sum_k mean_hw(dS/dA_k) A_k), [N, h, w]."""
    acts, grads = tap_and_grad(net, layer, x, t)
    return F.relu((grads.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1))


def chunked_grads(
    net: nn.Module, points: Callable[[int, int], torch.Tensor], count: int, n: int, t: int
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Input gradients of ``count`` samples of ``n`` images, in chunks of equal rows."""
    step = cfg.samples_per_chunk(n)
    for k0 in range(0, count, step):
        k1 = min(count, k0 + step)
        xs = points(k0, k1)
        yield k0, k1, input_grad(net, xs.reshape(-1, *xs.shape[2:]), t).reshape(xs.shape)


def smoothgrad(net: nn.Module, x: torch.Tensor, t: int) -> torch.Tensor:
    """Mean |gradient| over noisy copies, max over channels."""
    sigma = cfg.SMOOTHGRAD_NOISE * float(x.max() - x.min())
    gen = torch.Generator().manual_seed(0)
    total = torch.zeros_like(x)

    def noisy(k0: int, k1: int) -> torch.Tensor:
        return x + sigma * torch.randn((k1 - k0, *x.shape), generator=gen)

    samples = cfg.settings().smoothgrad_samples
    for _, _, g in chunked_grads(net, noisy, samples, len(x), t):
        total += g.abs().sum(dim=0)
    return (total / samples).amax(dim=1)


def integrated_gradients(net: nn.Module, x: torch.Tensor, t: int) -> torch.Tensor:
    """Gauss-Legendre Integrated Gradients from a black baseline."""
    steps = cfg.settings().ig_steps
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas = torch.tensor(0.5 * (nodes + 1), dtype=torch.float32)
    w = torch.tensor(0.5 * weights, dtype=torch.float32)
    total = torch.zeros_like(x)

    def path(k0: int, k1: int) -> torch.Tensor:
        return alphas[k0:k1, None, None, None, None] * x

    for k0, k1, g in chunked_grads(net, path, steps, len(x), t):
        total += torch.tensordot(w[k0:k1], g, dims=1)
    return x * total


def occlusion(net: nn.Module, x: torch.Tensor, t: int) -> torch.Tensor:
    """Mean drop of the target logit over the windows covering each pixel (forward only)."""
    n, _, h, w = x.shape
    size = stride = cfg.settings().occlusion_window
    boxes = [(i, j) for i in range(0, h - size + 1, stride) for j in range(0, w - size + 1, stride)]
    total, count = torch.zeros(n, h, w), torch.zeros(h, w)
    step = cfg.samples_per_chunk(n)
    with torch.no_grad():
        score = net(x)[:, t]
        for b0 in range(0, len(boxes), step):
            chunk = boxes[b0 : b0 + step]
            xs = x.repeat(len(chunk), 1, 1, 1).reshape(len(chunk), *x.shape)
            for k, (i, j) in enumerate(chunk):
                xs[k, :, :, i : i + size, j : j + size] = 0.0
            drops = score - net(xs.reshape(-1, *x.shape[1:]))[:, t].reshape(len(chunk), n)
            for k, (i, j) in enumerate(chunk):
                total[:, i : i + size, j : j + size] += drops[k][:, None, None]
                count[i : i + size, j : j + size] += 1
    return total / count.clamp(min=1)


def fgsm(net: nn.Module, x: torch.Tensor, t: int) -> torch.Tensor:
    """One untargeted FGSM step on the cross-entropy of class ``t``, clipped to [0, 1]."""
    xi = x.detach().requires_grad_(True)
    labels = torch.full((len(x),), t, dtype=torch.long)
    (grad,) = torch.autograd.grad(F.cross_entropy(net(xi), labels), xi)
    return (x + cfg.FGSM_EPS * grad.sign()).clamp(0, 1)


def class_vis_step(
    net: nn.Module, mean: Sequence[float], x: torch.Tensor, t: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """gradtap's ascent step (jitter, normalised step, L2 decay, clip) and the final logits."""
    lr, l2, jitter = 0.02, 1e-3, 4
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    img = m.expand_as(x).clone()
    dy, dx = (int(v) for v in np.random.default_rng(0).integers(-jitter, jitter + 1, size=2))
    grad = input_grad(net, torch.roll(img, (dy, dx), dims=(2, 3)), t)
    grad = torch.roll(grad, (-dy, -dx), dims=(2, 3))
    img = img + lr * grad / (grad.abs().mean(dim=(1, 2, 3), keepdim=True) + 1e-12)
    img = (m + (1 - l2) * (img - m)).clamp(0, 1)
    with torch.no_grad():
        return img, net(img)


def cases(
    net: nn.Module, layer: nn.Module, mean: Sequence[float], x: torch.Tensor, t: int
) -> dict[str, Case]:
    """Every method written directly against torch autograd."""

    def guided_grad() -> torch.Tensor:
        with guided(net):
            return input_grad(net, x, t)

    def guided_gradcam() -> torch.Tensor:
        cam = F.interpolate(grad_cam(net, layer, x, t)[:, None], size=x.shape[2:], mode="bilinear")
        return guided_grad() * cam

    return {
        "saliency": lambda: input_grad(net, x, t).abs().amax(dim=1),
        "guided_backprop": guided_grad,
        "gradcam": lambda: grad_cam(net, layer, x, t),
        "guided_gradcam": guided_gradcam,
        "smoothgrad": lambda: smoothgrad(net, x, t),
        "integrated_gradients": lambda: integrated_gradients(net, x, t),
        "occlusion": lambda: occlusion(net, x, t),
        "fgsm": lambda: fgsm(net, x, t),
        "class_vis_step": lambda: class_vis_step(net, mean, x, t),
    }
