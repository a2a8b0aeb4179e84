"""Adversarial images: FGSM and iterative fooling (I-FGSM / PGD), in [0, 1] pixel units."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError, TargetError
from gradtap.runtime.methods.base import check_pixels
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import class_index, onehot, softmax

Array = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]
Label = int | str | None
Labels = Label | Sequence[int | str]


@dataclass(frozen=True)
class Attack:
    """Adversarial images and their effect, one row per input image.

    Attributes:
        x: adversarial images [N, 3, H, W], pixels in [0, 1].
        perturbation: ``x - original`` [N, 3, H, W].
        cls: [N] the class attacked: the true label (untargeted) or the target class (targeted).
        targeted: whether the attack pushes towards ``cls`` (else away from it).
        logits_before: [N, classes] on the original images.
        steps: [N] gradient steps taken.
        labels: the model's class names.

    ``logits_after`` (the logits on the adversarial images) is computed on first use when the
    attack did not already compute it (FGSM does not: one fused call makes its image).
    """

    x: Array
    perturbation: Array
    cls: Ints
    targeted: bool
    logits_before: Array
    steps: Ints
    labels: tuple[str, ...]
    session: ExplainSession | None = field(default=None, repr=False, compare=False)
    _after: Array | None = field(default=None, repr=False, compare=False)

    @property
    def logits_after(self) -> Array:
        """[N, classes] on the adversarial images."""
        if self._after is None:
            if self.session is None:
                raise OptionError(
                    "this Attack has neither logits_after nor a session to compute them"
                )
            object.__setattr__(self, "_after", self.session.logits(self.x))
        return self._after  # type: ignore[return-value]

    @property
    def success(self) -> npt.NDArray[np.bool_]:
        """[N] targeted: the model now predicts ``cls``; untargeted: it no longer does."""
        pred = self.logits_after.argmax(axis=1)
        return pred == self.cls if self.targeted else pred != self.cls

    @property
    def linf(self) -> Array:
        """[N] L-infinity size of the perturbation, in [0, 1] pixel units."""
        return np.abs(self.perturbation).max(axis=(1, 2, 3))

    @property
    def l2(self) -> Array:
        """[N] L2 size of the perturbation over all pixels and channels."""
        return np.sqrt(np.square(self.perturbation, dtype=np.float64).sum(axis=(1, 2, 3))).astype(
            np.float32
        )

    def prob(self, which: str = "after") -> Array:
        """[N] probability of ``cls`` ``"before"`` or ``"after"`` the attack."""
        logits = self.logits_after if which == "after" else self.logits_before
        return softmax(logits)[np.arange(len(self.cls)), self.cls]


def fgsm(
    session: ExplainSession,
    x: Array,
    eps: float,
    *,
    label: Labels = None,
    target: Labels = None,
) -> Attack:
    """Fast gradient sign method (Goodfellow et al. 2014, https://arxiv.org/abs/1412.6572).

    Untargeted: ``x + eps * sign(d CE(logits, label) / dx)``; targeted (``target`` given):
    ``x - eps * sign(d CE(logits, target) / dx)``; clipped to [0, 1]. One fused call: the graph
    computes the cross-entropy's gradient itself (``objective``), and seeds the predicted class
    (``seed_top1``) when no label is given.

    Args:
        session: the model. x: [N, 3, H, W] pixels in [0, 1].
        eps: step in [0, 1] pixel units (e.g. 2/255).
        label: true class per image (one for all, or a list of N); ``None`` = predicted.
        target: class to push towards (one for all, or a list of N); makes the attack targeted.

    Returns:
        The :class:`Attack`.
    """
    if not 0 <= eps <= 1:
        raise OptionError(f"eps must lie in [0, 1] pixel units, got {eps}")
    x = _checked(session, x)
    targeted = target is not None
    spec = target if targeted else label
    n, labels = len(x), session.info.labels
    if spec is None:
        out = session.run(x, None, top1=True, objective="cross_entropy")
        cls = out.logits.argmax(axis=1).astype(np.int64)
    else:
        cls = _per_image(spec, n, labels)
        seed = onehot(cls, session.info.num_classes)
        out = session.run(x, seed, objective="cross_entropy")
    direction = -1.0 if targeted else 1.0
    step = direction * np.float32(eps) * np.sign(out.grad_input)
    adv = np.clip(x + step, 0.0, 1.0).astype(np.float32)
    ones = np.ones(n, np.int64)
    return Attack(adv, adv - x, cls, targeted, out.logits, ones, labels, session)


def fool(
    session: ExplainSession,
    x: Array,
    target: Labels,
    *,
    step: float = 1.0 / 255,
    eps: float | None = None,
    max_steps: int = 100,
) -> Attack:
    """Iterative fooling image towards ``target`` (Kurakin et al. 2016, https://arxiv.org/abs/1607.02533).

    Repeats ``x <- clip(x - step * sign(d CE(logits, target) / dx))``, projected onto the
    L-infinity ball of radius ``eps`` around the original (PGD) when ``eps`` is given, and stops
    for each image as soon as the model predicts the target. Each step is one fused call that
    also returns the logits of the image it starts from, so the check costs no extra pass.

    Args:
        target: the class to reach (one for all images, or a list of N).
        step: step size in [0, 1] pixel units. eps: L-infinity budget, ``None`` = only [0, 1].
        max_steps: give up after this many steps (``Attack.success`` says which reached it).
    """
    if not 0 < step <= 1 or (eps is not None and not 0 < eps <= 1):
        raise OptionError(f"step and eps must lie in (0, 1], got step={step}, eps={eps}")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise OptionError(f"max_steps must be an int >= 1, got {max_steps!r}")
    if target is None:
        raise TargetError("fool needs a target class")
    x = _checked(session, x)
    cls = _per_image(target, len(x), session.info.labels)
    seed = onehot(cls, session.info.num_classes)
    adv = x.copy()
    logits = np.zeros((len(x), session.info.num_classes), np.float32)
    before: Array | None = None
    steps = np.zeros(len(x), np.int64)
    active = np.arange(len(x))
    for k in range(max_steps + 1):
        last = k == max_steps  # only the logits of the last images are still needed
        out = session.run(adv[active], seed[active], grad_input=not last, objective="cross_entropy")
        logits[active] = out.logits
        if before is None:
            before = out.logits.copy()
        keep = out.logits.argmax(axis=1) != cls[active]
        if last or not keep.any():
            break
        active, grad = active[keep], out.grad_input[keep]
        moved = adv[active] - np.float32(step) * np.sign(grad)
        if eps is not None:
            moved = np.clip(moved, x[active] - eps, x[active] + eps)
        adv[active] = np.clip(moved, 0.0, 1.0)
        steps[active] += 1
    assert before is not None
    return Attack(
        adv, adv - x, cls, True, before, steps, session.info.labels, session, _after=logits
    )


def _checked(session: ExplainSession, x: Array) -> Array:
    x = session.check_input(x)
    check_pixels(x)
    return x


def _per_image(spec: Labels, n: int, labels: Sequence[str]) -> Ints:
    if isinstance(spec, (list, tuple, np.ndarray)):
        if len(spec) != n:
            raise TargetError(
                f"give one class for all images or one per image ({n}), got {len(spec)}"
            )
        return np.array([class_index(s, labels) for s in spec], dtype=np.int64)
    return np.full(n, class_index(spec, labels), dtype=np.int64)
