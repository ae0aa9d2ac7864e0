"""HTTP starts: ``start_run`` (``POST /api/runs``, the CLI's start) checks what a request needs
before anything is created, reserves its idempotency key, claims the folder it stages
(``shared.folder_claims``) and stages the run, here or through the staging queue
(``shared.staging_queue``, whose worker calls ``stage_run``), then submits it
(``shared.submission``). A spec with inline secret values is submitted by its own request, which
alone holds them (``SECRET_SUBMIT_DELAYS``)."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from shared import callbacks, services
from shared.folder_claims import claim_folder
from shared.registry import (
    ACTIVE_STATES,
    STAGING,
    RunError,
    RunNotFound,
    RunRecord,
    StagedFile,
    TransitionRejected,
    new_run_id,
    utcnow,
)
from shared.runspec import RunSpec, RunSpecError, parse_run_spec
from shared.services import Services
from shared.staging import (
    MANIFEST_NAME,
    DatasetNotStaged,
    MissingFiles,
    NothingToStage,
    StagingError,
    check_dataset_name,
    check_relative_path,
    check_run_file_list,
    check_stage_prefix,
    ensure_directory,
    ensure_share,
    etag_of,
    stage_blob,
)
from shared.submission import (
    CARRY_OVER_RUNS,
    carry_files,
    check_ready,
    create_job,
    data_dir,
    earlier_staged,
    fail_run,
    inline_secrets,
    needs_preparation,
    prepare_infrastructure,
    staging_deadline,
)

log = logging.getLogger(__name__)


def start_run(
    dataset: str,
    spec: RunSpec | dict[str, Any],
    *,
    stage_from_prefix: str | None = None,
    idempotency_key: str | None = None,
    svc: Services | None = None,
    background: bool = False,
) -> RunRecord:
    """Start a run on ``dataset`` with ``spec``: stage every blob under ``stage_from_prefix`` of the
    training container into the run's snapshot first, or carry in the dataset's latest snapshot on
    the share (every required file must be there). Returns the run (submitted unless it failed).
    The same ``idempotency_key`` returns the same run; a request repeating the key of a run another
    request is staging gets that run as it is, without staging it again.

    What the request needs is checked before anything is created: a dataset not on the share
    (DatasetNotStaged), an empty prefix (NothingToStage) or a required file that is in neither
    (MissingFiles) raises, and no run record, cluster or directory is made for it.

    ``background`` (the HTTP API): a start from a prefix queues its staging for the stage function
    and returns the run in staging at once (see shared.staging_queue)."""
    svc = svc or services.get_services()
    check_dataset_name(dataset)
    if not isinstance(spec, RunSpec):
        spec = parse_run_spec(spec, svc.spec_context)
    svc.cloud.check_spec(spec)  # refused before anything is created, naming the field and backend
    _check_sweep_secrets(spec)
    prefix = None if stage_from_prefix is None else check_stage_prefix(stage_from_prefix)
    replayed = svc.registry.find_by_idempotency_key(idempotency_key) if idempotency_key else None
    if replayed is not None and replayed.state != STAGING:
        return replayed  # an idempotent replay of a run that already moved on

    folder_manifest: str | None = None
    if prefix is not None:
        to_stage, folder_manifest = _prefix_blobs(svc, prefix)
        available = {rel for _, rel, _ in to_stage}
    else:
        available = {f.name for _, f in _already_staged(svc, dataset, spec)}
    check_run_file_list(sorted(available | set(spec.required_files())), "the run's list of files")
    missing = [name for name in spec.required_files() if name not in available]
    if missing:
        where = f"prefix {prefix!r}" if prefix is not None else f"dataset {dataset!r} on the file share"
        raise MissingFiles(f"required file(s) not in {where}: {', '.join(missing[:20])}")

    fields: dict[str, Any] = {
        "spec": spec.to_json_dict(),
        **callbacks.record_fields(svc.settings, spec.callback_url, issued=True),
        "idempotency_key": idempotency_key,
        "source": "api",
        "stage_from_prefix": stage_from_prefix,
        "staging_deadline": staging_deadline(svc),
    }
    if replayed is not None:
        return replayed  # the same key while its run is staging: its own request stages it
    run_id = new_run_id()
    if idempotency_key:
        # The key is reserved for this run before anything else: of requests repeating it at once
        # exactly one goes on (and stages); the others get its run.
        holder = svc.registry.reserve_idempotency_key(idempotency_key, run_id)
        if holder is not None:
            return holder
    if prefix is not None and "/" not in prefix:
        # A top-level folder, whose blobs also fire the trigger as a dataset of that name. The
        # run.json in it now is superseded by this request: its trigger (however late) is a replay
        # of this run, not a new one. A later upload of it has another ETag: a new run.
        fields["manifest_etag"] = folder_manifest
        rec, mine = claim_folder(svc, prefix, dataset, fields, run_id)
    else:
        rec = svc.registry.create(dataset, run_id=run_id, key_reserved=True, **fields)
        mine = rec.run_id == run_id
    if not mine or rec.state != STAGING:
        return rec  # the key's run, made by another request: it stages the run, not this one
    if background and prefix is not None and not inline_secrets(spec):
        # The HTTP API: staging a folder can outlast Azure's 230 s HTTP limit, so the queue-triggered
        # stage function does it (shared.staging_queue) and the request answers with the run in
        # staging. A spec with inline secret values is staged here: only this request holds them.
        _queue_staging(svc, rec)
        return rec
    final = stage_run(rec, svc, spec)
    if inline_secrets(spec) and final.state in ACTIVE_STATES and not final.submitted_at:
        final = _submit_while_secrets_are_held(svc, final, spec)
    return final


def _queue_staging(svc: Services, rec: RunRecord) -> None:
    """Queue the run's staging; a run whose message cannot be queued is failed, saying why."""
    from shared import staging_queue

    try:
        staging_queue.enqueue(svc, rec)
    except Exception as exc:
        fail_run(
            svc,
            rec,
            RunError("StagingNotQueued", f"the staging of this run could not be queued: {exc}"[:1000]),
        )
        raise


