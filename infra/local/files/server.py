"""The werkzeug server around `FilesResponses`: threaded, HTTP/1.1 keep-alive, raw headers kept."""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from infra.local.loopback import LoopbackHostOnly
from infra.local.stack import DEV_ACCOUNT, DEV_KEY

from .models import FilesBackend
from .responses import RAW_HEADERS_KEY, FilesResponses


class RawHeadersRequestHandler(WSGIRequestHandler):
    """Hands the application the header list as sent: WSGI loses header case and werkzeug drops
    names with underscores, both of which Azure metadata names keep."""

    def make_environ(self) -> dict:
        environ = super().make_environ()
        environ[RAW_HEADERS_KEY] = list(self.headers.items())
        return environ


def accounts_from_env(environ: dict[str, str] | None = None) -> dict[str, bytes]:
    """The accounts Azurite serves: `AZURITE_ACCOUNTS` (`name:key1[:key2];...`, keys decoded) when
    set, and then only those (a stack's random keys replace the published one), else devstoreaccount1
    with Azurite's published key. The first key of each account signs."""
    environ = os.environ if environ is None else environ
    accounts: dict[str, bytes] = {}
    for entry in environ.get("AZURITE_ACCOUNTS", "").split(";"):
        name, _, keys = entry.strip().partition(":")
        if name and keys:
            accounts[name] = base64.b64decode(keys.split(":")[0])
    return accounts or {DEV_ACCOUNT: base64.b64decode(DEV_KEY)}


def create_server(host: str, port: int, data_dir: Path, copy_chunk_delay: float = 0.0) -> BaseWSGIServer:
    """A ready (not yet serving) server; `server.backend` is its state, closed by `close_server`."""
    backend = FilesBackend(data_dir, copy_chunk_delay=copy_chunk_delay)
    local = {f"{host}:{port}", f"127.0.0.1:{port}", f"localhost:{port}"}
    app = FilesResponses(backend, accounts_from_env(), local_netlocs=local)
    guarded = LoopbackHostOnly(app, "The Files emulator")
    server = make_server(host, port, guarded, threaded=True, request_handler=RawHeadersRequestHandler)
    server.backend = backend  # type: ignore[attr-defined]
    logging.getLogger(__name__).info("Files emulator on http://%s:%s, data in %s", host, port, data_dir)
    return server


def close_server(server: BaseWSGIServer) -> None:
    server.server_close()
    server.backend.close()  # type: ignore[attr-defined]
