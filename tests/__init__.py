"""gradtap's test suite; the tree mirrors the source tree."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
