"""The augmentation pass's version: it changes when what the pass emits changes, not its source.

A golden test (tests/export/graph/test_version.py) augments a canonical tiny CNN and compares the
digest of the resulting graph with the one recorded for this version. A change in what the pass
emits fails that test until ``PASS_VERSION`` is bumped, the new digest recorded and the shipped
explanation graph regenerated (``make models``); an edit that changes no output asks for nothing.
"""

from __future__ import annotations

import hashlib

import onnx

PASS_VERSION = "4.11"


def graph_digest(model: onnx.ModelProto) -> str:
    """A short hash of a model's graph (nodes, initializers, inputs, outputs), metadata excluded."""
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()[:16]
