"""Azure Storage errors as the File service sends them: status, `x-ms-error-code` and an XML body.

Handlers raise `StorageError`; `server.py` turns it into the response, so every error on the wire has
the same shape that the SDK's `process_storage_error` maps to typed exceptions.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

# code -> (status, message): the wording is Azure's (including its "specifed" typo).
KNOWN: dict[str, tuple[int, str]] = {
    "AuthenticationFailed": (
        403,
        "Server failed to authenticate the request. Make sure the value of Authorization header is "
        "formed correctly including the signature.",
    ),
    "AuthorizationPermissionMismatch": (
        403,
        "This request is not authorized to perform this operation using this permission.",
    ),
    "AuthorizationResourceTypeMismatch": (
        403,
        "This request is not authorized to perform this operation using this resource type.",
    ),
    "NoAuthenticationInformation": (
        401,
        "Server failed to authenticate the request. Please refer to the information in the "
        "www-authenticate header.",
    ),
    "ShareNotFound": (404, "The specified share does not exist."),
    "ShareAlreadyExists": (409, "The specified share already exists."),
    "ParentNotFound": (404, "The specified parent path does not exist."),
    "ResourceNotFound": (404, "The specified resource does not exist."),
    "ResourceAlreadyExists": (409, "The specified resource already exists."),
    "ResourceTypeMismatch": (409, "The specified resource type does not match the type of the resource."),
    "DirectoryNotEmpty": (409, "The specified directory is not empty."),
    "InvalidRange": (416, "The range specified is invalid for the current size of the resource."),
    "InvalidResourceName": (400, "The specifed resource name contains invalid characters."),
    "InvalidUri": (400, "The requested URI does not represent any resource on the server."),
    "InvalidHeaderValue": (400, "The value for one of the HTTP headers is not in the correct format."),
    "MissingRequiredHeader": (400, "An HTTP header that's mandatory for this request is not specified."),
    "InvalidQueryParameterValue": (
        400,
        "Value for one of the query parameters specified in the request URI is invalid.",
    ),
    "MissingRequiredQueryParameter": (
        400,
        "A query parameter that's mandatory for this request is not specified.",
    ),
    "InvalidMetadata": (400, "The metadata specified is invalid. It has characters that are not permitted."),
    "Md5Mismatch": (
        400,
        "The MD5 value specified in the request did not match with the MD5 value calculated by the server.",
    ),
    "InvalidInput": (400, "One of the request inputs is not valid."),
    "RequestBodyTooLarge": (413, "The request body is too large and exceeds the maximum permissible limit."),
    "OutOfRangeInput": (400, "One of the request inputs is out of range."),
    "UnsupportedHttpVerb": (405, "The resource doesn't support the specified HTTP verb."),
    "NotImplemented": (501, "The requested operation is not implemented in the local Files emulator."),
    "CannotVerifyCopySource": (404, "The specified resource does not exist."),
    "NoPendingCopyOperation": (409, "There is currently no pending copy operation."),
    "CopyIdMismatch": (
        409,
        "The specified copy ID did not match the copy ID for the pending copy operation.",
    ),
    "PendingCopyOperation": (409, "There is currently a pending copy operation."),
    "LeaseAlreadyPresent": (409, "There is already a lease present."),
    "LeaseIdMismatchWithLeaseOperation": (
        409,
        "The lease ID specified did not match the lease ID for the resource with the specified lease "
        "operation.",
    ),
    "LeaseNotPresentWithLeaseOperation": (409, "There is currently no lease on the resource."),
    "LeaseIsBreakingAndCannotBeAcquired": (
        409,
        "There is already a breaking lease on the resource. It cannot be acquired before it is broken.",
    ),
    "LeaseIsBreakingAndCannotBeChanged": (409, "The lease ID matched, but the lease is breaking."),
    "LeaseIsBrokenAndCannotBeRenewed": (409, "The lease ID matched, but the lease has been broken."),
    "LeaseIdMissing": (
        412,
        "There is currently a lease on the resource and no lease ID was specified in the request.",
    ),
    "LeaseIdMismatchWithFileOperation": (
        412,
        "The lease ID specified did not match the lease ID for the file.",
    ),
    "LeaseNotPresentWithFileOperation": (412, "There is currently no lease on the file."),
    "LeaseIdMismatchWithContainerOperation": (
        412,
        "The lease ID specified did not match the lease ID for the share.",
    ),
    "LeaseNotPresentWithContainerOperation": (412, "There is currently no lease on the share."),
    "ShareHasSnapshots": (
        409,
        "The share has snapshots and the operation requires no snapshots (x-ms-delete-snapshots: include).",
    ),
    "ShareSnapshotNotFound": (404, "The specified share snapshot does not exist."),
    "ShareSnapshotOperationNotSupported": (
        400,
        "The operation is not supported on a share snapshot: snapshots are read-only.",
    ),
    "ServerBusy": (503, "The server is busy."),
    "InternalError": (500, "The server encountered an internal error. Please retry the request."),
}


class StorageError(Exception):
    """An Azure Storage error response: `code` is what `x-ms-error-code` and `<Code>` carry."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        status: int | None = None,
        details: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        known_status, known_message = KNOWN.get(code, (400, code))
        self.code = code
        self.status = status or known_status
        self.message = message or known_message
        self.details = details or {}
        self.headers = headers or {}
        super().__init__(f"{self.status} {code}: {self.message}")

    def xml(self, request_id: str, time: str) -> bytes:
        parts = [
            '<?xml version="1.0" encoding="utf-8"?><Error>',
            f"<Code>{escape(self.code)}</Code>",
            f"<Message>{escape(self.message)}\nRequestId:{request_id}\nTime:{time}</Message>",
        ]
        parts += [f"<{name}>{escape(value)}</{name}>" for name, value in self.details.items()]
        parts.append("</Error>")
        return "".join(parts).encode("utf-8")
