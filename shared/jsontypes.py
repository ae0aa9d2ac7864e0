"""JSON as the app exchanges it: API bodies, the JSON columns of run records, payloads of SDKs.

Why names for it: JSON is dynamic, so its values are `Any` to a type checker. Naming them keeps a bare
`Any` out of the modules that must say what they pass around (`disallow_any_explicit` for the API in
pyproject.toml), so that a run record, a spec or the settings passed as `Any` is an error there.
"""

from __future__ import annotations

from typing import Any

__all__ = ["JsonObject", "JsonValue"]

JsonValue = Any  # any value of a JSON document (object, array, string, number, boolean, null)
JsonObject = dict[str, JsonValue]  # a JSON object, as json.loads returns it