# Submission attempts a request makes itself when its spec carries inline secret values: the
# registry keeps them masked, so once the request returns no one can create the job any more.
SECRET_SUBMIT_DELAYS = (0.5, 1.0, 2.0, 4.0)


def _check_sweep_secrets(spec: RunSpec) -> None:
    """A sweep started over HTTP with inline secret values must start every trial while its request
    holds them: the registry never keeps the values, and a trial started later could not be given
    them. So its trials must all fit its first round (max_concurrent_trials); otherwise refused, before
    anything is created, naming the field and the ways out."""
    if spec.sweep is None or not inline_secrets(spec):
        return
    from shared import sweep as sweeps

    count = len(sweeps.generate_trials(spec.sweep))
    if count > spec.sweep.max_concurrent_trials:
        raise RunSpecError(
            [
                {
                    "field": "secret_environment_variables",
                    "message": f"a sweep whose {count} trials start over time cannot be given inline secret "
                    f"values ({', '.join(sorted(inline_secrets(spec)))}): they are not kept after this "
                    "request, so later trials could not have them. Give them as Key Vault references, or "
                    f"set sweep.max_concurrent_trials to {count} so every trial starts now",
                }
            ]
        )


def _submit_while_secrets_are_held(svc: Services, rec: RunRecord, spec: RunSpec) -> RunRecord:
    """Retry the submission of a run whose first try failed transiently (cluster being deleted, ARM
    errors) while this request still holds its inline secrets; when it keeps failing, fail the run
    now, saying why, rather than leave the monitor to fail it later for want of the secrets."""
    for delay in SECRET_SUBMIT_DELAYS:
        time.sleep(delay)
        with contextlib.suppress(TransitionRejected, RunNotFound):
            svc.registry.update(rec.run_id)  # touched: the monitor's grace (SECRETS_HELD_SECONDS) holds
        if rec.state == STAGING:
            check_ready(rec.run_id, svc, spec)
        else:
            create_job(svc, rec, spec)
        rec = svc.registry.get(rec.run_id)
        if (
            rec.state not in ACTIVE_STATES
            or rec.submitted_at
            or (spec.sweep is not None and rec.state != STAGING)
        ):
            return rec
    last = rec.errors[-1]["message"] if rec.errors else "the cluster was not ready"
    message = (
        f"the job could not be created ({last}); its inline secret environment variables "
        f"({', '.join(inline_secrets(spec))}) are not kept by the registry, so it cannot be retried "
        "later: start the run again, or give the secrets as Key Vault references"
    )
    fail_run(svc, rec, RunError("SubmitFailed", message))
    return svc.registry.get(rec.run_id)


