"""The ARM emulator's errors, in one place: what the request path raises and what resources report.

- `ArmError`: an ARM error response. Handlers and models raise it by code; its HTTP status comes from
  `STATUS` (ARM's status for that code) unless a call names another (Azure ML's `UserError` is 400, 404
  or 409 by cause). `responses.error_response` turns it into `{"error": {code, message, target,
  details}}`, so every error on the wire has the shape azure-core's `ARMErrorFormat` parses.
- `resource_error`: an entry of a resource's own `errors` (a job's `executionInfo.errors`, a cluster's
  `errors`, an Azure ML job's `errors`), where the service reports what went wrong after it accepted a
  request. The fixed wordings the emulator reports more than once are named here.
"""

from __future__ import annotations

from typing import Any

# ARM error code -> HTTP status it is answered with.
STATUS: dict[str, int] = {
    # request
    "AuthenticationFailed": 401,
    "InvalidAuthenticationToken": 401,
    "MissingApiVersionParameter": 400,
    "InvalidApiVersionParameter": 400,
    "NoRegisteredProviderFound": 400,
    "InvalidRequestContent": 400,
    "InvalidResourceName": 400,
    "InvalidQueryParameterValue": 400,
    "MissingRequiredQueryParameter": 400,
    "LocationRequired": 400,
    "BadRequest": 400,
    "UserError": 400,  # Azure ML's code for every user mistake; its status says which (404, 409)
    "InvalidResourceType": 404,
    "MethodNotAllowed": 405,
    # resources
    "ResourceGroupNotFound": 404,
    "ResourceNotFound": 404,
    "OperationNotFound": 404,
    "InvalidClusterReference": 400,
    "InvalidOutputDirectoryId": 400,
    "ResourceGroupBeingDeleted": 409,
    "InvalidResourceGroupLocation": 409,
    "ClusterAlreadyExists": 409,
    "FileServerAlreadyExists": 409,
    "JobAlreadyExists": 409,
    "Conflict": 409,
    # service
    "TooManyRequests": 429,
    "InternalServerError": 500,
    "ServiceUnavailable": 503,
}


class ArmError(Exception):
    """An error the emulator answers with an ARM error body."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        target: str | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status or STATUS.get(code, 400)
        self.code = code
        self.message = message
        self.target = target
        self.details = details or []

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target:
            error["target"] = self.target
        if self.details:
            error["details"] = self.details
        return {"error": error}


def invalid_request(
    message: str, target: str | None = None, details: list[dict[str, Any]] | None = None
) -> ArmError:
    """A request body or parameter that breaks the definition or a rule it cannot state (400)."""
    return ArmError("InvalidRequestContent", message, target=target, details=details)


def method_not_allowed(method: str, path: str) -> ArmError:
    return ArmError("MethodNotAllowed", f"The method {method} is not allowed on {path}.")


# --- what resources report ---------------------------------------------------------------------------
def resource_error(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """One entry of a resource's `errors` (Batch AI's BatchAIError, Azure ML's ErrorDetail shape)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return error


def job_terminated() -> dict[str, Any]:
    return resource_error("JobTerminated", "The job was terminated by the user.")


def cluster_deleted() -> dict[str, Any]:
    return resource_error("ClusterDeleted", "The job's cluster was deleted.")


def job_failed(exit_code: int) -> dict[str, Any]:
    return resource_error("JobFailed", f"The job exited with non-zero exit code {exit_code}.")


def restarted_while_running() -> dict[str, Any]:
    return resource_error(
        "EmulatorRestarted",
        "The ARM emulator stopped while this job was running; its processes were stopped and the job "
        "cannot be resumed. Submit it again.",
    )


def restarted_before_start() -> dict[str, Any]:
    return resource_error(
        "EmulatorRestarted",
        "The ARM emulator restarted before this job started; its inline secrets are kept in memory only "
        "(never in the state file). Submit it again.",
    )
