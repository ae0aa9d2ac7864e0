"""The tail of a job's log file from its download URL, by an HTTP Range request.

Why: a training job's stdout can be gigabytes, and both the monitor (the tail a run record keeps)
and GET /api/runs/{id}/logs only want its end. A suffix Range (``bytes=-N``) makes only those N
bytes travel; a server that ignores Range (answers 200 with the whole file) is read through,
keeping only the tail in memory, so the answer is the same either way.
"""

from __future__ import annotations

import urllib.error
import urllib.request

__all__ = ["read_tail"]

CHUNK_BYTES = 64 * 1024


def read_tail(url: str, max_bytes: int, *, timeout: float = 30.0, size: int | None = None) -> bytes:
    """The last ``max_bytes`` of the file at ``url`` (b"" for an empty file, which answers a suffix
    Range with 416). With the file's ``size`` known the Range is absolute (``bytes=<start>-``): Azure
    Blob storage does not take suffix ranges. Raises OSError (urllib's URLError/HTTPError, timeouts)
    or ValueError (a malformed URL); callers decide what a failed read means to them."""
    if max_bytes <= 0 or size == 0:
        return b""
    wanted = f"bytes=-{max_bytes}" if size is None else f"bytes={max(0, size - max_bytes)}-"
    request = urllib.request.Request(url, headers={"Range": wanted})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # Range Not Satisfiable: the file is empty
            exc.close()
            return b""
        raise
    tail = bytearray()
    with response:
        while chunk := response.read(CHUNK_BYTES):
            tail += chunk
            if len(tail) > 2 * max_bytes:  # trim now and then, not on every chunk
                del tail[:-max_bytes]
    return bytes(tail[-max_bytes:])
