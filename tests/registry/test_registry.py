"""The run registry against Azurite's Table service: CAS races, the transition table, paging, limits."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from shared import registry as reg
from shared.registry import (
    ALLOWED_TRANSITIONS,
    STATES,
    OutputFile,
    RegistryError,
    RunError,
    RunNotFound,
    RunRecord,
    RunRegistry,
    StagedFile,
    TransitionRejected,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def registry(local_stack) -> RunRegistry:
    local_stack.ensure("azurite")
    return RunRegistry(local_stack.connection_string, f"runs{uuid.uuid4().hex[:12]}")


def test_create_get_roundtrip(registry: RunRegistry) -> None:
    spec = {"toolkit": "cntk", "script": "ConvNet_MNIST.py", "environment": {"A": "1"}}
    rec = registry.create("mnist", spec=spec, callback_url="https://example.com/cb", idempotency_key="k1")
    assert rec.state == "staging" and rec.etag and "staging" in rec.times
    registry.add_staged_files(rec.run_id, [StagedFile("a/b.txt", 12, "bWQ1", "0x1"), StagedFile("c", 1)])
    registry.set_output_files(rec.run_id, [OutputFile("stdouterr", "stdout.txt", 5, "http://x/y")])
    got = registry.get(rec.run_id)
    assert got.spec == spec and got.dataset == "mnist" and got.callback_url == "https://example.com/cb"
    assert [f.name for f in got.staged_files] == ["a/b.txt", "c"]
    assert got.staged("a/b.txt").md5 == "bWQ1"
    assert got.output_files[0].download_url == "http://x/y"
    assert got.to_dict()["id"] == rec.run_id
    # Same idempotency key: the same run, nothing new.
    again = registry.create("mnist", spec={"other": 1}, idempotency_key="k1")
    assert again.run_id == rec.run_id and again.spec == spec
    assert registry.find_by_idempotency_key("k1").run_id == rec.run_id
    with pytest.raises(RunNotFound):
        registry.get("no-such-run")
    with pytest.raises(RunNotFound):
        registry.get("../etc'")


def test_transition_table_is_enforced(registry: RunRegistry) -> None:
    for source in STATES:
        for target in STATES:
            rec = registry.create("ds", state=source)
            if target in ALLOWED_TRANSITIONS[source]:
                moved = registry.transition(rec.run_id, target, source)
                assert moved.state == target and target in moved.times
            else:
                with pytest.raises(TransitionRejected):
                    registry.transition(rec.run_id, target, source)
                assert registry.get(rec.run_id, with_files=False).state == source
    # Terminal states are final; cancelled from every non-terminal state.
    assert all(not ALLOWED_TRANSITIONS[s] for s in reg.TERMINAL_STATES)
    assert all("cancelled" in ALLOWED_TRANSITIONS[s] for s in reg.ACTIVE_STATES)


def test_transition_replay_changes_nothing_twice(registry: RunRegistry) -> None:
    rec = registry.create("ds")
    first = registry.transition(rec.run_id, "provisioning", "staging", job_name="j1")
    with pytest.raises(TransitionRejected) as info:
        registry.transition(rec.run_id, "provisioning", "staging", job_name="j2")
    assert info.value.current.state == "provisioning"
    after = registry.get(rec.run_id)
    assert after.job_name == "j1" and after.times == first.times


def test_racing_transitions_exactly_one_winner(registry: RunRegistry) -> None:
    rec = registry.create("ds")
    winners: list[str] = []
    losers: list[str] = []
    barrier = threading.Barrier(8)

    def racer(i: int) -> None:
        barrier.wait()
        try:
            target = "provisioning" if i % 2 else "cancelled"
            registry.transition(rec.run_id, target, "staging", job_name=f"j{i}")
            winners.append(f"j{i}")
        except TransitionRejected:
            losers.append(f"j{i}")

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == 7
    assert registry.get(rec.run_id).job_name == winners[0]


def test_concurrent_updates_lose_nothing(registry: RunRegistry) -> None:
    rec = registry.create("ds")

    def add(i: int) -> None:
        registry.update(rec.run_id, lambda r: r.errors.append({"code": f"E{i}", "message": "m"}))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(e["code"] for e in registry.get(rec.run_id).errors) == [f"E{i}" for i in range(8)]
    with pytest.raises(RegistryError, match="transition"):
        registry.update(rec.run_id, state="running")
    with pytest.raises(TransitionRejected):
        registry.update(rec.run_id, expected_state="running", exit_code=1)


def test_writes_from_a_known_record_keep_compare_and_swap(registry: RunRegistry) -> None:
    """``current=``: a write from the caller's last copy skips the read, and a stale copy loses to
    the If-Match and is decided on a fresh read, never on the copy."""
    rec = registry.create("ds")
    stale = registry.get(rec.run_id)
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def racer(i: int) -> None:
        barrier.wait()
        try:
            registry.transition(rec.run_id, "provisioning", "staging", current=stale, job_name=f"j{i}")
            winners.append(f"j{i}")
        except TransitionRejected:
            pass

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and registry.get(rec.run_id).job_name == winners[0]
    # The copy says staging, the run is provisioning: rejected on the fresh read.
    with pytest.raises(TransitionRejected) as info:
        registry.transition(rec.run_id, "queued", "staging", current=stale)
    assert info.value.current.state == "provisioning"
    # Updates from one stale copy lose nothing; a fresh copy writes once.
    fresh = registry.update(rec.run_id, exit_code=1, current=stale)
    assert fresh.exit_code == 1 and fresh.job_name == winners[0]

    def add(i: int) -> None:
        registry.update(rec.run_id, lambda r: r.errors.append({"code": f"E{i}"}), current=fresh)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = registry.get(rec.run_id)
    assert sorted(e["code"] for e in final.errors) == [f"E{i}" for i in range(6)] and final.exit_code == 1
    with pytest.raises(TransitionRejected):
        registry.update(rec.run_id, expected_state="staging", current=stale, exit_code=2)
    assert registry.get(rec.run_id).exit_code == 1


def test_claim_staging_run_from_a_stale_pointer(registry: RunRegistry) -> None:
    first, created = registry.claim_staging_run("ds")
    assert created
    pointer = (*registry.current_run_id("ds"), registry.get(first.run_id))
    registry.transition(first.run_id, "provisioning", "staging")
    # The caller saw the run still staging: the claim returns it (as a claim a moment earlier would).
    assert registry.claim_staging_run("ds", seen=pointer)[0].run_id == first.run_id
    second, created = registry.claim_staging_run("ds")
    assert created and second.run_id != first.run_id
    # A pointer ETag from before the swap: the conditional swap loses and the claim reads again.
    stale = (pointer[0], pointer[1], None)
    third, created = registry.claim_staging_run("ds", seen=stale)
    assert not created and third.run_id == second.run_id
    assert sorted(r.run_id for r in registry.iter_runs(dataset="ds")) == sorted([first.run_id, second.run_id])


def test_claim_staging_run_one_run_for_concurrent_uploads(registry: RunRegistry) -> None:
    results = []
    barrier = threading.Barrier(10)

    def claim() -> None:
        barrier.wait()
        results.append(registry.claim_staging_run("mnist"))

    threads = [threading.Thread(target=claim) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.run_id for r, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    run_id = results[0][0].run_id
    assert [r.run_id for r in registry.iter_runs(dataset="mnist")] == [run_id]
    # Once the run moves past staging, the next upload makes a new run.
    registry.transition(run_id, "provisioning", "staging")
    second, created = registry.claim_staging_run("mnist")
    assert created and second.run_id != run_id
    assert registry.claim_staging_run("mnist") == (registry.get(second.run_id), False)


def test_paging_and_filters(registry: RunRegistry) -> None:
    ids = [registry.create("a" if i % 2 else "b").run_id for i in range(7)]
    registry.transition(ids[0], "provisioning", "staging")
    seen, token = [], None
    while True:
        page, token = registry.list_runs(page_size=3, continuation=token)
        assert len(page) <= 3
        seen += [r.run_id for r in page]
        if not token:
            break
    assert sorted(seen) == sorted(ids)
    assert [r.run_id for r in registry.iter_runs(state="provisioning")] == [ids[0]]
    assert sorted(r.run_id for r in registry.iter_runs(dataset="a")) == sorted(ids[1::2])
    both = registry.iter_runs(state=["staging", "provisioning"], dataset="b", page_size=1)
    assert sorted(r.run_id for r in both) == sorted(ids[0::2])
    with pytest.raises(RegistryError, match="unknown state"):
        registry.list_runs(state="bogus")
    with pytest.raises(RegistryError, match="continuation token"):
        registry.list_runs(continuation="!!notatoken")


def test_entity_limits(registry: RunRegistry) -> None:
    # A 200 KB spec is split across properties; a huge one is refused with a clear error.
    big = {"environment": {f"VAR{i}": "x" * 100 for i in range(2000)}}
    rec = registry.create("ds", spec=big)
    assert registry.get(rec.run_id).spec == big
    with pytest.raises(RegistryError, match="at most"):
        registry.create("ds", spec={"blob": "x" * (reg.MAX_JSON_CHARS + 1)})
    # Thousands of staged files are separate entities; stdout tail and errors are bounded.
    files = [StagedFile(f"dir/file-{i:05d}.bin", i, None, f"0x{i}") for i in range(1500)]
    registry.add_staged_files(rec.run_id, files)
    registry.update(
        rec.run_id,
        stdout_tail="y" * 100_000,
        errors=[{"code": "E", "message": "z" * 100_000} for _ in range(200)],
    )
    got = registry.get(rec.run_id)
    assert len(got.staged_files) == 1500
    assert len(got.stdout_tail) == reg.MAX_STDOUT_TAIL_CHARS
    assert len(got.errors) == reg.MAX_ERRORS
    assert len(got.errors[0]["message"]) <= reg.MAX_ERROR_MESSAGE_CHARS + 3
    # Names with characters Table keys forbid are fine: keys are hashes.
    registry.add_staged_files(rec.run_id, [StagedFile("we#ird/na?me\\x.txt", 3)])
    assert registry.get(rec.run_id).staged("we#ird/na?me\\x.txt").size == 3


def test_a_dead_requests_idempotency_key_is_taken_over_by_exactly_one_request(registry: RunRegistry) -> None:
    """A key whose creator died before inserting its run: the requests that retry it all wait, then
    take it over by compare-and-swap. One wins; every request gets that one run."""
    registry.idempotency_wait_seconds = 0.5
    registry.create("mnist")  # the table exists
    registry.table.create_entity(
        {"PartitionKey": reg.IDEMPOTENCY_PARTITION, "RowKey": reg._key_hash("dead"), "run_id": "never-made"}
    )
    barrier = threading.Barrier(4)
    results: list[str] = []

    def start() -> None:
        barrier.wait()
        results.append(registry.create("mnist", idempotency_key="dead").run_id)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 4 and len(set(results)) == 1, results
    assert registry.find_by_idempotency_key("dead").run_id == results[0]
    assert [r.run_id for r in registry.iter_runs(dataset="mnist") if r.idempotency_key] == results[:1]


def test_a_renewed_copy_claim_is_kept_and_a_dead_holders_is_taken_over(registry: RunRegistry) -> None:
    """A holder that renews its copy claim keeps it however long it copies; once it stops (killed
    mid-copy), a waiting delivery takes the copy over as soon as the claim is stale, and the old
    holder's renewal then says the claim is not its own any more."""
    run_id = registry.create("mnist").run_id
    token = registry.claim_file_copy(run_id, "big.bin", "0x1")
    assert token and registry.claim_file_copy(run_id, "big.bin", "0x1", stale_seconds=0.6) is None
    with registry.renewing_file_copies(run_id, [("big.bin", "0x1", token)], every=0.1):
        deadline = time.monotonic() + 1.5  # well past the waiter's idea of stale
        while time.monotonic() < deadline:
            assert registry.claim_file_copy(run_id, "big.bin", "0x1", stale_seconds=0.6) is None
            time.sleep(0.1)
    time.sleep(0.7)  # no renewal any more: the holder is taken for dead
    taken = registry.claim_file_copy(run_id, "big.bin", "0x1", stale_seconds=0.6)
    assert taken and taken != token
    assert registry.renew_file_copy(run_id, "big.bin", "0x1", token) is False
    assert registry.renew_file_copy(run_id, "big.bin", "0x1", taken) is True
    assert registry.claim_file_copy(run_id, "big.bin", "0x2") not in (None, taken)  # another version


