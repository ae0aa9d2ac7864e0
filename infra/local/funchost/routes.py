"""Route templates as Azure Functions (ASP.NET routing) reads them: `{id}`, optional `{id?}`,
defaults `{id=1}`, catch-all `{*rest}` and constraints such as `{id:int}`, `{name:alpha}`,
`{key:guid}`, `{n:range(1,9)}` or `{s:regex(^a.*$)}`."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from .config import ConfigError

_PARAM = re.compile(r"\{([^{}]+)\}")
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


def _as_int(value: str, bounds: tuple[int, int]) -> int | None:
    if not re.fullmatch(r"[+-]?\d+", value):
        return None
    number = int(value)
    return number if bounds[0] <= number <= bounds[1] else None


def _as_float(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _is_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _numbers(args: str, count: int, constraint: str) -> list[int]:
    parts = [a.strip() for a in args.split(",")] if args else []
    if len(parts) != count or not all(re.fullmatch(r"-?\d+", p) for p in parts):
        raise ConfigError(f"route constraint {constraint!r} needs {count} integer argument(s)")
    return [int(p) for p in parts]


def build_constraint(text: str) -> Callable[[str], bool]:
    """One constraint (`int`, `length(2,5)`...) as a predicate; an unknown one is a ConfigError."""
    match = re.fullmatch(r"(\w+)(?:\((.*)\))?", text, re.DOTALL)
    if not match:
        raise ConfigError(f"route constraint {text!r} is not valid")
    name, args = match.group(1).lower(), match.group(2)
    simple: dict[str, Callable[[str], bool]] = {
        "int": lambda v: _as_int(v, _INT32) is not None,
        "long": lambda v: _as_int(v, _INT64) is not None,
        "bool": lambda v: v.lower() in ("true", "false"),
        "alpha": lambda v: re.fullmatch(r"[A-Za-z]+", v) is not None,
        "guid": _is_guid,
        "decimal": lambda v: _as_float(v) is not None,
        "double": lambda v: _as_float(v) is not None,
        "float": lambda v: _as_float(v) is not None,
        "datetime": _is_datetime,
        "required": lambda v: v != "",
    }
    if name in simple and args is None:
        return simple[name]
    if name in ("minlength", "maxlength"):
        (n,) = _numbers(args or "", 1, text)
        return (lambda v: len(v) >= n) if name == "minlength" else (lambda v: len(v) <= n)
    if name == "length":
        bounds = _numbers(args or "", 2 if args and "," in args else 1, text)
        low, high = (bounds[0], bounds[0]) if len(bounds) == 1 else bounds
        return lambda v: low <= len(v) <= high
    if name in ("min", "max"):
        (n,) = _numbers(args or "", 1, text)

        def compare(v: str) -> bool:
            number = _as_int(v, _INT64)
            return number is not None and (number >= n if name == "min" else number <= n)

        return compare
    if name == "range":
        low, high = _numbers(args or "", 2, text)
        return lambda v: (number := _as_int(v, _INT64)) is not None and low <= number <= high
    if name == "regex" and args is not None:
        try:
            pattern = re.compile(args, re.IGNORECASE)
        except re.error as exc:
            raise ConfigError(f"route constraint {text!r}: bad regular expression: {exc}") from None
        return lambda v: pattern.search(v) is not None
    raise ConfigError(f"route constraint {text!r} is not supported")


def _split_constraints(text: str) -> list[str]:
    """`id:int:min(1)` -> ['id', 'int', 'min(1)'], keeping colons inside parentheses."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char == ":" and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += char == "("
        depth -= char == ")"
        current += char
    parts.append(current)
    return parts


@dataclass
class Param:
    name: str
    optional: bool = False
    catch_all: bool = False
    default: str | None = None
    constraints: list[Callable[[str], bool]] = field(default_factory=list)


@dataclass
class RouteTemplate:
    """A compiled template; `match(path)` gives the route parameters or None."""

    template: str
    regex: re.Pattern[str]
    params: list[Param]
    literal_segments: int

    def match(self, path: str) -> dict[str, str] | None:
        found = self.regex.fullmatch("/" + path.strip("/") if path.strip("/") else "")
        if not found:
            return None
        values: dict[str, str] = {}
        for index, param in enumerate(self.params):
            value = found.group(f"p{index}")
            if value is None or value == "":
                if param.default is not None:
                    values[param.name] = param.default
                elif not (param.optional or param.catch_all):
                    return None
                continue
            if not all(check(value) for check in param.constraints):
                return None
            values[param.name] = value
        return values

    @property
    def sort_key(self) -> tuple[int, ...]:
        """Literal routes before parameter routes, constrained before free, catch-all last."""
        return (
            -self.literal_segments,
            sum(p.catch_all for p in self.params),
            sum(p.optional or p.default is not None for p in self.params),
            -sum(bool(p.constraints) for p in self.params),
        )


def _parse_param(text: str) -> Param:
    catch_all = text.startswith("*")
    text = text.lstrip("*")
    head, *constraint_texts = _split_constraints(text)
    default = None
    if "=" in head:
        head, default = head.split("=", 1)
    elif constraint_texts and "=" in constraint_texts[-1] and "(" not in constraint_texts[-1]:
        constraint_texts[-1], default = constraint_texts[-1].split("=", 1)
    optional = head.endswith("?") or (constraint_texts and constraint_texts[-1].endswith("?"))
    head = head.rstrip("?")
    if constraint_texts:
        constraint_texts[-1] = constraint_texts[-1].rstrip("?")
    if not re.fullmatch(r"\w+", head):
        raise ConfigError(f"route parameter name {head!r} is not valid")
    return Param(
        name=head,
        optional=bool(optional),
        catch_all=catch_all,
        default=default,
        constraints=[build_constraint(c) for c in constraint_texts if c],
    )


def compile_route(template: str) -> RouteTemplate:
    """Compile a route template (without the route prefix); a malformed one is a ConfigError."""
    params: list[Param] = []
    pattern = ""
    literals = 0
    segments = [s for s in template.strip("/").split("/") if s != ""]
    for segment in segments:
        pieces = _PARAM.split(segment)  # literal, param, literal, param, ...
        if "{" in "".join(pieces[::2]) or "}" in "".join(pieces[::2]):
            raise ConfigError(f"route template {template!r}: unbalanced braces in {segment!r}")
        if len(pieces) == 1:
            literals += 1
            pattern += "/" + re.escape(segment)
            continue
        if len(pieces) == 3 and pieces[0] == "" and pieces[2] == "":
            param = _parse_param(pieces[1])
            group = f"(?P<p{len(params)}>{'.*' if param.catch_all else '[^/]+'})"
            params.append(param)
            optional = param.optional or param.catch_all or param.default is not None
            pattern += f"(?:/{group})?" if optional else "/" + group
            continue
        pattern += "/"
        for index, piece in enumerate(pieces):
            if index % 2 == 0:
                pattern += re.escape(piece)
            else:
                param = _parse_param(piece)
                pattern += f"(?P<p{len(params)}>[^/]+)"
                params.append(param)
    names = [p.name.lower() for p in params]
    if len(set(names)) != len(names):
        raise ConfigError(f"route template {template!r} names a parameter twice")
    return RouteTemplate(template, re.compile(pattern, re.IGNORECASE | re.DOTALL), params, literals)
