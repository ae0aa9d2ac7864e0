"""The dashboard's files as the function app serves them (shared.dashboard): no server needed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shared.api_messages import ApiRequest
from shared.dashboard import UI_DIR
from shared.runs_api import handle

ROOT = Path(__file__).resolve().parents[2]


def get(route: str, path: str | None = None, url: str = "http://localhost:7071/api/ui") -> object:
    params = {"path": path} if path is not None else {}
    return handle(route, ApiRequest.build("GET", url, route_params=params))


def test_the_page_names_its_files_under_the_apps_ui_path() -> None:
    response = get("ui")
    assert response.status == 200 and response.content_type == "text/html; charset=utf-8"
    page = response.body_bytes().decode()
    assert "__UI__" not in page
    assert re.findall(r'(?:src|href)="(/api/ui/[^"]+)"', page) == [
        "/api/ui/vendor/uPlot.min.css",
        "/api/ui/app.css",
        "/api/ui/vendor/uPlot.iife.min.js",
        "/api/ui/app.js",
    ]
    behind = get("ui", url="https://example.net/prefix/api/ui?code=x").body_bytes().decode()
    assert 'src="/prefix/api/ui/app.js"' in behind


def test_files_have_their_media_types_and_the_security_headers() -> None:
    script = get("ui/{path}", "app.js")
    assert script.status == 200 and script.content_type == "text/javascript; charset=utf-8"
    assert script.body_bytes() == (UI_DIR / "app.js").read_bytes()
    assert get("ui/{path}", "vendor/uPlot.min.css").content_type == "text/css; charset=utf-8"
    headers = script.headers
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "connect-src 'self'" in headers["Content-Security-Policy"]
    assert headers["Referrer-Policy"] == "no-referrer" and headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    [
        "../shared/settings.py",
        "..%2Fshared%2Fsettings.py",
        "/etc/passwd",
        "vendor",
        "nope.js",
        "APP.JS",
        "./app.js",
    ],
)
def test_only_the_files_of_the_ui_folder_are_served(path: str) -> None:
    response = get("ui/{path}", path)
    assert response.status == 404
    assert json.loads(response.body_bytes())["error"]["code"] == "NotFound"


def test_the_page_loads_nothing_from_another_host() -> None:
    for file in ("index.html", "app.js", "app.css"):
        text = (UI_DIR / file).read_text()
        assert not re.search(r"(?:src|href)=\"(?:https?:)?//", text), file
        assert 'fetch("http' not in text and "import(" not in text, file


def test_the_vendored_chart_library_is_the_pinned_one() -> None:
    """ui/vendor/ holds uPlot as package.json pins it (npm ci installs it into node_modules)."""
    pinned = json.loads((ROOT / "package.json").read_text())["dependencies"]["uplot"]
    vendored = (UI_DIR / "vendor" / "uPlot.iife.min.js").read_bytes()
    assert vendored.startswith(f"/*! https://github.com/leeoniya/uPlot (v{pinned}) */".encode())
    installed = ROOT / "node_modules" / "uplot"
    assert json.loads((installed / "package.json").read_text())["version"] == pinned, "run npm ci"
    assert vendored == (installed / "dist" / "uPlot.iife.min.js").read_bytes()
    assert (UI_DIR / "vendor" / "uPlot.min.css").read_bytes() == (
        installed / "dist" / "uPlot.min.css"
    ).read_bytes()


def test_the_dashboards_run_states_are_the_registrys() -> None:
    """ui/app.js cannot import Python: its list of states is held to shared.run_states here."""
    from shared.run_states import STATES

    script = (UI_DIR / "app.js").read_text()
    declared = re.search(r"^const STATES = (\[[^\]]*\]);$", script, re.MULTILINE)
    assert declared is not None, "ui/app.js no longer declares `const STATES = [...]`"
    assert tuple(json.loads(declared.group(1))) == STATES
