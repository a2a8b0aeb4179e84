"""The standard five-tile figure on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from gradtap.runtime.errors import TargetError
from gradtap.runtime.figure import summary_panel
from gradtap.runtime.session import ExplainSession
from tests.runtime_graphs import tiny_model


def test_summary_panel_has_five_labelled_tiles() -> None:
    s = ExplainSession(tiny_model())
    img = np.random.default_rng(0).random((40, 80, 3)).astype(np.float32)
    out = summary_panel(s, img, "Dog", height=60)
    # four tiles at the image's aspect (120 wide), the adversarial one square (60), 4 gaps of 4
    assert out.dtype == np.uint8 and out.shape[1] == 4 * 120 + 60 + 4 * 4
    assert out.shape[0] > 60 + 3 * 12  # a title line and two caption lines
    with pytest.raises(TargetError, match="explains one target"):
        summary_panel(s, img, [0, 1])  # type: ignore[arg-type]
