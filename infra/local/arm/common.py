"""What both providers of the ARM emulator (Batch AI in `batchai/`, Azure ML in `azureml/`) and its
server share: the configuration, ARM's times, durations and ids, and how the state files keep
inline secrets out."""

from __future__ import annotations

import base64
import pickle
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass
class Config:
    data_dir: Path
    files_root: Path
    files_endpoint: str = "http://127.0.0.1:10004/devstoreaccount1"
    provisioning_delay: float = 5.0  # seconds a cluster spends resizing (nodes preparing)
    operation_delay: float = 0.5  # seconds a long-running operation stays InProgress
    retry_after: int = 1  # Retry-After (whole seconds: SDKs parse it as an integer) on 202 answers
    job_python: str = ""  # interpreter for python toolkits; default: the emulator's own
    location: str = "eastus"
    tick_interval: float = 0.1
    node_failure_rate: float = 0.0  # fraction of new nodes that fail setup and become unusable
    node_failure_seed: int | None = None
    # Account name -> keys (base64) of the storage accounts the local stack serves: Microsoft.Storage
    # shows them, and download URLs of outputs in a share are SAS URLs signed with the first key.
    storage_accounts: dict[str, list[str]] = field(default_factory=dict)
    storage_resource_group: str = "local-storage"
    # Service -> endpoint URL of the local stack (blob, queue, table, file), for the accounts' endpoints.
    storage_endpoints: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def storage_keys(self) -> dict[str, bytes]:
        """Account name -> its first key, decoded: what SAS signatures are computed with."""
        return {name: base64.b64decode(keys[0]) for name, keys in self.storage_accounts.items() if keys}


def now_iso(ts: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_duration(value: str) -> float:
    """ISO 8601 duration (`P7D`, `PT1H30M`, `PT0.5S`) or .NET TimeSpan (`7.00:00:00`) in seconds."""
    m = re.fullmatch(
        r"P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
        r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?",
        value.strip(),
    )
    if m and value.strip() not in ("P", "PT"):
        parts = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
        return parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]
    m = re.fullmatch(r"(?:(\d+)\.)?(\d+):(\d+):(\d+(?:\.\d+)?)", value.strip())
    if m:
        days, hours, minutes, seconds = m.groups()
        return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    raise ValueError(f"not a duration: {value!r}")


def resource_key(resource_id: str) -> str:
    """Records are keyed by lower-cased resource id: ARM ids are case-insensitive."""
    return resource_id.rstrip("/").lower()


def clone(value: Any) -> Any:
    """A deep copy of JSON-shaped data (pickle round trip: several times faster than copy.deepcopy)."""
    return pickle.loads(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))


# Inline secret values of requests (EnvironmentVariableWithSecretValue.value, storage account keys of
# mounts, registry passwords, admin passwords) stay in memory; the state file holds this instead.
SECRET_PLACEHOLDER = "<secret: kept in memory only>"
SECRET_FIELDS = frozenset({"accountKey", "password", "adminUserPassword"})


def without_secret_values(value: Any, field: str = "") -> Any:
    """A copy of `value` (the emulator's JSON state) with every inline secret value replaced by
    SECRET_PLACEHOLDER: the `value` of each entry of a `secrets` list, each value of a job's
    `secrets` map, and SECRET_FIELDS strings."""
    if isinstance(value, dict):
        if field == "secrets":  # a job's meta: name -> value
            return {name: SECRET_PLACEHOLDER for name in value}
        return {
            k: SECRET_PLACEHOLDER
            if k in SECRET_FIELDS and isinstance(v, str)
            else without_secret_values(v, k)
            for k, v in value.items()
        }
    if isinstance(value, list):
        if field == "secrets":
            return [
                {**item, "value": SECRET_PLACEHOLDER} if isinstance(item, dict) and "value" in item else item
                for item in value
            ]
        return [without_secret_values(item) for item in value]
    return value