def test_a_copy_claim_fails_a_submission_that_read_the_run_before_it(registry: RunRegistry) -> None:
    """A submitter reads the run, finds no copy in flight, and meanwhile a delivery claims a copy
    into the run's snapshot: the claim writes the run in the same transaction, so the submitter's
    compare-and-swap (guarded on the ETag it read) fails; read again, the claim is in flight until
    its file is recorded. Once the run left staging a claim is refused: nothing more is copied in."""
    rec = registry.get(registry.create("mnist").run_id)
    assert rec.state == "staging"

    def unchanged(now: RunRecord) -> None:
        if now.etag != rec.etag:
            raise TransitionRejected("written since read", now)

    assert registry.claim_file_copy(rec.run_id, "extra.bin", "0x1")  # after the submitter's read
    with pytest.raises(TransitionRejected):
        registry.transition(rec.run_id, "provisioning", "staging", current=rec, guard=unchanged)
    assert registry.get(rec.run_id).state == "staging"
    assert registry.copies_in_flight(rec.run_id) == ["extra.bin"]  # read after the run: the claim counts
    assert registry.copies_in_flight(rec.run_id, stale_seconds=0) == []  # a dead holder's claim
    registry.add_staged_files(rec.run_id, [StagedFile("extra.bin", 1, etag="0x2")])  # another version
    assert registry.copies_in_flight(rec.run_id) == ["extra.bin"]
    registry.add_staged_files(rec.run_id, [StagedFile("extra.bin", 1, etag="0x1")])
    assert registry.copies_in_flight(rec.run_id) == []
    # A finished copy stays out of flight when a newer version of its file replaces its record.
    token = registry.claim_file_copy(rec.run_id, "data.bin", "0x4")
    assert token and registry.copies_in_flight(rec.run_id) == ["data.bin"]
    registry.add_staged_files(rec.run_id, [StagedFile("data.bin", 1, etag="0x4")])
    registry.finish_file_copy(rec.run_id, "data.bin", "0x4", token)
    registry.add_staged_files(rec.run_id, [StagedFile("data.bin", 1, etag="0x5")])
    assert registry.copies_in_flight(rec.run_id) == []
    again = registry.get(rec.run_id)
    moved = registry.transition(rec.run_id, "provisioning", "staging", current=again)
    with pytest.raises(TransitionRejected):
        registry.claim_file_copy(rec.run_id, "late.bin", "0x3")
    assert registry.copies_in_flight(rec.run_id) == []
    assert registry.get(rec.run_id).etag == moved.etag  # the refused claim wrote nothing


