"""Settings and the HTTP client of the CLI: one place that turns every failure into a one-line error."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
STACK_ENV = Path(".local") / "stack.env"
DEFAULT_CONTAINER = "training-data"


class CliError(Exception):
    """An error for the person at the terminal: printed as one line, exit status 1."""


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=VALUE` lines (what `python -m infra.local.stack up` writes); blanks and # comments skipped."""
    values: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read settings file {path}: {exc.strerror or exc}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise CliError(f"{path}:{number}: expected KEY=VALUE")
        values[key.strip()] = value.strip()
    return values


@dataclass(frozen=True)
class Settings:
    """How to reach the function app and the storage account. Read at first use, never printed."""

    functions_url: str | None
    functions_key: str | None
    connection_string: str | None
    container: str
    source: str

    @classmethod
    def load(cls, env_file: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        """The environment wins over the env file; the env file is `--env-file`, else `.local/stack.env`
        in the current directory, else in the repository (where `make up` writes it)."""
        environ = os.environ if environ is None else environ
        file_values: dict[str, str] = {}
        source = "environment"
        if env_file is not None:
            file_values = read_env_file(env_file)
            source = str(env_file)
        else:
            for candidate in (Path.cwd() / STACK_ENV, REPO_ROOT / STACK_ENV):
                if candidate.is_file():
                    file_values = read_env_file(candidate)
                    source = str(candidate)
                    break

        def get(name: str) -> str | None:
            return environ.get(name) or file_values.get(name) or None

        return cls(
            functions_url=get("FUNCTIONS_URL"),
            functions_key=get("FUNCTIONS_KEY"),
            connection_string=get("AZURE_STORAGE_CONNECTION_STRING"),
            container=get("TRAINING_CONTAINER") or DEFAULT_CONTAINER,
            source=source,
        )

    def require(self, *names: str) -> None:
        missing = [n for n in names if not getattr(self, _ATTRS[n])]
        if missing:
            raise CliError(
                f"missing setting {', '.join(missing)}: set it in the environment or in .local/stack.env "
                "(`make up` writes that file for the local stack)"
            )


_ATTRS = {
    "FUNCTIONS_URL": "functions_url",
    "FUNCTIONS_KEY": "functions_key",
    "AZURE_STORAGE_CONNECTION_STRING": "connection_string",
}


class ApiClient:
    """The runs API over HTTP (`x-functions-key`). Errors become CliError with the API's own message."""

    def __init__(self, settings: Settings, timeout: float = 60.0) -> None:
        settings.require("FUNCTIONS_URL", "FUNCTIONS_KEY")
        assert settings.functions_url is not None and settings.functions_key is not None
        base = settings.functions_url.rstrip("/")
        self.base = base if base.endswith("/api") else base + "/api"
        self.session = requests.Session()
        self.session.headers["x-functions-key"] = settings.functions_key
        self.session.headers["Accept"] = "application/json"
        self.timeout = timeout

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        url = f"{self.base}/{path.lstrip('/')}"
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)
        except requests.ConnectionError:
            raise CliError(
                f"cannot reach the function app at {self.base} (is the stack up? `make up`)"
            ) from None
        except requests.Timeout:
            raise CliError(
                f"the function app at {self.base} did not answer within {self.timeout:.0f}s"
            ) from None
        except requests.RequestException as exc:
            raise CliError(f"request to {url} failed: {exc}") from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = None
            raise ApiError(response.status_code, api_error_message(response), method, path.lstrip("/"), body)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The JSON object the API answers (every operation answers an object)."""
        response = self.request(method, path, **kwargs)
        try:
            body: dict[str, Any] = response.json()
            return body
        except ValueError:
            raise CliError(
                f"{method} {path}: the function app answered {response.status_code} without JSON"
            ) from None

    # --- operations ------------------------------------------------------------------------------
    def start_run(self, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self.json("POST", "runs", json=body, headers=headers)

    def resubmit(
        self, run_id: str, body: dict[str, Any], idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """POST /api/runs/{id}/resubmit: a new run on the same snapshot."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self.json("POST", f"runs/{quote(run_id)}/resubmit", json=body, headers=headers)

    def callback_secret(self, run_id: str) -> str:
        """The run's callback signing secret (the API issues it once)."""
        return str(self.json("POST", f"runs/{quote(run_id)}/callback-secret")["callback_secret"])

    def get_run(self, run_id: str) -> dict[str, Any]:
        return self.json("GET", f"runs/{quote(run_id)}")

    def list_runs(self, state: str | None = None, dataset: str | None = None, limit: int | None = None,
                  continuation: str | None = None) -> dict[str, Any]:  # fmt: skip
        params = {"state": state, "dataset": dataset, "limit": limit, "continuation": continuation}
        return self.json("GET", "runs", params={k: v for k, v in params.items() if v is not None})

    def logs(self, run_id: str, tail: int = 200) -> dict[str, Any]:
        return self.json("GET", f"runs/{quote(run_id)}/logs", params={"tail": tail})

    def metrics(self, run_id: str) -> dict[str, list[dict[str, Any]]]:
        """The run's metrics series: name -> points ({"x", "value", "time"}), oldest first."""
        series: dict[str, list[dict[str, Any]]] = (
            self.json("GET", f"runs/{quote(run_id)}/metrics").get("metrics") or {}
        )
        return series

    def delete_run(self, run_id: str, cluster: bool = False) -> dict[str, Any]:
        params = {"cluster": "true"} if cluster else {}
        return self.json("DELETE", f"runs/{quote(run_id)}", params=params)

    def clusters(self) -> list[dict[str, Any]]:
        clusters: list[dict[str, Any]] = self.json("GET", "clusters").get("clusters", [])
        return clusters

    def delete_cluster(self, name: str, force: bool = False) -> dict[str, Any]:
        params = {"force": "true"} if force else {}
        return self.json("DELETE", f"clusters/{quote(name)}", params=params)

    def health(self) -> tuple[int, dict[str, Any]]:
        try:
            response = self.request("GET", "health/deep")
        except ApiError as exc:
            if exc.status == 503 and exc.body is not None:
                return exc.status, exc.body
            raise
        return response.status_code, response.json()


class ApiError(CliError):
    def __init__(self, status: int, message: str, method: str, path: str, body: Any = None) -> None:
        self.status = status
        self.body = body
        super().__init__(f"{method} /api/{path}: {status} {message}")


def api_error_message(response: requests.Response) -> str:
    """The API's `{"error": {"code", "message", "details"}}` as one line; anything else, briefly."""
    try:
        body = response.json()
    except ValueError:
        text = " ".join(response.text.split())[:200]
        return f"{response.reason or ''}: {text}".strip(": ") if text else (response.reason or "error")
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return " ".join(str(body).split())[:200]
    message = f"{error.get('code', 'Error')}: {error.get('message', '')}".rstrip(": ")
    details = error.get("details") or []
    fields = [f"{d.get('field')}: {d.get('message')}" for d in details if isinstance(d, dict)]
    if fields:
        message += " (" + "; ".join(fields[:5]) + ")"
    return message


def quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")
