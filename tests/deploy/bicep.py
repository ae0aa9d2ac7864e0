"""Reading infra/azure/*.bicep in tests: parse with pycep-parser, then evaluate expressions for one set of
parameters, standing in for what Azure Resource Manager would compute at deployment time.

Why: no registry this project reaches ships the Bicep CLI, so `bicep build` cannot run here. pycep-parser
is a grammar-based Bicep parser (a syntax error fails the parse); on top of its tree this module
evaluates the small subset of the template language the templates use, so tests can check the app
settings a deployment would produce against what shared/settings.py accepts. Anything outside that
subset raises `Unsupported`, so a template change the evaluator does not understand fails loudly
instead of passing silently.

Runtime values (resource ids, keys, secret URIs, host names) are simulated with plausible shapes.

pycep renders an identifier and a string literal alike (`foo` and `'foo'` both become "foo"); a string
that names a declared parameter, variable, resource or module is taken as a reference.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from pycep import BicepParser

ROOT = Path(__file__).resolve().parents[2]
AZURE_DIR = ROOT / "infra" / "azure"
MAIN = AZURE_DIR / "main.bicep"

SUBSCRIPTION_ID = "11111111-2222-3333-4444-555555555555"
TENANT_ID = "66666666-7777-8888-9999-000000000000"
RESOURCE_GROUP = "rg-batchai-training"
RG_LOCATION = "westeurope"
# A well-formed, made-up storage account key (base64 of 64 bytes), not a credential of anything.
FAKE_ACCOUNT_KEY = base64.b64encode(hashlib.sha512(b"not-a-real-key").digest()).decode()

KEY_VAULT_REFERENCE = re.compile(r"^@Microsoft\.KeyVault\(SecretUri=(?P<uri>https://[^)]+)\)$")


class Unsupported(AssertionError):
    """The template uses a construct this test evaluator does not know: extend tests/deploy/bicep.py."""


@cache
def _parser() -> BicepParser:
    return BicepParser()


@cache
def parse(path: Path) -> dict[str, Any]:
    """pycep's JSON rendering of a Bicep file (cached: parsing takes a moment)."""
    try:
        return _parser().parse(file_path=path)
    except Exception as exc:  # lark reports a syntax error as whatever its parser state tripped on
        raise AssertionError(f"{path}: not valid Bicep (pycep-parser could not parse it): {exc!r}") from exc


def parse_expression(text: str) -> Any:
    """The tree of one Bicep expression (the inside of a `${...}` interpolation)."""
    return _parse_expression(text)


@cache
def _parse_expression(text: str) -> Any:
    return _parser().parse(text=f"var expression = {text}\n")["variables"]["expression"]["value"]


@dataclass(frozen=True)
class ResourceRef:
    """A declared resource or module, as a value: property access yields simulated runtime values."""

    symbol: str
    kind: str  # "resource" or "module"


@dataclass(frozen=True)
class FunctionResult:
    """A function result with sub-properties (subscription(), resourceGroup(), environment())."""

    properties: dict[str, Any]


