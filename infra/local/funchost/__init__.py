"""Local Azure Functions host (Python v2 programming model): HTTP, blob and timer triggers with the
real host's semantics. `python -m infra.local.funchost --app-dir DIR --host H --port P`."""

from .config import ConfigError, HostConfig, load_config
from .host import FunctionHost, TestClient

__all__ = ["ConfigError", "FunctionHost", "HostConfig", "TestClient", "load_config"]
