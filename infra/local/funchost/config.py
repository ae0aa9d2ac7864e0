"""App settings and host.json as the real Functions host reads them.

Settings come from `--settings FILE`, else `<app-dir>/local.settings.json`, else
`<app-dir>/local.settings.json.example` (its `Values` object). As in the real host, the process
environment wins over the file, and every value is exported to the environment before the app is
imported, so app code that reads `os.environ` sees the same thing as in Azure.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Host-level knobs of this local host (not app settings of the product); all optional.
BLOB_POLL_INTERVAL = "FUNCHOST_BLOB_POLL_INTERVAL"  # seconds between blob container scans
SHUTDOWN_TIMEOUT = "FUNCHOST_SHUTDOWN_TIMEOUT"  # seconds SIGTERM waits for running invocations
TIMER_STATUS_DIR = "FUNCHOST_TIMER_STATUS_DIR"  # timer status files when no AzureWebJobsStorage
# Azure's load balancer answers 502 to an HTTP request whose function has not answered in 230 s,
# whatever functionTimeout says; tests shorten it.
HTTP_RESPONSE_LIMIT = "FUNCHOST_HTTP_RESPONSE_LIMIT"
# The real host's own settings.
REQUEST_BODY_LIMIT = "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"  # bytes; default 100 MiB as in Azure
HOST_ID = "AzureFunctionsWebHost__hostid"
FUNCTIONS_KEY = "FUNCTIONS_KEY"
MASTER_KEY = "FUNCTIONS_MASTER_KEY"
BLOBS_EXTENSION_KEY = "FUNCTIONS_BLOBS_EXTENSION_KEY"  # the blobs_extension system key (webhook)
STORAGE = "AzureWebJobsStorage"
JOB_HOST_PREFIX = "AzureFunctionsJobHost__"  # env overrides of host.json keys, as in Azure

DEFAULT_BODY_LIMIT = 100 * 1024 * 1024


class ConfigError(ValueError):
    """A setting, host.json or the app is not usable; the message names what is wrong."""


@dataclass
class HostConfig:
    app_dir: Path
    settings: dict[str, str]
    host_json: dict[str, Any] = field(default_factory=dict)
    settings_source: Path | None = None

    # --- host.json -------------------------------------------------------------------------------
    def host_value(self, *path: str, default: Any = None) -> Any:
        """A host.json value by key path, case-insensitively (host.json keys are)."""
        node: Any = self.host_json
        for key in path:
            if not isinstance(node, Mapping):
                return default
            match = next((v for k, v in node.items() if k.lower() == key.lower()), None)
            if match is None:
                return default
            node = match
        return node

    @property
    def route_prefix(self) -> str:
        prefix = self.host_value("extensions", "http", "routePrefix", default="api")
        return str(prefix).strip("/")

    @property
    def max_degree_of_parallelism(self) -> int:
        return self._int_host(("extensions", "blobs", "maxDegreeOfParallelism"), 8)

    @property
    def function_timeout(self) -> float | None:
        """host.json `functionTimeout` (`hh:mm:ss`, or `-1`/`00:00:-1`... for none) in seconds;
        absent: 30 minutes, the Flex Consumption plan's default."""
        raw = self.host_value("functionTimeout", default="00:30:00")
        text = str(raw).strip()
        if text.startswith("-"):
            return None
        match = re.fullmatch(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})(?:\.\d+)?", text)
        if not match:
            raise ConfigError(f"host.json functionTimeout must be hh:mm:ss or -1, got {raw!r}")
        days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
        total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
        if total <= 0:
            raise ConfigError(f"host.json functionTimeout must be positive, got {raw!r}")
        return float(total)

    @property
    def http_response_limit(self) -> float:
        """Seconds an HTTP invocation has to answer before Azure's front end cuts it off (230)."""
        return self.float_setting(HTTP_RESPONSE_LIMIT, 230.0)

    @property
    def poison_blob_threshold(self) -> int:
        """Tries of one blob version before its poison message (the blob extension's setting)."""
        return self._int_host(("extensions", "blobs", "poisonBlobThreshold"), 5)

    @property
    def max_dequeue_count(self) -> int:
        return self._int_host(("extensions", "queues", "maxDequeueCount"), 5)

    def queue_int(self, key: str, default: int) -> int:
        return self._int_host(("extensions", "queues", key), default)

    def queue_seconds(self, key: str, default: float) -> float:
        """A host.json `extensions.queues` time span (`hh:mm:ss`) in seconds."""
        raw = self.host_value("extensions", "queues", key, default=None)
        if raw is None:
            return default
        match = re.fullmatch(r"(\d{1,2}):(\d{2}):(\d{2}(?:\.\d+)?)", str(raw).strip())
        if not match:
            raise ConfigError(f"host.json extensions.queues.{key} must be hh:mm:ss, got {raw!r}")
        return int(match.group(1)) * 3600 + int(match.group(2)) * 60 + float(match.group(3))

    def _int_host(self, path: tuple[str, ...], default: int) -> int:
        value = self.host_value(*path, default=default)
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"host.json {'.'.join(path)} must be an integer, got {value!r}") from None
        if number < 1:
            raise ConfigError(f"host.json {'.'.join(path)} must be at least 1, got {number}")
        return number

    # --- settings --------------------------------------------------------------------------------
    def get(self, name: str, default: str | None = None) -> str | None:
        value = self.settings.get(name)
        return default if value in (None, "") else value

    def float_setting(self, name: str, default: float) -> float:
        raw = self.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"setting {name} must be a number, got {raw!r}") from None
        if value <= 0:
            raise ConfigError(f"setting {name} must be positive, got {raw!r}")
        return value

    @property
    def body_limit(self) -> int:
        return int(self.float_setting(REQUEST_BODY_LIMIT, DEFAULT_BODY_LIMIT))

    @property
    def blob_poll_interval(self) -> float:
        return self.float_setting(BLOB_POLL_INTERVAL, 1.0)

    @property
    def shutdown_timeout(self) -> float:
        return self.float_setting(SHUTDOWN_TIMEOUT, 10.0)

    @property
    def host_id(self) -> str:
        """Host id as the real host derives it locally: the machine name, lower case, 32 chars."""
        raw = self.get(HOST_ID) or socket.gethostname()
        cleaned = re.sub(r"[^a-z0-9-]", "", raw.lower())[:32].strip("-")
        return cleaned or "localhost"

    def resolve(self, expression: str, what: str) -> str:
        """Replace `%NAME%` with the app setting NAME, as binding expressions do."""

        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            value = self.get(name)
            if value is None:
                raise ConfigError(f"{what} {expression!r} names app setting {name}, which is not set")
            return value

        return re.sub(r"%([^%]+)%", lookup, expression)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a JSON object")
    return data


