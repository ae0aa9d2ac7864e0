"""Host pieces without servers: route templates, schedules, settings and app errors, and the
in-process test client (the same routing, keys and limits as over HTTP)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from werkzeug.test import EnvironBuilder, run_wsgi_app

from infra.local.funchost import ConfigError, FunctionHost, TestClient, load_config
from infra.local.funchost.routes import compile_route
from infra.local.funchost.timers import Schedule
from infra.local.stack import DEV_ACCOUNT, DEV_KEY

from .conftest import APP_DIR, BASE_SETTINGS, FUNCTIONS_KEY


@pytest.fixture
def isolated() -> Iterator[None]:
    """Loading an app exports settings and imports `function_app`, as the real host does: undo both."""
    environ, modules, path = dict(os.environ), dict(sys.modules), list(sys.path)
    yield
    os.environ.clear()
    os.environ.update(environ)
    for name in set(sys.modules) - set(modules):
        del sys.modules[name]
    sys.modules.update(modules)
    sys.path[:] = path


@pytest.fixture
def client(isolated: None, tmp_path: Path) -> TestClient:
    # Azurite's public development account; nothing connects to it in these tests.
    storage = (
        f"DefaultEndpointsProtocol=http;AccountName={DEV_ACCOUNT};AccountKey={DEV_KEY};"
        f"BlobEndpoint=http://127.0.0.1:9/{DEV_ACCOUNT};"
    )
    settings = {**BASE_SETTINGS, "FUNCHOST_TEST_RECORD_DIR": str(tmp_path), "AzureWebJobsStorage": storage}
    return FunctionHost(APP_DIR, settings=settings).test_client()


@pytest.mark.parametrize(
    ("template", "path", "expected"),
    [
        ("items/{id:int}", "items/5", {"id": "5"}),
        ("items/{id:int}", "items/-5", {"id": "-5"}),
        ("items/{id:int}", "items/five", None),
        ("items/{id:int}/{name?}", "items/5", {"id": "5"}),
        ("items/{id:int}/{name?}", "items/5/x", {"id": "5", "name": "x"}),
        ("items/{id:int}/{name?}", "items/5/x/y", None),
        ("a/{name:alpha}", "a/Abc", {"name": "Abc"}),
        ("a/{name:alpha}", "a/ab1", None),
        ("g/{k:guid}", "g/5C4F6B0E-8A3E-4F0E-9A55-1A2B3C4D5E6F", {"k": "5C4F6B0E-8A3E-4F0E-9A55-1A2B3C4D5E6F"}),  # noqa: E501
        ("g/{k:guid}", "g/5c4f6b0e", None),
        ("b/{flag:bool}", "b/True", {"flag": "True"}),
        ("n/{n:range(1,9)}", "n/9", {"n": "9"}),
        ("n/{n:range(1,9)}", "n/10", None),
        ("n/{n:min(3):max(5)}", "n/4", {"n": "4"}),
        ("s/{s:length(2,3)}", "s/abcd", None),
        ("s/{s:minlength(2)}", "s/ab", {"s": "ab"}),
        ("r/{s:regex(^v[0-9]+$)}", "r/v12", {"s": "v12"}),
        ("d/{x=5}", "d", {"x": "5"}),
        ("files/{*rest}", "files/a/b/c.txt", {"rest": "a/b/c.txt"}),
        ("files/{*rest}", "files/a\nb", {"rest": "a\nb"}),  # an encoded newline is a character too
        ("files/{name}.{ext}", "files/model.tar.gz", {"name": "model.tar", "ext": "gz"}),
        ("runs", "RUNS", {}),
        ("runs", "runs/x", None),
    ],
)  # fmt: skip
def test_route_templates(template: str, path: str, expected: dict[str, str] | None) -> None:
    assert compile_route(template).match(path) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("items/{id:integer}", "'integer' is not supported"),
        ("items/{id:range(1)}", "needs 2 integer"),
        ("items/{id}/{ID}", "names a parameter twice"),
        ("items/{id", "unbalanced braces"),
    ],
)
def test_bad_route_templates_name_the_problem(template: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compile_route(template)


def test_ncrontab_schedules_have_a_seconds_field() -> None:
    start = datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert Schedule.parse("*/15 * * * * *", "f").next_after(start) == datetime(
        2026, 1, 1, 0, 0, 15, tzinfo=UTC
    )
    assert Schedule.parse("0 30 2 * * *", "f").next_after(start) == datetime(2026, 1, 1, 2, 30, tzinfo=UTC)
    assert Schedule.parse("00:05:00", "f").next_after(start) == datetime(2026, 1, 1, 0, 5, 1, tzinfo=UTC)
    for bad in ("* * * * *", "61 * * * * *", "every minute"):
        with pytest.raises(ConfigError, match="six-field NCRONTAB"):
            Schedule.parse(bad, "cleanup")


def test_settings_environment_wins_and_host_json_overrides(tmp_path: Path, isolated: None) -> None:
    (tmp_path / "function_app.py").write_text("")
    (tmp_path / "host.json").write_text('{"extensions": {"http": {"routePrefix": ""}}}')
    (tmp_path / "local.settings.json.example").write_text('{"Values": {"A": "file", "B": "file"}}')
    os.environ["B"] = "env"
    os.environ["AzureFunctionsJobHost__extensions__blobs__maxDegreeOfParallelism"] = "3"  # noqa: SIM112
    config = load_config(tmp_path)
    assert (config.get("A"), config.get("B")) == ("file", "env")
    assert os.environ["A"] == "file", "settings are exported before the app is imported"
    assert config.route_prefix == ""
    assert config.max_degree_of_parallelism == 3
    assert config.body_limit == 100 * 1024 * 1024
    assert config.resolve("%A%/{name}", "path") == "file/{name}"
    with pytest.raises(ConfigError, match="names app setting MISSING, which is not set"):
        config.resolve("%MISSING%", "schedule")
    (tmp_path / "local.settings.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"local\.settings\.json is not valid JSON"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match=r"has no function_app\.py"):
        load_config(tmp_path / "nowhere")


def test_unsupported_trigger_and_unset_schedule_setting_are_named(tmp_path: Path, isolated: None) -> None:
    (tmp_path / "function_app.py").write_text(
        "import azure.functions as func\napp = func.FunctionApp()\n"
        "@app.event_hub_message_trigger(arg_name='m', event_hub_name='h', connection='HUB')\n"
        "def on_message(m: func.EventHubEvent) -> None: ...\n"
    )
    with pytest.raises(ConfigError, match=r"on_message: trigger eventHubTrigger is not supported"):
        FunctionHost(tmp_path).load()
    (tmp_path / "function_app.py").write_text(
        "import azure.functions as func\napp = func.FunctionApp()\n"
        "@app.timer_trigger(schedule='%NIGHTLY%', arg_name='t')\n"
        "def cleanup(t: func.TimerRequest) -> None: ...\n"
    )
    with pytest.raises(ConfigError, match=r"cleanup: schedule '%NIGHTLY%' names app setting NIGHTLY"):
        FunctionHost(tmp_path).load()


def test_test_client_runs_routes_in_process(client: TestClient) -> None:
    assert client.http.get("/api/items/3").get_json() == {"by": "id", "params": {"id": "3"}}
    assert client.http.get("/api/secure").status_code == 401
    assert client.http.get("/api/secure", headers={"x-functions-key": FUNCTIONS_KEY}).text == "secret"
    assert client.http.get("/api/boom").status_code == 500


def test_default_limit_is_100_mib(client: TestClient) -> None:
    environ = EnvironBuilder(path="/api/echo", method="POST").get_environ()
    environ["wsgi.input"] = _Endless()
    environ["CONTENT_LENGTH"] = str(100 * 1024 * 1024 + 1)
    _, status, _ = run_wsgi_app(client.host.http, environ)
    assert status.startswith("413")


def test_test_client_runs_timers(client: TestClient, tmp_path: Path) -> None:
    client.timer("tick", past_due=True)
    assert '"past_due": true' in (tmp_path / "tick.jsonl").read_text()
    with pytest.raises(ConfigError, match="no timerTrigger function named 'nope'"):
        client.timer("nope")


class _Endless:
    """A request body that would never end: the host must not read it."""

    def read(self, size: int = -1) -> bytes:
        raise AssertionError("the body of an over-limit request was read")


def test_stack_env_carries_the_blob_webhook_key_and_subscribes_ingest() -> None:
    """`make up` writes BLOBS_EXTENSION_KEY to .local/stack.env; the Event Grid stand-in's subscription
    is the one Bicep makes: training container -> the ingest function's webhook with that key."""
    from infra.local.stack import LocalStack

    stack = LocalStack()
    assert stack.env()["BLOBS_EXTENSION_KEY"] == stack.app_settings()["FUNCTIONS_BLOBS_EXTENSION_KEY"]
    (subscription,) = stack.event_subscriptions()
    assert subscription["name"] == "ingest-training-data" and subscription["container"] == "training-data"
    assert subscription["endpoint"] == (
        f"{stack.functions_url}/runtime/webhooks/blobs?functionName=Host.Functions.ingest"
        f"&code={stack.env()['BLOBS_EXTENSION_KEY']}"
    )
