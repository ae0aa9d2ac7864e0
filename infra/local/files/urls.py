"""Routing table: which URL shapes exist and which operation each (level, verb, restype, comp) is.

Path-style URLs as Azurite uses them: `/<account>`, `/<account>/<share>`, `/<account>/<share>/<path>`,
plus the emulator's own admin endpoints under `/_emulator/`.
"""

from __future__ import annotations

import re
from typing import NamedTuple

url_paths: dict[str, str] = {
    r"^/_emulator/(?P<action>[A-Za-z-]+)/?$": "admin",
    r"^/(?P<account>[^/]+)/?$": "account",
    r"^/(?P<account>[^/]+)/(?P<share>[^/]+)/?$": "share",
    r"^/(?P<account>[^/]+)/(?P<share>[^/]+)/(?P<path>.+)$": "item",
}
_compiled = [(re.compile(pattern, re.DOTALL), level) for pattern, level in url_paths.items()]


class Operation(NamedTuple):
    handler: str  # method name on FilesResponses
    permission: str  # SAS permission letter the operation needs
    resource_type: str  # account-SAS resource type: s service, c share, o directory/file


# (level, verb, restype, comp) -> operation. The share level's `restype=directory` operations act on
# the share's root directory.
operations: dict[tuple[str, str, str | None, str | None], Operation] = {
    ("account", "GET", None, "list"): Operation("list_shares", "l", "s"),
    ("account", "GET", "service", "properties"): Operation("get_service_properties", "r", "s"),
    ("account", "PUT", "service", "properties"): Operation("set_service_properties", "w", "s"),
    ("share", "PUT", "share", None): Operation("create_share", "c", "c"),
    ("share", "GET", "share", None): Operation("get_share_properties", "r", "c"),
    ("share", "HEAD", "share", None): Operation("get_share_properties", "r", "c"),
    ("share", "DELETE", "share", None): Operation("delete_share", "d", "c"),
    ("share", "PUT", "share", "metadata"): Operation("set_share_metadata", "w", "c"),
    ("share", "PUT", "share", "properties"): Operation("set_share_properties", "w", "c"),
    ("share", "PUT", "share", "lease"): Operation("share_lease", "w", "c"),
    ("share", "PUT", "share", "snapshot"): Operation("create_snapshot", "c", "c"),
    ("share", "GET", "share", "stats"): Operation("get_share_stats", "r", "c"),
    ("share", "GET", "share", "acl"): Operation("get_share_acl", "r", "c"),
    ("share", "PUT", "share", "acl"): Operation("set_share_acl", "w", "c"),
    ("share", "GET", "directory", None): Operation("get_directory_properties", "r", "c"),
    ("share", "HEAD", "directory", None): Operation("get_directory_properties", "r", "c"),
    ("share", "PUT", "directory", "metadata"): Operation("set_directory_metadata", "w", "c"),
    ("share", "PUT", "directory", "properties"): Operation("set_directory_properties", "w", "c"),
    ("share", "GET", "directory", "list"): Operation("list_directory", "l", "c"),
    ("share", "GET", "directory", "listhandles"): Operation("list_handles", "l", "c"),
    ("share", "PUT", "directory", "forceclosehandles"): Operation("force_close_handles", "w", "c"),
    ("item", "PUT", "directory", None): Operation("create_directory", "c", "o"),
    ("item", "GET", "directory", None): Operation("get_directory_properties", "r", "o"),
    ("item", "HEAD", "directory", None): Operation("get_directory_properties", "r", "o"),
    ("item", "DELETE", "directory", None): Operation("delete_directory", "d", "o"),
    ("item", "PUT", "directory", "metadata"): Operation("set_directory_metadata", "w", "o"),
    ("item", "PUT", "directory", "properties"): Operation("set_directory_properties", "w", "o"),
    ("item", "GET", "directory", "list"): Operation("list_directory", "l", "o"),
    ("item", "GET", "directory", "listhandles"): Operation("list_handles", "l", "o"),
    ("item", "PUT", "directory", "forceclosehandles"): Operation("force_close_handles", "w", "o"),
    ("item", "PUT", None, None): Operation("create_file", "c", "o"),  # or start copy: x-ms-copy-source
    ("item", "GET", None, None): Operation("get_file", "r", "o"),
    ("item", "HEAD", None, None): Operation("get_file_properties", "r", "o"),
    ("item", "DELETE", None, None): Operation("delete_file", "d", "o"),
    ("item", "PUT", None, "range"): Operation("put_range", "w", "o"),
    ("item", "GET", None, "rangelist"): Operation("list_ranges", "r", "o"),
    ("item", "PUT", None, "metadata"): Operation("set_file_metadata", "w", "o"),
    ("item", "PUT", None, "properties"): Operation("set_file_properties", "w", "o"),
    ("item", "PUT", None, "copy"): Operation("abort_copy", "w", "o"),
    ("item", "PUT", None, "lease"): Operation("file_lease", "w", "o"),
    ("item", "GET", None, "listhandles"): Operation("list_handles", "l", "o"),
    ("item", "PUT", None, "forceclosehandles"): Operation("force_close_handles", "w", "o"),
    ("item", "PUT", None, "rename"): Operation("rename", "w", "o"),
    ("item", "PUT", "directory", "rename"): Operation("rename", "w", "o"),
}


def match(path: str) -> tuple[str, dict[str, str]] | None:
    """(level, captured groups) for a decoded request path, or None."""
    for pattern, level in _compiled:
        found = pattern.match(path)
        if found:
            return level, found.groupdict()
    return None


# Handlers a share snapshot (`sharesnapshot=`) may be read through; deleting a share with it deletes
# the snapshot. Anything else on a snapshot is ShareSnapshotOperationNotSupported: snapshots are
# read-only.
SNAPSHOT_READS = frozenset(
    {
        "get_share_properties",
        "get_share_stats",
        "get_share_acl",
        "get_directory_properties",
        "list_directory",
        "get_file",
        "get_file_properties",
        "list_ranges",
        "list_handles",
        "delete_share",
    }
)
# Lease checks (handler -> whether the operation needs the lease's id while one is active).
FILE_LEASED = {
    "create_file": True,
    "put_range": True,
    "set_file_metadata": True,
    "set_file_properties": True,
    "delete_file": True,
    "abort_copy": True,
    "get_file": False,
    "get_file_properties": False,
    "list_ranges": False,
}
SHARE_LEASED = {
    "delete_share": True,
    "get_share_properties": False,
    "set_share_metadata": False,
    "set_share_properties": False,
    "get_share_acl": False,
    "set_share_acl": False,
    "get_share_stats": False,
}