def settings_file_for(app_dir: Path, explicit: Path | None) -> Path | None:
    if explicit is not None:
        if not explicit.is_file():
            raise ConfigError(f"settings file {explicit} does not exist")
        return explicit
    for name in ("local.settings.json", "local.settings.json.example"):
        if (app_dir / name).is_file():
            return app_dir / name
    return None


def load_config(
    app_dir: Path | str,
    settings_file: Path | str | None = None,
    overrides: Mapping[str, str] | None = None,
    export: bool = True,
) -> HostConfig:
    """Read settings and host.json; with `export`, put the settings into `os.environ`.

    `overrides` are settings given by a caller of the Python API; they rank like environment values.
    """
    app_dir = Path(app_dir).resolve()
    if not (app_dir / "function_app.py").is_file():
        raise ConfigError(f"app directory {app_dir} has no function_app.py")
    source = settings_file_for(app_dir, Path(settings_file) if settings_file else None)
    values: dict[str, str] = {}
    if source is not None:
        raw = _read_json(source, "settings file").get("Values", {})
        if not isinstance(raw, dict):
            raise ConfigError(f"settings file {source}: Values must be a JSON object")
        values = {str(k): "" if v is None else str(v) for k, v in raw.items()}
    for key in values:
        if key in os.environ:
            values[key] = os.environ[key]
    # Environment names the file does not list still count (e.g. FUNCTIONS_KEY from stack.env).
    for key, value in os.environ.items():
        values.setdefault(key, value)
    values.update(overrides or {})
    if export:
        for key, value in values.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
    host_json = _read_json(app_dir / "host.json", "host.json") if (app_dir / "host.json").is_file() else {}
    _apply_job_host_overrides(host_json, values)
    return HostConfig(app_dir=app_dir, settings=values, host_json=host_json, settings_source=source)


def _apply_job_host_overrides(host_json: dict[str, Any], values: Mapping[str, str]) -> None:
    """`AzureFunctionsJobHost__a__b=v` sets host.json `a.b`, as app settings do in Azure."""
    for key, value in values.items():
        if not key.startswith(JOB_HOST_PREFIX):
            continue
        path = [p for p in key[len(JOB_HOST_PREFIX) :].split("__") if p]
        node = host_json
        for part in path[:-1]:
            existing = next((k for k in node if k.lower() == part.lower()), part)
            child = node.get(existing)
            if not isinstance(child, dict):
                child = node[existing] = {}
            node = child
        if path:
            last = next((k for k in node if k.lower() == path[-1].lower()), path[-1])
            node[last] = value
