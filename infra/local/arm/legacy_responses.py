"""Handlers of the resource-group-level Batch AI operations of api-versions 2017-09-01-preview and
2018-03-01 (see `legacy.py`): a mixin of `ArmResponses`, which supplies `backend`, `legacy`, `_page`,
`_accepted` and `_deleted`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Response

from infra.local.arm.errors import ArmError
from infra.local.arm.legacy import EXPERIMENT, WORKSPACE, LegacyBatchAI

if TYPE_CHECKING:
    from infra.local.arm.batchai.backend import Backend
    from infra.local.arm.responses import ArmRequest


def _json(status: int, body: Any = None) -> Response:
    from infra.local.arm.responses import json_response

    return json_response(status, body)


class LegacyResponses:
    backend: Backend
    legacy: LegacyBatchAI

    if TYPE_CHECKING:

        def _page(self, req: ArmRequest, items: list[dict[str, Any]]) -> Response: ...
        def _accepted(self, req: ArmRequest, sub: str, op_id: str) -> Response: ...
        def _deleted(self, req: ArmRequest, sub: str, op_id: str | None) -> Response: ...

    @staticmethod
    def _version(req: ArmRequest) -> str:
        return req.args.get("api-version", "")

    def _shape(self, req: ArmRequest, kind: str, sub: str, rg: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.legacy.shape(kind, body, self._version(req), self.legacy.location_of(sub, rg))

    def _legacy_call(self, kind: str, rg: str, name: str, call: Any) -> Any:
        """Run a backend call on the group's `default` workspace; its absence is the resource's."""
        try:
            return call()
        except ArmError as error:
            if error.status == 404 and error.code != "ResourceGroupNotFound":
                raise self.legacy.not_found(kind, rg, name) from None
            raise

    def _legacy_list(self, req: ArmRequest, sub: str, rg: str | None, kind: str) -> Response:
        backend = self.backend
        listers = {
            "clusters": lambda g: backend.list_clusters(sub, g, WORKSPACE),
            "jobs": lambda g: backend.list_jobs(sub, g, WORKSPACE, EXPERIMENT),
            "fileServers": lambda g: backend.list_file_servers(sub, g, WORKSPACE),
        }
        items = []
        for group in [rg] if rg else self.legacy.groups(sub):
            try:
                bodies = listers[kind](group)
            except ArmError as error:
                if error.code == "ResourceGroupNotFound" and rg:
                    raise
                continue  # no `default` workspace (or experiment) in this group: nothing of this kind
            items += [self._shape(req, kind, sub, group, body) for body in bodies]
        return self._page(req, items)

    def _legacy_created(
        self, req: ArmRequest, kind: str, sub: str, rg: str, result: tuple[str | None, Any]
    ) -> Response:
        op_id, body = result
        if op_id is None:
            return _json(200, self._shape(req, kind, sub, rg, body))
        return self._accepted(req, sub, op_id)

    # --- clusters --------------------------------------------------------------------------------
    def legacy_list_clusters(self, req: ArmRequest, sub: str, rg: str | None = None) -> Response:
        return self._legacy_list(req, sub, rg, "clusters")

    def legacy_create_cluster(self, req: ArmRequest, sub: str, rg: str, cluster: str) -> Response:
        from infra.local.arm.responses import _check_scale

        body = self.legacy.check("ClusterCreateParameters", req.json(), self._version(req))
        props = body.get("properties") or {}
        _check_scale(props.get("scaleSettings"), "properties.scaleSettings")
        account = props.get("userAccountSettings") or {}
        if not account.get("adminUserPassword") and not account.get("adminUserSshPublicKey"):
            raise ArmError(
                "InvalidRequestContent",
                "properties.userAccountSettings: adminUserPassword or adminUserSshPublicKey must be given.",
                target="properties.userAccountSettings",
            )
        self.legacy.ensure_container(sub, rg, body["location"], experiment=False)
        result = self.backend.create_cluster(sub, rg, WORKSPACE, cluster, {"properties": props})
        return self._legacy_created(req, "clusters", sub, rg, result)

    def legacy_update_cluster(self, req: ArmRequest, sub: str, rg: str, cluster: str) -> Response:
        from infra.local.arm.responses import _check_scale

        body = self.legacy.check("ClusterUpdateParameters", req.json() or {}, self._version(req))
        scale = (body.get("properties") or {}).get("scaleSettings")
        if scale is not None:
            _check_scale(scale, "properties.scaleSettings")
        updated = self._legacy_call(
            "clusters", rg, cluster, lambda: self.backend.update_cluster(sub, rg, WORKSPACE, cluster, body)
        )
        return _json(200, self._shape(req, "clusters", sub, rg, updated))

    def legacy_get_cluster(self, req: ArmRequest, sub: str, rg: str, cluster: str) -> Response:
        body = self._legacy_call(
            "clusters", rg, cluster, lambda: self.backend.get_cluster(sub, rg, WORKSPACE, cluster)
        )
        return _json(200, self._shape(req, "clusters", sub, rg, body))

    def legacy_delete_cluster(self, req: ArmRequest, sub: str, rg: str, cluster: str) -> Response:
        try:
            op_id = self.backend.delete_cluster(sub, rg, WORKSPACE, cluster)
        except ArmError as error:
            if error.status == 404 and error.code != "ResourceGroupNotFound":
                return _json(204)
            raise
        return self._deleted(req, sub, op_id)

    def legacy_cluster_remote_logins(self, req: ArmRequest, sub: str, rg: str, cluster: str) -> Response:
        logins = self._legacy_call(
            "clusters", rg, cluster, lambda: self.backend.cluster_remote_logins(sub, rg, WORKSPACE, cluster)
        )
        return self._page(req, logins)

    # --- jobs ------------------------------------------------------------------------------------
    def legacy_list_jobs(self, req: ArmRequest, sub: str, rg: str | None = None) -> Response:
        return self._legacy_list(req, sub, rg, "jobs")

    def legacy_create_job(self, req: ArmRequest, sub: str, rg: str, job: str) -> Response:
        from infra.local.arm.responses import _check_job

        body = self.legacy.check("JobCreateParameters", req.json(), self._version(req))
        current = self.legacy.to_current_job(body)
        _check_job(current["properties"])
        self.legacy.ensure_container(sub, rg, body["location"], experiment=True)
        result = self.backend.create_job(sub, rg, WORKSPACE, EXPERIMENT, job, current)
        return self._legacy_created(req, "jobs", sub, rg, result)

    def legacy_get_job(self, req: ArmRequest, sub: str, rg: str, job: str) -> Response:
        body = self._legacy_call(
            "jobs", rg, job, lambda: self.backend.get_job(sub, rg, WORKSPACE, EXPERIMENT, job)
        )
        return _json(200, self._shape(req, "jobs", sub, rg, body))

    def legacy_delete_job(self, req: ArmRequest, sub: str, rg: str, job: str) -> Response:
        try:
            op_id = self.backend.delete_job(sub, rg, WORKSPACE, EXPERIMENT, job)
        except ArmError as error:
            if error.status == 404 and error.code != "ResourceGroupNotFound":
                return _json(204)
            raise
        return self._deleted(req, sub, op_id)

    def legacy_terminate_job(self, req: ArmRequest, sub: str, rg: str, job: str) -> Response:
        op_id = self._legacy_call(
            "jobs", rg, job, lambda: self.backend.terminate_job(sub, rg, WORKSPACE, EXPERIMENT, job)
        )
        return self._accepted(req, sub, op_id)

    def legacy_list_output_files(self, req: ArmRequest, sub: str, rg: str, job: str) -> Response:
        return self._legacy_call(
            "jobs",
            rg,
            job,
            lambda: self.list_output_files(req, sub, rg, WORKSPACE, EXPERIMENT, job),  # type: ignore[attr-defined]
        )

    def legacy_job_remote_logins(self, req: ArmRequest, sub: str, rg: str, job: str) -> Response:
        logins = self._legacy_call(
            "jobs", rg, job, lambda: self.backend.job_remote_logins(sub, rg, WORKSPACE, EXPERIMENT, job)
        )
        return self._page(req, logins)

    # --- file servers ----------------------------------------------------------------------------
    def legacy_list_file_servers(self, req: ArmRequest, sub: str, rg: str | None = None) -> Response:
        return self._legacy_list(req, sub, rg, "fileServers")

    def legacy_create_file_server(self, req: ArmRequest, sub: str, rg: str, fs: str) -> Response:
        body = self.legacy.check("FileServerCreateParameters", req.json(), self._version(req))
        props = dict(body.get("properties") or {})
        ssh = (props.get("sshConfiguration") or {}).get("userAccountSettings") or {}
        if not ssh.get("adminUserPassword") and not ssh.get("adminUserSshPublicKey"):
            raise ArmError(
                "InvalidRequestContent",
                "properties.sshConfiguration.userAccountSettings: adminUserPassword or "
                "adminUserSshPublicKey must be given.",
                target="properties.sshConfiguration.userAccountSettings",
            )
        props.setdefault("dataDisks", {}).setdefault("cachingType", "none")
        self.legacy.ensure_container(sub, rg, body["location"], experiment=False)
        result = self.backend.create_file_server(sub, rg, WORKSPACE, fs, {"properties": props})
        return self._legacy_created(req, "fileServers", sub, rg, result)

    def legacy_get_file_server(self, req: ArmRequest, sub: str, rg: str, fs: str) -> Response:
        body = self._legacy_call(
            "fileServers", rg, fs, lambda: self.backend.get_file_server(sub, rg, WORKSPACE, fs)
        )
        return _json(200, self._shape(req, "fileServers", sub, rg, body))

    def legacy_delete_file_server(self, req: ArmRequest, sub: str, rg: str, fs: str) -> Response:
        try:
            op_id = self.backend.delete_file_server(sub, rg, WORKSPACE, fs)
        except ArmError as error:
            if error.status == 404 and error.code != "ResourceGroupNotFound":
                return _json(204)
            raise
        return self._deleted(req, sub, op_id)
