"""Pieces of the ARM emulator that need no server: durations, $VAR expansion, share URL mapping, download
links (expiry, tampering), fault settings."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from werkzeug.datastructures import MultiDict
from werkzeug.test import Client, TestResponse

from infra.local.arm.batchai.backend import Backend
from infra.local.arm.common import Config, parse_duration
from infra.local.arm.faults import FaultInjector, FaultSettings
from infra.local.arm.jobrunner import expand_vars
from infra.local.arm.responses import ArmRequest
from infra.local.arm.server import ArmEmulator


@pytest.fixture
def backend(tmp_path: Path) -> Backend:
    return Backend(
        Config(
            data_dir=tmp_path / "arm",
            files_root=tmp_path / "shares",
            files_endpoint="http://127.0.0.1:10004/x",
        )
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("P7D", 604800), ("PT1H30M", 5400), ("PT0.5S", 0.5), ("7.00:00:00", 604800), ("01:00:05", 3605)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["P", "PT", "seven days", "1:2"])
def test_bad_durations_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_vars_expand_like_the_service() -> None:
    env = {"AZ_BATCHAI_MOUNT_ROOT": "/mnt", "ID": "7"}
    assert expand_vars("$AZ_BATCHAI_MOUNT_ROOT/afs/${ID}x $UNKNOWN", env) == "/mnt/afs/7x $UNKNOWN"


def test_share_urls_map_to_the_files_root(backend: Backend, tmp_path: Path) -> None:
    root = tmp_path / "shares"
    assert (
        backend.mounts.resolve_share("http://127.0.0.1:10004/devstoreaccount1/share")
        == root / "devstoreaccount1/share"
    )
    assert (
        backend.mounts.resolve_share("https://acct.file.core.windows.net/share/dir")
        == root / "acct/share/dir"
    )
    # another endpoint
    assert backend.mounts.resolve_share("http://127.0.0.1:9999/devstoreaccount1/share") is None
    assert backend.mounts.resolve_share("http://127.0.0.1:10004/devstoreaccount1/../etc") is None
    assert backend.mounts.resolve_share("nfs://server/share") is None


def serve_outputs_from(backend: Backend, monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Every job's output directory is `root` (these tests have no jobs, only links)."""
    monkeypatch.setattr(backend, "job_output_dir", lambda *args: root)


def link(app: ArmEmulator, req: ArmRequest, name: str, expires: float) -> str:
    return app.responses.download_url(req, ["sub", "rg", "ws", "exp", "job", "stdouterr", name], expires)


