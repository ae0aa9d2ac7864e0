"""SharedKey and SAS verification for the File service, computed exactly as Azure computes them.

SharedKey (https://learn.microsoft.com/rest/api/storageservices/authorize-with-shared-key): the
string to sign is the verb, eleven standard headers (Content-Length empty when 0), the `x-ms-*`
headers in the service's culture-aware order, `/<account><encoded path>` and the query parameters
(lower-cased names, decoded values, sorted). SAS tokens (service SAS for a share or file, account
SAS) are HMAC-SHA256 over the fields Azure lists for each kind, with the account key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import cmp_to_key
from urllib.parse import unquote, urlsplit

from .errors import StorageError

# The service orders canonicalized `x-ms-*` headers with Windows' culture-aware string comparison
# (hyphens weigh less than letters, so `x-ms-meta-a` < `x-ms-metaa`), not ordinally. These weight
# tables and `_compare` reproduce it; they are the ones azure-storage-*'s SharedKey policy ships
# (MIT licence) to emulate the service.
# fmt: off
_TABLE_LV0 = [
    0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0,
    0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0,
    0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x71c, 0x0, 0x71f, 0x721, 0x723, 0x725,
    0x0, 0x0, 0x0, 0x72d, 0x803, 0x0, 0x0, 0x733, 0x0, 0xd03, 0xd1a, 0xd1c, 0xd1e,
    0xd20, 0xd22, 0xd24, 0xd26, 0xd28, 0xd2a, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0,
    0xe02, 0xe09, 0xe0a, 0xe1a, 0xe21, 0xe23, 0xe25, 0xe2c, 0xe32, 0xe35, 0xe36, 0xe48, 0xe51,
    0xe70, 0xe7c, 0xe7e, 0xe89, 0xe8a, 0xe91, 0xe99, 0xe9f, 0xea2, 0xea4, 0xea6, 0xea7, 0xea9,
    0x0, 0x0, 0x0, 0x743, 0x744, 0x748, 0xe02, 0xe09, 0xe0a, 0xe1a, 0xe21, 0xe23, 0xe25,
    0xe2c, 0xe32, 0xe35, 0xe36, 0xe48, 0xe51, 0xe70, 0xe7c, 0xe7e, 0xe89, 0xe8a, 0xe91, 0xe99,
    0xe9f, 0xea2, 0xea4, 0xea6, 0xea7, 0xea9, 0x0, 0x74c, 0x0, 0x750, 0x0,
]

_TABLE_LV4 = [
    0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0,
    0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0,
    0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x8012, 0x0, 0x0, 0x0, 0x0, 0x0, 0x8212, 0x0, 0x0,
    0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0,
    0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0,
    0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0,
    0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0,
    0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0, 0x0,
]
# fmt: on


def _compare(lhs: str, rhs: str) -> int:
    tables = [_TABLE_LV0, _TABLE_LV4]
    curr_level, i, j, n = 0, 0, 0, len(tables)
    lhs_len = len(lhs)
    rhs_len = len(rhs)
    while curr_level < n:
        if curr_level == (n - 1) and i != j:
            if i > j:
                return -1
            if i < j:
                return 1
            return 0

        w1 = tables[curr_level][ord(lhs[i])] if i < lhs_len else 0x1
        w2 = tables[curr_level][ord(rhs[j])] if j < rhs_len else 0x1

        if w1 == 0x1 and w2 == 0x1:
            i = 0
            j = 0
            curr_level += 1
        elif w1 == w2:
            i += 1
            j += 1
        elif w1 == 0:
            i += 1
        elif w2 == 0:
            j += 1
        else:
            if w1 < w2:
                return -1
            if w1 > w2:
                return 1
            return 0
    return 0


# Characters outside the tables (non-ASCII) make the culture-aware order undefined here: fall back to
# ordinal order, which is what the service does for plain ASCII anyway in all but hyphen cases.
def canonical_header_order(names: Iterable[str]) -> list[str]:
    names = list(names)
    try:
        return sorted(names, key=cmp_to_key(_compare))
    except IndexError:
        return sorted(names)


STANDARD_HEADERS = (
    "Content-Encoding",
    "Content-Language",
    "Content-Length",
    "Content-MD5",
    "Content-Type",
    "Date",
    "If-Modified-Since",
    "If-Match",
    "If-None-Match",
    "If-Unmodified-Since",
    "Range",
)
MAX_CLOCK_SKEW = timedelta(minutes=15)


def sign(key: bytes, string_to_sign: str) -> str:
    digest = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def canonical_query(raw_query: str) -> str:
    """`\\nname:v1,v2` per parameter: names lower-cased and sorted, values decoded and sorted."""
    values: dict[str, list[str]] = {}
    for part in raw_query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        values.setdefault(unquote(name).lower(), []).append(unquote(value))
    return "".join(f"\n{name}:{','.join(sorted(vals))}" for name, vals in sorted(values.items()))


def shared_key_string_to_sign(
    method: str, headers: Mapping[str, str], account: str, raw_path: str, raw_query: str
) -> str:
    """The SharedKey string to sign (version 2009-09-19 and later) for one request.

    `headers` maps lower-cased names to values; `raw_path` is the path exactly as sent (still
    percent-encoded), because Azure signs the encoded URI path.
    """
    lines = [method.upper()]
    for name in STANDARD_HEADERS:
        value = headers.get(name.lower(), "")
        if name == "Content-Length" and value == "0":
            value = ""
        lines.append(value)
    x_ms = {name: value for name, value in headers.items() if name.startswith("x-ms-")}
    canonical_headers = "".join(f"{name}:{x_ms[name]}\n" for name in canonical_header_order(x_ms))
    return "\n".join(lines) + "\n" + canonical_headers + f"/{account}{raw_path}" + canonical_query(raw_query)


def verify_shared_key(
    authorization: str,
    method: str,
    headers: Mapping[str, str],
    raw_path: str,
    raw_query: str,
    accounts: Mapping[str, bytes],
    path_account: str,
    now: datetime | None = None,
) -> None:
    """Raise AuthenticationFailed (403) unless `authorization` is Azure's SharedKey for this request."""
    scheme, _, credential = authorization.strip().partition(" ")
    account, _, signature = credential.strip().rpartition(":")
    if scheme != "SharedKey" or not account or not signature:
        raise StorageError(
            "InvalidAuthenticationInfo" if scheme != "SharedKey" else "AuthenticationFailed",
            status=403 if scheme == "SharedKey" else 400,
            message="Authentication information is not given in the correct format. Check the value of "
            "Authorization header."
            if scheme != "SharedKey"
            else None,
            details={"AuthenticationErrorDetail": "Only the SharedKey scheme is supported by this emulator."},
        )
    key = accounts.get(account)
    if key is None or account != path_account:
        raise StorageError(
            "AuthenticationFailed",
            details={"AuthenticationErrorDetail": f"The account {account!r} in the Authorization header "
                     f"is not the account {path_account!r} of the request URI, or is unknown."},
        )  # fmt: skip
    _check_date(headers, now)
    string_to_sign = shared_key_string_to_sign(method, headers, account, raw_path, raw_query)
    if not hmac.compare_digest(sign(key, string_to_sign), signature):
        raise StorageError(
            "AuthenticationFailed",
            details={
                "AuthenticationErrorDetail": f"The MAC signature found in the HTTP request '{signature}' is "
                "not the same as any computed signature. Server used following string to sign: "
                f"'{string_to_sign}'."
            },
        )