def stage_run(rec: RunRecord, svc: Services | None = None, spec: RunSpec | None = None) -> RunRecord:
    """Stage a run started over HTTP into its snapshot and submit it: every blob under its
    ``stage_from_prefix`` (files an earlier run of the dataset staged from the same blob version are
    carried inside the share), or the dataset's latest snapshot. A function of the run alone (``spec``
    only saves parsing it again), so a queue worker can call it. Returns the run as it ends up."""
    svc = svc or services.get_services()
    if spec is None:
        spec = parse_run_spec(rec.spec or {}, svc.spec_context)
    if needs_preparation(svc, rec, spec):
        prepare_infrastructure(svc, rec, spec)
    ensure_share(svc.share)
    ensure_directory(svc.share, data_dir(rec))
    try:
        if rec.stage_from_prefix is not None:
            blobs, _ = _prefix_blobs(svc, check_stage_prefix(rec.stage_from_prefix))
            staged = _stage_prefix(svc, rec, blobs)
            expected = sorted(set(spec.required_files()) | {f.name for f in staged})
        else:
            staged = carry_files(svc, rec, _already_staged(svc, rec.dataset, spec), from_blobs=False)
            expected = spec.required_files() or [f.name for f in staged]
    except StagingError as exc:
        blob = getattr(exc, "blob", None)
        details = {"blob": blob} if blob is not None else {}
        fail_run(svc, rec, RunError(exc.code, str(exc), details=details), STAGING)
        raise
    svc.registry.update(rec.run_id, expected_files=expected)
    missing = [name for name in expected if name not in {f.name for f in staged}]
    if missing:  # a blob deleted between the listing and its copy
        message = f"required file(s) not in the dataset: {', '.join(missing[:20])}"
        fail_run(svc, rec, RunError("MissingFiles", message), STAGING)
        return svc.registry.get(rec.run_id)
    check_ready(rec.run_id, svc, spec)
    return svc.registry.get(rec.run_id)


def _prefix_blobs(svc: Services, prefix: str) -> tuple[list[tuple[str, str, Any]], str | None]:
    """(blob name, path relative to the prefix, its listed properties) of every blob to stage under
    ``prefix`` (manifests excluded), and the ETag of ``<prefix>/run.json`` when there is one;
    NothingToStage when there is no blob, StagingError naming a blob that cannot be staged."""
    manifest = f"{prefix}/{MANIFEST_NAME}"
    manifest_etag: str | None = None
    names = []
    try:
        for b in svc.container.list_blobs(name_starts_with=f"{prefix}/"):
            if b.name == manifest:
                manifest_etag = etag_of(b)
            elif not b.name.endswith(f"/{MANIFEST_NAME}"):
                names.append(b)
    except ResourceNotFoundError:
        names = []  # the training container does not exist (yet)
    if not names:
        raise NothingToStage(f"no blobs under prefix {prefix!r} of container {svc.container.container_name}")
    found = []
    for b in names:
        rel = b.name[len(prefix) + 1 :]
        check_relative_path(rel, what=f"blob {b.name!r}")
        found.append((b.name, rel, b))
    return found, manifest_etag


