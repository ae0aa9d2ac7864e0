"""Parsing and checking a Set File Service Properties body, and the XML Get answers with.

The service keeps what was set and leaves out-of-request elements as they were; a malformed document
or a value outside Azure's limits is refused with Azure's codes (`InvalidXmlDocument`,
`InvalidXmlNodeValue`) naming the element, never accepted and dropped.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from .errors import StorageError

# Top-level elements of StorageServiceProperties for the File service, in the order Azure writes them.
ELEMENTS = ("HourMetrics", "MinuteMetrics", "Cors", "ProtocolSettings")
DEFAULT_METRICS = (
    "<Version>1.0</Version><Enabled>false</Enabled>"
    "<RetentionPolicy><Enabled>false</Enabled></RetentionPolicy>"
)
DEFAULTS = {
    "HourMetrics": f"<HourMetrics>{DEFAULT_METRICS}</HourMetrics>",
    "MinuteMetrics": f"<MinuteMetrics>{DEFAULT_METRICS}</MinuteMetrics>",
    "Cors": "<Cors />",
    "ProtocolSettings": "<ProtocolSettings><SMB><Multichannel><Enabled>false</Enabled></Multichannel></SMB>"
    "</ProtocolSettings>",
}
CORS_METHODS = frozenset({"DELETE", "GET", "HEAD", "MERGE", "POST", "OPTIONS", "PUT", "PATCH"})
MAX_CORS_RULES = 5
MAX_BODY = 64 * 1024


def _invalid(element: str, message: str) -> StorageError:
    return StorageError(
        "InvalidXmlNodeValue",
        message=f"The value for one of the XML nodes is not in the correct format: {message}",
        details={"XmlNodeName": element},
    )


def _document_error(message: str) -> StorageError:
    return StorageError("InvalidXmlDocument", message=f"XML specified is not syntactically valid: {message}")


def _bool(node: ET.Element, name: str, where: str, required: bool = True) -> bool | None:
    child = node.find(name)
    if child is None:
        if required:
            raise _document_error(f"{where} needs a {name} element.")
        return None
    text = (child.text or "").strip().lower()
    if text not in ("true", "false"):
        raise _invalid(name, f"{where}/{name} must be true or false, not {child.text!r}.")
    return text == "true"


def _check_metrics(node: ET.Element) -> None:
    where = node.tag
    if node.find("Version") is None:
        raise _document_error(f"{where} needs a Version element.")
    enabled = _bool(node, "Enabled", where)
    include_apis = _bool(node, "IncludeAPIs", where, required=False)
    if enabled and include_apis is None:
        raise _document_error(f"{where}: IncludeAPIs is required when Enabled is true.")
    policy = node.find("RetentionPolicy")
    if policy is None:
        raise _document_error(f"{where} needs a RetentionPolicy element.")
    if _bool(policy, "Enabled", f"{where}/RetentionPolicy"):
        days = (policy.findtext("Days") or "").strip()
        if not days.isdigit() or not 1 <= int(days) <= 365:
            raise _invalid("Days", f"{where}/RetentionPolicy/Days must be from 1 to 365, not {days!r}.")


def _check_cors(node: ET.Element) -> None:
    rules = list(node)
    if len(rules) > MAX_CORS_RULES:
        raise _invalid("Cors", f"at most {MAX_CORS_RULES} CORS rules are allowed, not {len(rules)}.")
    for rule in rules:
        if rule.tag != "CorsRule":
            raise _document_error(f"Cors holds CorsRule elements, not {rule.tag}.")
        for name in ("AllowedOrigins", "AllowedMethods", "MaxAgeInSeconds"):
            if rule.find(name) is None or not (rule.findtext(name) or "").strip():
                raise _document_error(f"CorsRule needs a non-empty {name} element.")
        methods = {m.strip().upper() for m in (rule.findtext("AllowedMethods") or "").split(",")}
        if not methods <= CORS_METHODS:
            bad = ", ".join(sorted(methods - CORS_METHODS))
            raise _invalid("AllowedMethods", f"CorsRule/AllowedMethods has unknown methods: {bad}.")
        age = (rule.findtext("MaxAgeInSeconds") or "").strip()
        if not age.isdigit():
            raise _invalid("MaxAgeInSeconds", f"CorsRule/MaxAgeInSeconds must be whole seconds, not {age!r}.")


def parse(body: bytes) -> dict[str, str]:
    """The top-level elements a Set File Service Properties body sets: name -> their XML."""
    if len(body) > MAX_BODY:
        raise StorageError("RequestBodyTooLarge")
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise _document_error("document type declarations are not allowed.")
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise _document_error(str(exc)) from None
    if root.tag != "StorageServiceProperties":
        raise _document_error(f"the root element must be StorageServiceProperties, not {root.tag}.")
    elements: dict[str, str] = {}
    for child in root:
        if child.tag not in ELEMENTS:
            known = ", ".join(ELEMENTS)
            raise _document_error(f"{child.tag} is not a File service property (known: {known}).")
        if child.tag in ("HourMetrics", "MinuteMetrics"):
            _check_metrics(child)
        elif child.tag == "Cors":
            _check_cors(child)
        elements[child.tag] = ET.tostring(child, encoding="unicode")
    return elements


def to_xml(stored: dict[str, str]) -> str:
    return (
        "<StorageServiceProperties>"
        + "".join(stored.get(name) or DEFAULTS[name] for name in ELEMENTS)
        + "</StorageServiceProperties>"
    )
