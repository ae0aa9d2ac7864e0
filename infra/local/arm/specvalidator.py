"""Validate JSON bodies against the definitions of Microsoft's published Batch AI API (OpenAPI 2.0).

Used by the ARM emulator (requests it accepts, responses it sends) and by the tests of what the
project itself sends. The spec file is Microsoft's, unmodified (see spec/SOURCE.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SPEC_DIR = Path(__file__).with_name("spec")
SPEC_FILES = {
    "2018-05-01": SPEC_DIR / "BatchAI-2018-05-01.json",
    "2018-03-01": SPEC_DIR / "BatchAI-2018-03-01.json",
    "2017-09-01-preview": SPEC_DIR / "BatchAI-2017-09-01-preview.json",
}


@dataclass(frozen=True)
class SpecError:
    """One violation: the JSON path of the offending field and what is wrong with it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@cache
def load_spec(api_version: str = "2018-05-01") -> dict[str, Any]:
    return json.loads(SPEC_FILES[api_version].read_text())


@cache
def _validator(definition: str, api_version: str) -> jsonschema.Draft4Validator:
    spec = load_spec(api_version)
    if definition not in spec["definitions"]:
        raise KeyError(f"no definition {definition!r} in Batch AI {api_version}")
    # OpenAPI 2.0 schemas are JSON Schema draft 4 plus vendor keys (x-ms-*, discriminator, readOnly),
    # which draft-4 validators ignore.
    schema = {"definitions": spec["definitions"], "allOf": [{"$ref": f"#/definitions/{definition}"}]}
    return jsonschema.Draft4Validator(schema)


def validate(definition: str, body: Any, api_version: str = "2018-05-01") -> list[SpecError]:
    """Every violation of `definition` in `body`, deepest first; empty when the body conforms."""
    errors = []
    for error in _validator(definition, api_version).iter_errors(body):
        # allOf/anyOf wrap the real cause: report the innermost errors, which name the field.
        leaves = _leaves(error)
        for leaf in leaves:
            errors.append(SpecError(_json_path(leaf.absolute_path), leaf.message))
    return sorted(set(errors), key=lambda e: (-e.path.count("."), e.path, e.message))


def _leaves(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    if not error.context:
        return [error]
    return [leaf for sub in error.context for leaf in _leaves(sub)]


def _json_path(parts: Any) -> str:
    path = "$"
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path
