"""The built-in model names and the export cache folder (kept in the runtime, which both share)."""

from __future__ import annotations

from gradtap.runtime.catalog import CACHE_ENV, MODEL_NAMES, default_cache_dir

__all__ = ["CACHE_ENV", "MODEL_NAMES", "default_cache_dir"]
