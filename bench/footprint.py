"""Installed size of distributions and of what they pull in, from their installed file lists."""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

GRADTAP_RUNTIME = ("numpy", "onnx", "onnxruntime", "opencv-python-headless", "click")
TORCH_STACK = ("torch", "torchvision", "captum")


@dataclass(frozen=True)
class Footprint:
    """Bytes on disk of some distributions.

    Attributes:
        named: the distributions asked for, alone.
        closure: with every distribution they require, transitively (extras followed).
        closure_names: the distributions in the closure.
        missing: required distributions that are not installed.
    """

    named: int
    closure: int
    closure_names: tuple[str, ...]
    missing: tuple[str, ...]


def dist_size(name: str) -> int:
    """Sum of the sizes of the files an installed distribution recorded."""
    dist = md.distribution(name)
    total = 0
    for f in dist.files or ():
        path = dist.locate_file(f)
        try:
            total += path.stat().st_size  # type: ignore[union-attr]
        except OSError:
            continue
    return total


def _requirements(name: str, extras: frozenset[str]) -> list[tuple[str, frozenset[str]]]:
    found = []
    for line in md.requires(name) or ():
        req = Requirement(line)
        envs = [{"extra": e} for e in sorted(extras | {""})]
        if req.marker is None or any(req.marker.evaluate(env) for env in envs):
            found.append((canonicalize_name(req.name), frozenset(req.extras)))
    return found


def closure(names: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(installed, missing) distributions ``names`` require, transitively, themselves included."""
    seen: dict[str, frozenset[str]] = {}
    missing: set[str] = set()
    todo = [(canonicalize_name(n), frozenset[str]()) for n in names]
    while todo:
        name, extras = todo.pop()
        if name in seen and extras <= seen[name]:
            continue
        try:
            md.distribution(name)
        except md.PackageNotFoundError:
            missing.add(name)
            continue
        seen[name] = seen.get(name, frozenset()) | extras
        todo.extend(_requirements(name, seen[name]))
    return sorted(seen), sorted(missing)


def footprint(names: tuple[str, ...]) -> Footprint:
    """Sizes of ``names`` alone and with their requirements."""
    installed, missing = closure(names)
    return Footprint(
        named=sum(dist_size(n) for n in names),
        closure=sum(dist_size(n) for n in installed),
        closure_names=tuple(installed),
        missing=tuple(missing),
    )