def test_a_pointer_whose_run_is_being_created_is_waited_for(registry: RunRegistry) -> None:
    """The pointer's writer swaps it, then creates the run: a trigger that reads the pointer in
    between waits for that run (an HTTP start's, of another dataset) instead of creating a blob run
    under its id."""
    registry.create("mnist")  # the table exists
    run_id = reg.new_run_id()
    registry.table.create_entity(
        {"PartitionKey": reg.DATASET_PARTITION, "RowKey": reg._key_hash("uploads"), "run_id": run_id}
    )
    writer = threading.Timer(
        0.3, lambda: registry.create("mnist", run_id=run_id, source="api", stage_from_prefix="uploads")
    )
    writer.start()
    rec, created = registry.claim_staging_run("uploads", source="blob")
    writer.join()
    assert (rec.run_id, rec.source, rec.dataset, created) == (run_id, "api", "mnist", False)


def test_a_claim_that_meets_its_idempotency_keys_run_points_the_pointer_back(registry: RunRegistry) -> None:
    """A claim whose run creation returns the idempotency key's run (made by an earlier request)
    does not leave the pointer naming a run that will never exist."""
    earlier = registry.create("mnist", idempotency_key="k-same", source="api")
    registry.table.create_entity(
        {"PartitionKey": reg.DATASET_PARTITION, "RowKey": reg._key_hash("uploads"), "run_id": earlier.run_id}
    )
    registry.transition(earlier.run_id, "cancelled")  # not reusable: the claim swaps the pointer
    rec, created = registry.claim_staging_run(
        "uploads", reuse=lambda r: False, run_dataset="mnist", idempotency_key="k-same", source="api"
    )
    assert (rec.run_id, created) == (earlier.run_id, False)
    assert registry.current_run_id("uploads")[0] == earlier.run_id


