"""`FunctionHost`: load an app, serve its HTTP triggers, run its blob and timer triggers; and
`TestClient`, which calls the same handlers in-process (as Chalice's test client does)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.test import Client

from infra.local.loopback import LoopbackHostOnly

from . import webhooks
from .app import FunctionSpec, disabled, load_functions
from .blobs import BlobTriggers
from .config import BLOBS_EXTENSION_KEY, FUNCTIONS_KEY, ConfigError, HostConfig, load_config
from .http import HttpTriggers
from .invoker import Invoker
from .queues import QueueTriggers
from .timers import TimerTriggers

log = logging.getLogger("funchost")


class _QuietHandler(WSGIRequestHandler):
    """Request lines go to the `funchost.http` logger at debug level, not to stderr."""

    def log(self, type: str, message: str, *args: Any) -> None:
        logging.getLogger("funchost.http").debug(message, *args)


class FunctionHost:
    """The local Functions host for one app directory.

    `FunctionHost(app_dir).start()` loads the app (settings exported to the environment first),
    starts the HTTP server when `port` is given, and the blob pollers and timers unless
    `triggers=False`; `stop()` stops taking work and waits (bounded) for running invocations.
    """

    def __init__(
        self,
        app_dir: Path | str,
        settings_file: Path | str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
        triggers: bool = True,
    ) -> None:
        self.app_dir = Path(app_dir)
        self.settings_file = settings_file
        self.bind_host = host
        self.port = port
        self.overrides = dict(settings or {})
        self.run_triggers = triggers
        self.config: HostConfig | None = None
        self.functions: list[FunctionSpec] = []
        self.disabled: list[str] = []
        self.invoker: Invoker | None = None
        self.http: HttpTriggers | None = None
        self.blobs: BlobTriggers | None = None
        self.timers: TimerTriggers | None = None
        self.queues: QueueTriggers | None = None
        self._server: BaseWSGIServer | None = None
        self._server_thread: threading.Thread | None = None

    # --- loading ---------------------------------------------------------------------------------
    def load(self) -> FunctionHost:
        """Read settings and host.json, import the app, index and check its triggers."""
        if self.config is not None:
            return self
        config = load_config(self.app_dir, self.settings_file, self.overrides)
        indexed = load_functions(config.app_dir)
        functions = [f for f in indexed if not disabled(f.name, config.settings)]
        self.disabled = [f.name for f in indexed if disabled(f.name, config.settings)]
        invoker = Invoker(str(config.app_dir), config.function_timeout)
        self.http = HttpTriggers(config, functions, invoker)
        self.blobs = BlobTriggers(config, functions, invoker)
        self.timers = TimerTriggers(config, functions, invoker)
        self.queues = QueueTriggers(config, functions, invoker)
        self.config, self.functions, self.invoker = config, functions, invoker
        blobs = self.blobs
        self.http.system_routes[webhooks.PATH] = lambda request: webhooks.handle_blob_webhook(
            request, config, blobs
        )
        if any(t.event_grid for t in blobs.triggers) and not config.get(BLOBS_EXTENSION_KEY):
            log.warning("%s is not set: the blob webhook answers 401", BLOBS_EXTENSION_KEY)
        keyed = any(r.auth_level != "anonymous" for r in self.http.routes)
        if keyed and not config.get(FUNCTIONS_KEY):
            log.warning("%s is not set: every function- and admin-level route answers 401", FUNCTIONS_KEY)
        return self

    @property
    def base_url(self) -> str:
        return f"http://{self.bind_host}:{self.port}"

    def describe(self) -> list[str]:
        """One line per function, as `func start` prints them."""
        self.load()
        assert self.http and self.timers
        lines = []
        routes = {r.spec.name: r for r in self.http.routes}
        for spec in self.functions:
            if spec.name in routes:
                route = routes[spec.name]
                methods = (
                    ",".join(sorted(route.methods)) if route.methods else "GET,POST,PUT,PATCH,DELETE,..."
                )
                base = self.base_url if self.port is not None else ""
                lines.append(f"{spec.name}: [{methods}] {base}{self.http.url_path(route)}")
            elif str(spec.trigger.get("source") or "").lower() == "eventgrid":
                base = self.base_url if self.port is not None else ""
                lines.append(
                    f"{spec.name}: blobTrigger (EventGrid) "
                    f"{base}{webhooks.PATH}?functionName={spec.function_id}"
                )
            elif spec.trigger_type == "timerTrigger":
                lines.append(f"{spec.name}: {self.timers.describe(spec.name)}")
            else:
                lines.append(f"{spec.name}: {spec.trigger_type}")
        lines.extend(f"{name}: disabled" for name in self.disabled)
        return lines

    # --- running ---------------------------------------------------------------------------------
    def start(self) -> FunctionHost:
        self.load()
        assert self.http and self.blobs and self.timers
        if self.port is not None:
            # Only requests addressed to a loopback name reach the triggers (DNS rebinding).
            app = LoopbackHostOnly(self.http, "The Functions host")
            self._server = make_server(
                self.bind_host, self.port, app, threaded=True, request_handler=_QuietHandler
            )
            self.port = self._server.server_port
            self._server_thread = threading.Thread(
                target=self._server.serve_forever, name="http", daemon=True
            )
            self._server_thread.start()
        log.info("Functions:")
        for line in self.describe():
            log.info("        %s", line)
        if self.run_triggers:
            self.blobs.start()
            self.timers.start()
            assert self.queues is not None
            self.queues.start()
        log.info("Host started (%d functions)", len(self.functions))
        return self

    def stop(self, timeout: float | None = None) -> bool:
        """Stop servers and triggers; True when every running invocation finished in time."""
        if self.config is None or self.invoker is None:
            return True
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        log.info(
            "Stopping host: waiting up to %.0fs for %d running invocation(s)", timeout, self.invoker.running
        )
        if self.timers:
            self.timers.stop()
        if self.blobs:
            self.blobs.stop()
        if self.queues:
            self.queues.stop()
        if self._server is not None:
            self._server.shutdown()
        finished = self.invoker.wait_idle(timeout)
        if self._server is not None:
            self._server.server_close()
            self._server = None
        if not finished:
            log.warning("Host stopped with %d invocation(s) still running", self.invoker.running)
        else:
            log.info("Host stopped")
        return finished

    def __enter__(self) -> FunctionHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def test_client(self) -> TestClient:
        return TestClient(self)


class TestClient:
    """In-process calls of the app's handlers, through the same routing, auth and bindings.

    `client.http.get("/api/items/1", headers={...})` (a werkzeug test client: responses have
    `status_code`, `headers`, `data`, `get_json()`); `client.timer(name, past_due=False)`;
    `client.blob(name, "container/blob")` runs a blob trigger's handler on an existing blob.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, host: FunctionHost) -> None:
        self.host = host.load()
        assert host.http is not None
        self.http = Client(host.http)

    def _spec(self, name: str, trigger_type: str) -> FunctionSpec:
        spec = next((s for s in self.host.functions if s.name == name), None)
        if spec is None or spec.trigger_type != trigger_type:
            known = ", ".join(s.name for s in self.host.functions if s.trigger_type == trigger_type)
            raise ConfigError(f"no {trigger_type} function named {name!r} (known: {known or 'none'})")
        return spec

    def timer(self, name: str, past_due: bool = False) -> None:
        self._spec(name, "timerTrigger")
        assert self.host.timers is not None
        from azure.functions.timer import TimerRequest

        trigger = self.host.timers.triggers[name]
        with trigger.lock:
            assert self.host.invoker is not None
            self.host.invoker.invoke(trigger.spec, TimerRequest(past_due=past_due), "Test client", {})

    def blob(self, name: str, blob_path: str) -> Any:
        spec = self._spec(name, "blobTrigger")
        assert self.host.blobs is not None and self.host.invoker is not None
        trigger = next(t for t in self.host.blobs.triggers if t.spec is spec)
        container, _, blob_name = blob_path.partition("/")
        if container != trigger.path.container or trigger.path.match(blob_name) is None:
            raise ConfigError(f"blob {blob_path!r} does not match the trigger path of {name}")
        client = trigger.service.get_blob_client(container, blob_name)
        value = self.host.blobs._binding(trigger, client)
        metadata = {"BlobTrigger": blob_path, "Uri": client.url, **(trigger.path.match(blob_name) or {})}
        return self.host.invoker.invoke(spec, value, "Test client", metadata)
