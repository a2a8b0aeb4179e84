"""Errors raised by the runtime: every one is a ValueError with a one-line, precise message."""

from __future__ import annotations


class GradtapError(ValueError):
    """Base class of the runtime's errors about bad input (models, images, targets, options)."""


class ModelError(GradtapError):
    """The model file is not a usable augmented gradtap graph, or lacks what a method needs."""


class ImageError(GradtapError):
    """An image could not be read, or an array is not an image the runtime accepts."""


class TargetError(GradtapError):
    """A target class (index, name or ``top-k``) does not resolve against the model's labels."""


class OptionError(GradtapError):
    """A method option is out of its valid range."""


class NonFiniteError(GradtapError):
    """The model produced NaN or Inf in its logits or gradients."""


class GraphError(GradtapError):
    """A forward graph cannot be augmented: its inputs, outputs, shapes or structure."""


class UnsupportedOpError(GraphError):
    """A node on the gradient path uses an op or an attribute the backward pass does not support."""


class UnsupportedOpsError(UnsupportedOpError):
    """Op types on the gradient path have no backward rule (raised before anything is emitted)."""