def test_a_twelve_thousand_file_list_is_stored_one_entity_per_file(registry: RunRegistry) -> None:
    """A manifest with no `files` list over ~12,000 blobs used to overflow the run's JSON
    field (256,000 characters). The list is entities now: stored, read back in order, replaced."""
    names = [f"images/class-{i % 10}/sample-{i:06d}.png" for i in range(12_000)]
    assert len(",".join(names)) > reg.MAX_JSON_CHARS
    rec = registry.create("many", source="blob")
    registry.update(rec.run_id, expected_files=names)
    got = registry.get(rec.run_id)
    assert got.expected_files == names
    assert "want_version" not in got.to_dict() and got.to_dict()["expected_files"] == names
    # A state change (a compare-and-swap reading the run row only) keeps the list.
    registry.transition(rec.run_id, "failed", "staging")
    assert registry.get(rec.run_id).expected_files == names
    # Replaced by a shorter list: only the new version is read.
    registry.update(rec.run_id, expected_files=names[:3])
    assert registry.get(rec.run_id).expected_files == names[:3]


def test_a_file_list_over_the_documented_limit_is_a_named_error(registry: RunRegistry) -> None:
    too_many = [f"f{i}" for i in range(reg.MAX_FILE_LIST_FILES + 1)]
    with pytest.raises(reg.FileListTooLarge, match=f"at most {reg.MAX_FILE_LIST_FILES} files") as caught:
        reg.check_file_list(too_many)
    assert caught.value.code == "FileListTooLarge"
    long_names = ["x" * 2000 + str(i) for i in range(reg.MAX_FILE_LIST_BYTES // 2000 + 1)]
    with pytest.raises(reg.FileListTooLarge, match="bytes of names"):
        reg.check_file_list(long_names)
    rec = registry.create("capped", source="blob")
    with pytest.raises(reg.FileListTooLarge):
        registry.update(rec.run_id, expected_files=too_many)
    assert registry.get(rec.run_id).expected_files is None  # nothing recorded


def test_a_transition_owns_its_side_effects(registry: RunRegistry) -> None:
    """Entering a terminal state marks the callback of a run that has one as owed (no caller sets
    it), the error is appended in the same write in its stored shape, and the state's time is the
    one given; a run without a callback owes none. ``fail`` is transition to failed."""
    with_cb = registry.create("ds", state="running", callback_url="https://example.com/cb")
    without = registry.create("ds", state="running")
    assert not with_cb.callback_pending
    error = RunError("JobFailed", "the job exited with code 3", "2026-01-01T00:00:00Z", {"exit": 3})
    failed = registry.fail(with_cb.run_id, error)
    assert failed.state == "failed" and failed.callback_pending
    assert registry.get(with_cb.run_id).errors == [
        {
            "code": "JobFailed",
            "message": "the job exited with code 3",
            "time": "2026-01-01T00:00:00Z",
            "exit": 3,
        }
    ]
    done = registry.transition(without.run_id, "succeeded", at="2026-01-02T00:00:00Z")
    assert not done.callback_pending and done.times["succeeded"] == "2026-01-02T00:00:00Z"
    moving = registry.create("ds", state="queued", callback_url="https://example.com/cb")
    assert not registry.transition(moving.run_id, "running").callback_pending  # not terminal
    with pytest.raises(RegistryError):  # no special keys among the fields any more
        registry.update(moving.run_id, add_error={"code": "X", "message": "m"})
