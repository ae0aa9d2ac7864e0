"""The dashboard's files (``ui/``), served by the function app at ``GET /api/ui`` and ``/api/ui/...``.

Why from the function app: the page and the API then share one origin (no CORS), and it works
wherever the app runs, the offline local stack included: the page loads nothing from any other
host (the charting library, uPlot, is vendored in ``ui/vendor/``). The page is anonymous and holds
no data and no secret: it asks the person for the function key (or takes ``?code=``), keeps it in
the browser session and calls the API with it like any other client.

Only the files present in ``ui/`` are served, by exact relative path (nothing outside the folder is
reachable, whatever the path says). Every answer carries a Content-Security-Policy that allows
scripts, styles and requests to this origin only, and ``Referrer-Policy: no-referrer`` so a key
given as ``?code=`` never leaks to the hosts that output download links point at.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from urllib.parse import urlsplit

from shared.api_messages import ApiError, ApiRequest, ApiResponse

__all__ = ["UI_DIR", "serve"]

UI_DIR = Path(__file__).resolve().parents[1] / "ui"
INDEX = "index.html"
ASSET_PREFIX = "__UI__"  # in index.html: the URL path of the ui folder, filled in per request
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
    ".LICENSE": "text/plain; charset=utf-8",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


class FileResponse(ApiResponse):
    """An answer with a body of bytes and its own media type (the API's other answers are JSON)."""

    def __init__(self, data: bytes, media_type: str) -> None:
        super().__init__(200, None, dict(SECURITY_HEADERS))
        self.data = data
        self.media_type = media_type

    def body_bytes(self) -> bytes:
        return self.data

    @property
    def content_type(self) -> str | None:
        return self.media_type


@functools.cache
def _files() -> dict[str, Path]:
    """relative path -> file, of every regular file in ui/ (symlinks are not followed)."""
    files = {}
    for path in sorted(UI_DIR.rglob("*")):
        if path.is_file() and not path.is_symlink() and not path.name.startswith("."):
            files[path.relative_to(UI_DIR).as_posix()] = path
    return files


def _media_type(name: str) -> str:
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    return MEDIA_TYPES.get(suffix, "application/octet-stream")


def _ui_path(request: ApiRequest) -> str:
    """The URL path of the ui folder for this request ("/api/ui" behind the default route prefix)."""
    path = urlsplit(request.url).path if request.url else ""
    found = re.match(r"^(.*?/ui)(/|$)", path)
    return found.group(1) if found else "/api/ui"


def serve(request: ApiRequest) -> ApiResponse:
    """The page (no path, or index.html) or one of its files; 404 for anything else."""
    name = request.route_params.get("path") or INDEX
    file = _files().get(name)
    if file is None:
        raise ApiError(404, "NotFound", f"no dashboard file {name[:100]!r}")
    data = file.read_bytes()
    if name == INDEX:
        data = data.replace(ASSET_PREFIX.encode(), _ui_path(request).encode())
    return FileResponse(data, _media_type(name))
