"""JSON Schemas shipped with gradtap: ``summary.json`` and the explanation graph's metadata.

Validate with any JSON Schema (2020-12) validator, e.g.::

    import json, jsonschema
    from gradtap.runtime.schema import load_schema
    jsonschema.validate(json.load(open("out/summary.json")), load_schema("summary"))
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gradtap.runtime.errors import OptionError

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
SCHEMAS = ("summary", "model-metadata")


def schema_path(name: str) -> Path:
    """The file of schema ``name`` (one of ``SCHEMAS``)."""
    if name not in SCHEMAS:
        raise OptionError(f"unknown schema {name!r}; valid: {', '.join(SCHEMAS)}")
    return SCHEMA_DIR / f"{name}.schema.json"


def load_schema(name: str) -> dict[str, Any]:
    """Schema ``name`` as a dict."""
    return json.loads(schema_path(name).read_text("utf-8"))


def metadata_document(meta: Mapping[str, str]) -> dict[str, Any]:
    """A graph's ``metadata_props`` with the JSON values parsed, as the metadata schema reads it."""
    out: dict[str, Any] = {}
    for key, value in meta.items():
        try:
            parsed = json.loads(value) if key.startswith("gradtap.") else value
        except json.JSONDecodeError:
            parsed = value
        out[key] = (
            value if isinstance(parsed, (int, float)) and not isinstance(parsed, bool) else parsed
        )
    return out