def _check_date(headers: Mapping[str, str], now: datetime | None) -> None:
    raw = headers.get("x-ms-date") or headers.get("date")
    if not raw:
        raise StorageError(
            "AuthenticationFailed",
            details={"AuthenticationErrorDetail": "Request date header not specified (x-ms-date or Date)."},
        )
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        when = None
    if when is None or when.tzinfo is None:
        raise StorageError(
            "AuthenticationFailed",
            details={"AuthenticationErrorDetail": f"The date header value {raw!r} is not an RFC 1123 date."},
        )
    now = now or datetime.now(UTC)
    if abs(now - when) > MAX_CLOCK_SKEW:
        raise StorageError(
            "AuthenticationFailed",
            details={"AuthenticationErrorDetail": f"Request date header too old or in the future: {raw!r}."},
        )


# --- SAS --------------------------------------------------------------------------------------------


def _parse_time(value: str, field: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise StorageError(
            "AuthenticationFailed",
            details={"AuthenticationErrorDetail": f"{field} {value!r} is not a valid ISO 8601 time."},
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _check_window(params: Mapping[str, str], now: datetime) -> None:
    start = _parse_time(params["st"], "Signed start") if params.get("st") else None
    if not params.get("se"):
        raise StorageError(
            "AuthenticationFailed",
            details={"AuthenticationErrorDetail": "Signed expiry (se) is required: stored access policies "
                     "are not supported by this emulator."},
        )  # fmt: skip
    expiry = _parse_time(params["se"], "Signed expiry")
    if now > expiry or (start is not None and now < start - MAX_CLOCK_SKEW):
        raise StorageError(
            "AuthenticationFailed",
            details={"AuthenticationErrorDetail": "Signature not valid in the specified time frame: "
                     f"Start [{params.get('st', '')}] - Expiry [{params['se']}] - "
                     f"Current [{now:%a, %d %b %Y %H:%M:%S GMT}]"},
        )  # fmt: skip


def _field(params: Mapping[str, str], name: str) -> str:
    return params.get(name) or ""


def service_sas_string_to_sign(params: Mapping[str, str], canonical_resource: str) -> str:
    fields = [_field(params, "sp"), _field(params, "st"), _field(params, "se"), canonical_resource]
    names = ("si", "sip", "spr", "sv", "rscc", "rscd", "rsce", "rscl", "rsct")
    fields += [_field(params, name) for name in names]
    return "\n".join(fields)


def account_sas_strings_to_sign(params: Mapping[str, str], account: str) -> list[str]:
    """Both layouts Azure has used: with (2020-12-06+) and without the signed encryption scope line."""
    fields = [account] + [_field(params, n) for n in ("sp", "ss", "srt", "st", "se", "sip", "spr", "sv")]
    base = "\n".join(fields) + "\n"
    return [base + _field(params, "ses") + "\n", base]


def verify_sas(
    params: Mapping[str, str],
    account: str,
    key: bytes,
    share: str | None,
    path: str,
    permission: str,
    resource_type: str,
    now: datetime | None = None,
) -> None:
    """Raise unless the SAS in `params` is signed with `key` and grants `permission` here.

    `resource_type` is the account-SAS resource type the operation needs: `s` service, `c` share,
    `o` directory or file. A service SAS names a share (`sr=s`) or one file (`sr=f`).
    """
    now = now or datetime.now(UTC)
    signature = params.get("sig", "")
    if "ss" in params or "srt" in params:
        candidates = account_sas_strings_to_sign(params, account)
        scope_ok = "f" in _field(params, "ss") and resource_type in _field(params, "srt")
        scope_error = "AuthorizationResourceTypeMismatch"
    else:
        resource = _field(params, "sr")
        if share is None or resource not in ("s", "f"):
            raise StorageError(
                "AuthenticationFailed",
                details={"AuthenticationErrorDetail": "A service SAS must name a share (sr=s) or a file "
                         "(sr=f) and be used on that resource."},
            )  # fmt: skip
        target = f"/file/{account}/{share}" + (f"/{path}" if resource == "f" else "")
        candidates = [service_sas_string_to_sign(params, target)]
        scope_ok = resource == "s" or permission == "l" or bool(path)
        scope_error = "AuthorizationResourceTypeMismatch"
    for string_to_sign in candidates:
        if hmac.compare_digest(sign(key, string_to_sign), signature):
            break
    else:
        raise StorageError(
            "AuthenticationFailed",
            details={"AuthenticationErrorDetail": "Signature did not match. String to sign used was "
                     f"{candidates[0]}"},
        )  # fmt: skip
    _check_window(params, now)
    if not scope_ok:
        raise StorageError(scope_error)
    if permission not in _field(params, "sp"):
        raise StorageError("AuthorizationPermissionMismatch")


def raw_path_of(environ: Mapping[str, str]) -> str:
    """The request path exactly as the client sent it (still percent-encoded)."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or ""
    if not raw:
        from urllib.parse import quote

        return quote(environ.get("PATH_INFO", "/"), safe="/~")
    if "://" in raw:
        raw = urlsplit(raw).path
    return raw.split("?", 1)[0]