def _stage_prefix(svc: Services, rec: RunRecord, blobs: list[tuple[str, str, Any]]) -> list[StagedFile]:
    """Copy the prefix's blobs into the run's snapshot: from a snapshot of an earlier run of the
    dataset when it holds the same blob version (inside the share), else from blob storage."""
    earlier: dict[str, tuple[str, StagedFile]] | None = None
    staged = []
    for name, rel, props in blobs:
        if earlier is None:
            earlier = earlier_staged(svc, rec)
        old = earlier.get(rel)
        if old is not None and old[1].etag == etag_of(props) and old[1].size == int(props.size):
            with contextlib.suppress(StagingError):  # gone meanwhile: copied from the blob below
                staged.extend(carry_files(svc, rec, [old], from_blobs=False))
                continue
        try:
            one = stage_blob(
                svc.container,
                name,
                svc.share,
                dest_path=f"{data_dir(rec)}/{rel}",
                copy_timeout=svc.settings.copy_timeout_seconds,
                account_key=svc.account_key,
            )
        except StagingError as exc:
            exc.blob = name  # type: ignore[attr-defined]
            raise
        svc.registry.add_staged_files(rec.run_id, [one])
        staged.append(one)
    return staged


def _already_staged(svc: Services, dataset: str, spec: RunSpec) -> list[tuple[str, StagedFile]]:
    """What a run on a dataset already on the share starts from (the API's 'use what is there'): the
    files of the dataset's latest snapshot still on the share, else of the dataset's own directory
    (filled by hand or by runs from before snapshots), as (path on the share, file); only the
    spec's required files when it lists them. DatasetNotStaged when there is neither."""
    wanted = set(spec.required_files())
    # Any spelling of the name: on the share, `MNIST` and `mnist` are one dataset.
    runs = sorted(svc.registry.iter_runs_of_dataset(dataset), key=lambda r: r.run_id, reverse=True)
    for run in runs[:CARRY_OVER_RUNS]:
        if run.snapshot is None:
            continue
        try:
            svc.share.get_directory_client(run.snapshot).get_directory_properties()
        except ResourceNotFoundError:
            continue  # cleaned up
        files = svc.registry.get(run.run_id).staged_files
        chosen = [(f"{run.snapshot}/{f.name}", f) for f in files if not wanted or f.name in wanted]
        if chosen and {f.name for _, f in chosen} >= wanted:
            return chosen
    return _on_share_directory(svc, dataset, wanted)


def _on_share_directory(svc: Services, dataset: str, wanted: set[str]) -> list[tuple[str, StagedFile]]:
    directory = svc.share.get_directory_client(dataset)
    try:
        directory.get_directory_properties()
    except ResourceNotFoundError:
        raise DatasetNotStaged(
            f"dataset {dataset!r} is not on the file share; give stage_from_prefix"
        ) from None
    found: list[tuple[str, StagedFile]] = []
    if wanted:
        for name in sorted(wanted):
            try:
                props = svc.share.get_file_client(f"{dataset}/{name}").get_file_properties()
            except ResourceNotFoundError:
                continue
            found.append((f"{dataset}/{name}", _staged_from_props(name, props)))
        return found
    stack = [""]
    while stack and len(found) < 10_000:
        sub = stack.pop()
        client = svc.share.get_directory_client(f"{dataset}/{sub}".rstrip("/"))
        for item in client.list_directories_and_files():
            rel = f"{sub}/{item['name']}".lstrip("/")
            if item.get("is_directory"):  # type: ignore[no-untyped-call]  # unannotated in the SDK
                stack.append(rel)
            else:
                size = int(item.get("size") or 0)  # type: ignore[no-untyped-call]
                found.append((f"{dataset}/{rel}", StagedFile(rel, size, staged_at=utcnow())))
    if not found:
        raise DatasetNotStaged(f"dataset {dataset!r} has no files on the share")
    return found


def _staged_from_props(name: str, props: Any) -> StagedFile:
    md5 = props.content_settings.content_md5
    if md5 is not None and not isinstance(md5, str):
        import base64

        md5 = base64.b64encode(bytes(md5)).decode()
    return StagedFile(name, int(props.size), md5 or None, None, utcnow())