@dataclass
class Template:
    """One Bicep file and the parameter values of one deployment."""

    path: Path
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.doc = parse(self.path)
        declared = self.doc.get("parameters", {})
        unknown = set(self.params) - set(declared)
        if unknown:
            raise AssertionError(f"{self.path.name}: no such parameters {sorted(unknown)}")
        self._values: dict[str, Any] = {}
        self._loop_items: dict[str, Any] = {}  # the item names of `[for x in ...]` being evaluated
        for name, spec in declared.items():
            if name in self.params:
                self._values[name] = self.params[name]
            elif "default" in spec:
                self._values[name] = self.value(spec["default"])
            # else: required and not given; using it raises.

    # --- declarations ----------------------------------------------------------------------------------
    @property
    def parameters(self) -> dict[str, Any]:
        return self.doc.get("parameters", {})

    @property
    def variables(self) -> dict[str, Any]:
        return self.doc.get("variables", {})

    @property
    def resources(self) -> dict[str, Any]:
        return self.doc.get("resources", {})

    @property
    def modules(self) -> dict[str, Any]:
        return self.doc.get("modules", {})

    def resources_of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        """Symbol -> resource declaration, for every resource of one type (case-insensitive)."""
        return {
            symbol: res
            for symbol, res in self.resources.items()
            if res["type"].lower() == resource_type.lower()
        }

    @staticmethod
    def body(declaration: dict[str, Any]) -> dict[str, Any]:
        """The `{...}` of a resource or module, unwrapping `= if (condition) {...}`."""
        config = declaration["config"]
        return config["config"] if "condition" in config and "config" in config else config

    @staticmethod
    def condition(declaration: dict[str, Any]) -> Any:
        """The `if (...)` tree of a conditional resource or module, None if unconditional."""
        config = declaration["config"]
        return config["condition"] if "condition" in config and "config" in config else None

    def is_deployed(self, symbol: str) -> bool:
        declaration = self.resources.get(symbol) or self.modules[symbol]
        condition = self.condition(declaration)
        return True if condition is None else bool(self.value(condition))

    # --- evaluation ------------------------------------------------------------------------------------
    def param(self, name: str) -> Any:
        if name not in self._values:
            raise AssertionError(f"{self.path.name}: parameter {name!r} is required and was not given")
        return self._values[name]

    def value(self, node: Any) -> Any:
        """Evaluate a pycep tree node to a Python value."""
        if node is None or isinstance(node, bool | int | float):
            return node
        if isinstance(node, list):
            return [self.value(item) for item in node]
        if isinstance(node, str):
            return self._string(node)
        if isinstance(node, dict):
            if "loop_type" in node:
                return self._loop(node)
            if set(node) == {"function"}:
                return self._function(node["function"]["type"], node["function"].get("parameters") or {})
            if set(node) == {"operator"}:
                return self._operator(node["operator"]["type"], node["operator"]["operands"])
            return {key: self.value(item) for key, item in node.items()}
        raise Unsupported(f"node {node!r}")

    def _loop(self, node: dict[str, Any]) -> list[Any]:
        """`[for item in array: {...}]` (no index, no filter): the body once per item."""
        loop = node["loop_type"]
        if loop["type"] != "array" or node.get("condition") is not None:
            raise Unsupported(f"loop {loop!r}")
        item, array = loop["detail"]["item_name"], loop["detail"]["array_name"]
        if not isinstance(item, str) or item in self._loop_items:
            raise Unsupported(f"loop {loop!r}")
        out = []
        for value in self.value(array):
            self._loop_items[item] = value
            try:
                out.append(self.value(node["config"]))
            finally:
                del self._loop_items[item]
        return out

    def _string(self, text: str) -> Any:
        if "${" in text:
            return self._interpolate(text)
        if text in self._loop_items:
            return self._loop_items[text]
        if text in self.parameters:
            return self.param(text)
        if text in self.variables:
            return self.value(self.variables[text]["value"])
        if text in self.resources:
            return ResourceRef(text, "resource")
        if text in self.modules:
            return ResourceRef(text, "module")
        return text

    def _interpolate(self, text: str) -> str:
        out: list[str] = []
        pos = 0
        while (start := text.find("${", pos)) != -1:
            out.append(text[pos:start])
            depth, end = 0, start + 2
            for end in range(start + 2, len(text)):
                if text[end] == "{":
                    depth += 1
                elif text[end] == "}":
                    if depth == 0:
                        break
                    depth -= 1
            else:
                raise Unsupported(f"unterminated interpolation in {text!r}")
            value = self.value(parse_expression(text[start + 2 : end]))
            if isinstance(value, ResourceRef | FunctionResult | dict | list):
                raise Unsupported(f"interpolating a non-scalar {value!r} in {text!r}")
            out.append(_arm_string(value))
            pos = end + 1
        out.append(text[pos:])
        return "".join(out)

    def _function(self, name: str, params: dict[str, Any]) -> Any:
        args = list(params.values())
        if name == "take":
            return self.value(params["original_value"])[: self.value(params["number_to_take"])]
        if name == "join":
            return self.value(params["delimiter"]).join(self.value(params["input_array"]))
        if name == "empty":
            return not self.value(params["item_to_test"])
        if name == "to_lower":
            return self.value(params["string_to_change"]).lower()
        if name == "string":
            return _arm_string(self.value(params["value_to_convert"]))
        if name == "unique_string":
            seed = "|".join(str(self.value(a)) for a in args if a is not None)
            return _unique_string(seed)
        if name == "guid":
            seed = "|".join(str(self.value(a)) for a in args if a is not None)
            return str(uuid.uuid5(uuid.NAMESPACE_URL, seed))
        if name == "subscription":
            return FunctionResult(
                {
                    "id": f"/subscriptions/{SUBSCRIPTION_ID}",
                    "subscriptionId": SUBSCRIPTION_ID,
                    "tenantId": TENANT_ID,
                }
            )
        if name == "resource_group":
            if params.get("resource_group_name") is not None:
                rg = self.value(params["resource_group_name"])
                return FunctionResult(
                    {"name": rg, "id": f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/{rg}"}
                )
            return FunctionResult(
                {
                    "name": RESOURCE_GROUP,
                    "id": f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/{RESOURCE_GROUP}",
                    "location": RG_LOCATION,
                }
            )
        if name == "environment":
            return FunctionResult(
                {
                    "resourceManager": "https://management.azure.com/",
                    "suffixes": {"storage": "core.windows.net", "keyvaultDns": ".vault.azure.net"},
                }
            )
        if name == "resource_id":
            # resourceId(type, name1, [name2]) of a resource in this deployment's group (pycep does not
            # tell a leading subscription or group argument apart from the type reliably: not supported).
            if params.get("subscription_id") or params.get("resource_group_name"):
                raise Unsupported(f"resourceId({params}) naming a subscription or group")
            subscription, group = SUBSCRIPTION_ID, RESOURCE_GROUP
            types = self.value(params["resource_type"]).split("/")
            names = [self.value(params[k]) for k in ("resource_name_1", "resource_name_2") if params.get(k)]
            if len(types) != len(names) + 1:
                raise Unsupported(f"resourceId({params})")
            path = "/".join(f"{t}/{n}" for t, n in zip(types[1:], names, strict=True))
            return f"/subscriptions/{subscription}/resourceGroups/{group}/providers/{types[0]}/{path}"
        if name == "subscription_resource_id":
            names = [self.value(params[k]) for k in ("resource_name_1", "resource_name_2") if params.get(k)]
            return f"/subscriptions/{SUBSCRIPTION_ID}/providers/{params['resource_type']}/" + "/".join(names)
        if name == "list_func" and params.get("func_name", "").lower() == "listkeys":
            return {
                "systemKeys": {"blobs_extension": "simulated-blobs-extension-key"},
                "keys": [{"value": FAKE_ACCOUNT_KEY}],
            }
        raise Unsupported(f"function {name}({params})")

    def _operator(self, name: str, operands: dict[str, Any]) -> Any:
        if name == "conditional":
            # ARM evaluates only the branch taken (runtime references in the other one never run).
            branch = "true_value" if self.value(operands["condition"]) else "false_value"
            return self.value(operands[branch])
        if name == "not":
            return not self.value(operands["bool_value"])
        if name in ("and", "or"):  # Bicep's && and || (both sides are booleans in these templates)
            left, right = self.value(operands["operand_1"]), self.value(operands["operand_2"])
            if not isinstance(left, bool) or not isinstance(right, bool):
                raise Unsupported(f"operator {name}({operands})")
            return (left and right) if name == "and" else (left or right)
        if name in ("equals", "not_equals"):  # Bicep's == and != (strings compare case-sensitively)
            same = self.value(operands["operand_1"]) == self.value(operands["operand_2"])
            return same if name == "equals" else not same
        if name in ("property_accessor", "function_accessor", "index_accessor"):
            base, steps = _flatten({"operator": {"type": name, "operands": operands}})
            current = self.value(base)
            for step in steps:
                current = self._step(current, step)
            return current
        raise Unsupported(f"operator {name}({operands})")

    def _step(self, current: Any, step: tuple[str, Any]) -> Any:
        kind, key = step
        if kind == "index":
            return current[self.value(key)]
        if kind == "call":
            if isinstance(current, ResourceRef) and key.lower() == "listkeys":
                return {"keys": [{"value": FAKE_ACCOUNT_KEY}]}
            raise Unsupported(f"{current!r}.{key}()")
        if isinstance(current, ResourceRef):
            return self._resource_property(current, key)
        if isinstance(current, FunctionResult):
            return current.properties[key]
        if isinstance(current, dict):
            if key not in current:
                raise Unsupported(f"no property {key!r} in {current!r}")
            return current[key]
        raise Unsupported(f"property {key!r} of {current!r}")

    def _resource_property(self, ref: ResourceRef, key: str) -> Any:
        """Simulated runtime view of a resource: `name`, `id`, `properties`, `identity`."""
        if ref.kind == "module":
            raise Unsupported(f"module outputs ({ref.symbol}.{key})")
        if not self.is_deployed(ref.symbol):
            raise AssertionError(f"{self.path.name}: {ref.symbol}.{key} refers to a resource not deployed")
        declaration = self.resources[ref.symbol]
        name = self.resource_name(ref.symbol)
        rtype = declaration["type"]
        if key == "name":
            return name
        if key == "id":
            return (
                f"/subscriptions/{SUBSCRIPTION_ID}/resourceGroups/{RESOURCE_GROUP}/providers/{rtype}/{name}"
            )
        if key == "identity":
            return {"principalId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"principal/{name}"))}
        if key == "properties":
            return self._runtime_properties(ref.symbol, rtype, name)
        raise Unsupported(f"{ref.symbol}.{key}")

    def resource_name(self, symbol: str) -> str:
        """The full name of a resource (`<parent>/<name>` for a child declared with `parent:`)."""
        body = self.body(self.resources[symbol])
        name = self.value(body["name"])
        if "parent" in body:
            return f"{self.resource_name(body['parent'])}/{name}"
        return name

    def _runtime_properties(self, symbol: str, rtype: str, name: str) -> dict[str, Any]:
        declared = self.value(self.body(self.resources[symbol]).get("properties", {}))
        lowered = rtype.lower()
        if lowered == "microsoft.keyvault/vaults/secrets":
            vault, secret = name.split("/")
            declared["secretUri"] = f"https://{vault}.vault.azure.net/secrets/{secret}"
        elif lowered == "microsoft.keyvault/vaults":
            declared["vaultUri"] = f"https://{name}.vault.azure.net/"
        elif lowered == "microsoft.storage/storageaccounts":
            declared["primaryEndpoints"] = {
                service: f"https://{name}.{service}.core.windows.net/"
                for service in ("blob", "file", "queue", "table")
            }
        elif lowered == "microsoft.insights/components":
            key = uuid.uuid5(uuid.NAMESPACE_URL, f"ikey/{name}")
            declared["ConnectionString"] = (
                f"InstrumentationKey={key};IngestionEndpoint=https://{RG_LOCATION}.in.applicationinsights.azure.com/"
            )
        elif lowered == "microsoft.web/sites":
            declared["defaultHostName"] = f"{name}.azurewebsites.net"
        return declared


def _flatten(node: Any) -> tuple[Any, list[tuple[str, Any]]]:
    """`a.b[0].c()` as (a, [("attr", "b"), ("index", 0), ("call", "c")]).

    pycep nests the rest of a chain on the right (`a.b.c` is accessor(a, accessor(b, c))); only the
    leftmost operand is an expression, the rest are property names.
    """
    op = node["operator"]
    kind, operands = op["type"], op["operands"]
    if kind == "function_accessor":
        base, steps = _flatten_base(operands["operand_1"])
        return base, [*steps, ("call", operands["func_name"])]
    if kind == "index_accessor":
        base, steps = _flatten_base(operands["operand_1"])
        return base, [*steps, ("index", operands["operand_2"])]
    base, steps = _flatten_base(operands["operand_1"])
    return base, steps + _property_steps(operands["operand_2"])


def _flatten_base(node: Any) -> tuple[Any, list[tuple[str, Any]]]:
    if (
        isinstance(node, dict)
        and set(node) == {"operator"}
        and node["operator"]["type"].endswith("_accessor")
    ):
        return _flatten(node)
    return node, []


def _property_steps(node: Any) -> list[tuple[str, Any]]:
    if isinstance(node, str):
        return [("attr", node)]
    if isinstance(node, dict) and set(node) == {"operator"}:
        op = node["operator"]
        kind, operands = op["type"], op["operands"]
        if kind == "property_accessor":
            return _property_steps(operands["operand_1"]) + _property_steps(operands["operand_2"])
        if kind == "index_accessor":
            return [*_property_steps(operands["operand_1"]), ("index", operands["operand_2"])]
        if kind == "function_accessor":
            return [*_property_steps(operands["operand_1"]), ("call", operands["func_name"])]
    raise Unsupported(f"property chain {node!r}")


def _arm_string(value: Any) -> str:
    """How ARM renders a scalar inside a string."""
    if isinstance(value, bool):
        return "True" if value else "False"  # ARM's string(true); templates should avoid relying on it
    return str(value)


def _unique_string(seed: str) -> str:
    """13 lowercase base-32 characters, like ARM's uniqueString (not the same hash)."""
    digest = hashlib.sha256(seed.encode()).digest()
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    number = int.from_bytes(digest[:8], "big")
    return "".join(alphabet[(number >> (5 * i)) & 31] for i in range(13))


def key_vault_secret_uri(app_setting_value: str) -> str | None:
    """The secret URI of a `@Microsoft.KeyVault(SecretUri=...)` app setting value, else None."""
    match = KEY_VAULT_REFERENCE.match(app_setting_value)
    return match.group("uri") if match else None
