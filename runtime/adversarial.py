"""Adversarial images: FGSM and iterative fooling (I-FGSM / PGD), in [0, 1] pixel units."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import OptionError, TargetError
from gradtap.runtime.explanation import check_pixels
from gradtap.runtime.session import ExplainSession
from gradtap.runtime.targets import ce_seed, class_index, softmax

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
        logits_after: [N, classes] on the adversarial images.
        steps: [N] gradient steps taken.
        labels: the model's class names.
    """

    x: Array
    perturbation: Array
    cls: Ints
    targeted: bool
    logits_before: Array
    logits_after: Array
    steps: Ints
    labels: tuple[str, ...]

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
    ``x - eps * sign(d CE(logits, target) / dx)``; clipped to [0, 1].

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
    before = session.logits(x)
    targeted = target is not None
    cls = _per_image(target if targeted else label, before, session.info.labels)
    grad = session.run(x, ce_seed(before, cls)).grad_input
    direction = -1.0 if targeted else 1.0
    adv = np.clip(x + direction * np.float32(eps) * np.sign(grad), 0.0, 1.0).astype(np.float32)
    after = session.logits(adv)
    return Attack(
        adv, adv - x, cls, targeted, before, after, np.ones(len(x), np.int64), session.info.labels
    )


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
    for each image as soon as the model predicts the target.

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
    before = session.logits(x)
    cls = _per_image(target, before, session.info.labels)
    adv, logits = x.copy(), before.copy()
    steps = np.zeros(len(x), np.int64)
    for _ in range(max_steps):
        active = np.flatnonzero(logits.argmax(axis=1) != cls)
        if active.size == 0:
            break
        grad = session.run(adv[active], ce_seed(logits[active], cls[active])).grad_input
        moved = adv[active] - np.float32(step) * np.sign(grad)
        if eps is not None:
            moved = np.clip(moved, x[active] - eps, x[active] + eps)
        adv[active] = np.clip(moved, 0.0, 1.0)
        logits[active] = session.logits(adv[active])
        steps[active] += 1
    return Attack(adv, adv - x, cls, True, before, logits, steps, session.info.labels)


def _checked(session: ExplainSession, x: Array) -> Array:
    x = session.check_input(x)
    check_pixels(x)
    return x


def _per_image(spec: Labels, logits: Array, labels: Sequence[str]) -> Ints:
    n = len(logits)
    if spec is None:
        return logits.argmax(axis=1).astype(np.int64)
    if isinstance(spec, (list, tuple, np.ndarray)):
        if len(spec) != n:
            raise TargetError(
                f"give one class for all images or one per image ({n}), got {len(spec)}"
            )
        return np.array([class_index(s, labels) for s in spec], dtype=np.int64)
    return np.full(n, class_index(spec, labels), dtype=np.int64)