def test_download_links_expire_and_resist_tampering(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = ArmEmulator(backend)
    serve_outputs_from(backend, monkeypatch, tmp_path)
    file = tmp_path / "out.txt"
    file.write_bytes(b"model")
    req = ArmRequest("POST", "/", MultiDict(), b"", "http://localhost/")
    client = Client(app)

    def get(url: str) -> tuple[int, bytes]:
        parsed = urlparse(url)
        response = client.get(parsed.path, query_string=parsed.query)
        return response.status_code, response.get_data()

    good = link(app, req, "out.txt", time.time() + 300)
    assert get(good) == (200, b"model")
    assert str(tmp_path) not in good and "out.txt" in good  # names the file, never a local path
    assert get(link(app, req, "../out.txt", time.time() + 300))[0] == 404
    expired = link(app, req, "out.txt", time.time() - 1)
    status, body = get(expired)
    assert status == 403 and b"expired" in body
    query = parse_qs(urlparse(good).query)
    forged = good.replace(query["se"][0].replace(":", "%3A"), "2099-01-01T00%3A00%3A00Z")
    status, body = get(forged)
    assert status == 403 and b"Signature" in body
    assert get(good.replace("sig=", "sig=0"))[0] == 403


def test_download_links_honour_range(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like Azure Files behind a SAS link: a suffix or bounded Range gets 206 with those bytes only,
    a range past the end 416, an empty file no bytes, a HEAD the size; log tails rely on it to read
    only a log's end."""
    app = ArmEmulator(backend)
    serve_outputs_from(backend, monkeypatch, tmp_path)
    file = tmp_path / "stdout.txt"
    data = b"".join(b"line %05d\n" % i for i in range(20_000))
    file.write_bytes(data)
    req = ArmRequest("POST", "/", MultiDict(), b"", "http://h/")
    url = urlparse(link(app, req, "stdout.txt", time.time() + 60))
    client = Client(app)

    def get(range_header: str | None, method: str = "GET") -> TestResponse:
        headers = {"Range": range_header} if range_header else {}
        return client.open(url.path, method=method, query_string=url.query, headers=headers)

    tail = get("bytes=-100")
    assert tail.status_code == 206 and tail.get_data() == data[-100:]
    assert tail.headers["Content-Range"] == f"bytes {len(data) - 100}-{len(data) - 1}/{len(data)}"
    middle = get("bytes=10-19")
    assert middle.status_code == 206 and middle.get_data() == data[10:20]
    assert get("bytes=-100000000").get_data() == data  # a suffix longer than the file: all of it
    past = get(f"bytes={len(data)}-")
    assert past.status_code == 416 and past.headers["x-ms-error-code"] == "InvalidRange"
    whole = get(None)
    assert whole.status_code == 200 and whole.get_data() == data and whole.headers["Accept-Ranges"] == "bytes"
    empty = tmp_path / "stderr.txt"
    empty.write_bytes(b"")
    empty_url = urlparse(link(app, req, "stderr.txt", time.time() + 60))
    nothing = client.get(empty_url.path, query_string=empty_url.query, headers={"Range": "bytes=-100"})
    assert (nothing.status_code, nothing.get_data()) == (200, b"")  # no range in an empty file: no bytes
    head = get(None, "HEAD")
    assert (
        head.status_code == 200 and head.headers["Content-Length"] == str(len(data)) and not head.get_data()
    )


def test_fault_settings() -> None:
    with pytest.raises(ValueError, match="must not exceed 1"):
        FaultSettings.from_json({"rate_429": 0.6, "rate_500": 0.6})
    with pytest.raises(ValueError, match="latency_ms"):
        FaultSettings.from_json({"latency_ms": -1})
    injector = FaultInjector(FaultSettings.from_json({"rate_429": 0.5, "seed": 1}))
    first = [injector.draw() for _ in range(20)]
    injector.configure(FaultSettings.from_json({"rate_429": 0.5, "seed": 1}))
    assert first == [injector.draw() for _ in range(20)] and set(first) == {None, "429"}


def test_admin_settings_are_validated(backend: Backend) -> None:
    client = Client(ArmEmulator(backend))
    assert client.post("/_emulator/settings", json={"retry_after": 0.5}).status_code == 400
    assert client.post("/_emulator/settings", json={"bogus": 1}).status_code == 400
    answer = client.post("/_emulator/settings", json={"provisioning_delay": 0.25})
    assert answer.status_code == 200 and answer.get_json()["provisioning_delay"] == 0.25
    assert backend.config.provisioning_delay == 0.25


def test_blob_names_that_cannot_be_paths_stay_out_of_a_blob_mount(tmp_path: Path) -> None:
    from infra.local.arm.blobfs import _local_path

    assert _local_path(tmp_path, "data/train.txt") == tmp_path / "data" / "train.txt"
    assert _local_path(tmp_path, "dir/") == tmp_path / "dir"
    for name in ("../escape", "a/../../b", "a//b", "/abs", "./x", ""):
        assert _local_path(tmp_path, name) is None, name


def test_a_node_blob_mount_key_never_reaches_the_state_file() -> None:
    from infra.local.arm.blobfs import BlobMount
    from infra.local.arm.common import SECRET_PLACEHOLDER, without_secret_values

    mount = BlobMount("acct", "data", "bfs", "/cache", "http://127.0.0.1:1/acct", "s3cr3tKey==")
    kept = {"nodes": [{"id": "n1", "blobfs": [mount.to_json()]}]}
    assert "s3cr3tKey" not in str(without_secret_values(kept))
    assert without_secret_values(kept)["nodes"][0]["blobfs"][0]["accountKey"] == SECRET_PLACEHOLDER
    assert BlobMount.from_json(mount.to_json()) == mount


def test_blob_mount_keys_come_from_the_request_else_the_stack(tmp_path: Path) -> None:
    from infra.local.arm.common import SECRET_PLACEHOLDER

    backend = Backend(
        Config(data_dir=tmp_path / "arm", files_root=tmp_path / "shares", storage_accounts={"acct": ["k1"]})
    )
    assert backend.mounts.mount_key("acct", {"accountKey": "given"}) == "given"
    # A key the state file did not keep (restart), or a Key Vault reference: the stack's own key.
    assert backend.mounts.mount_key("acct", {"accountKey": SECRET_PLACEHOLDER}) == "k1"
    assert backend.mounts.mount_key("acct", {"accountKeySecretReference": {"secretUrl": "x"}}) == "k1"
    assert backend.mounts.mount_key("other", {"accountKey": SECRET_PLACEHOLDER}) is None
    assert backend.mounts.mount_key("acct", {}) is None


def test_a_state_file_of_the_dict_backend_loads_and_answers_the_same(tmp_path: Path) -> None:
    """`data/state-dict-backend.json`: a `state.json` written by the backend before the per-resource
    models (all resources as dicts), with what that backend answered for it. The models are views over
    the same records, so the file loads unchanged and every body reads back the same."""
    import json

    saved = json.loads((Path(__file__).parent / "data" / "state-dict-backend.json").read_text())
    data_dir = tmp_path / "arm"
    data_dir.mkdir()
    (data_dir / "state.json").write_text(json.dumps(saved["state_json"]))
    backend = Backend(Config(data_dir=data_dir, files_root=tmp_path / "shares"))
    sub, rg, ws = "00000000-0000-0000-0000-000000000000", "rg", "ws"
    answers = saved["answers"]
    assert backend.get_group(sub, rg) == answers["group"]
    assert backend.get_workspace(sub, rg, ws) == answers["workspace"]
    assert backend.get_experiment(sub, rg, ws, "exp") == answers["experiment"]
    assert backend.get_file_server(sub, rg, ws, "fs") == answers["file_server"]
    assert backend.list_clusters(sub, rg, ws) == answers["clusters"]
    assert backend.list_jobs(sub, rg, ws, "exp") == answers["jobs"]
    assert [j["properties"]["executionState"] for j in answers["jobs"]] == ["failed", "queued"]
    assert backend.secret == "0" * 64  # the link-signing secret is kept
