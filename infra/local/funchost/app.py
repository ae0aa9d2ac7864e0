"""Load `function_app.py` and read each function's trigger from the app's own metadata
(`FunctionApp.get_functions()`), the way the Python worker indexes a v2-model app."""

from __future__ import annotations

import importlib.util
import inspect
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import azure.functions as func
from azure.functions.decorators.function_app import FunctionRegister

from .config import ConfigError

SUPPORTED_TRIGGERS = ("httpTrigger", "blobTrigger", "timerTrigger", "queueTrigger")


@dataclass
class FunctionSpec:
    """One indexed function: its name, handler, trigger binding and the other bindings."""

    name: str
    handler: Callable[..., Any]
    trigger: dict[str, Any]
    bindings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def trigger_type(self) -> str:
        return str(self.trigger.get("type"))

    @property
    def function_id(self) -> str:
        """The id the real host uses in receipts, poison messages and timer status paths."""
        return f"Host.Functions.{self.name}"

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.handler)

    @property
    def parameters(self) -> dict[str, inspect.Parameter]:
        return dict(inspect.signature(self.handler).parameters)

    def annotation(self, arg_name: str) -> Any:
        """The handler's type annotation of one argument, with string annotations resolved."""
        try:
            hints = inspect.get_annotations(self.handler, eval_str=True)
        except Exception:
            hints = inspect.get_annotations(self.handler)
        return hints.get(arg_name)


def _import_app_module(app_dir: Path) -> ModuleType:
    path = app_dir / "function_app.py"
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    spec = importlib.util.spec_from_file_location("function_app", path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["function_app"] = module
    spec.loader.exec_module(module)
    return module


def disabled(name: str, settings: dict[str, str]) -> bool:
    """`AzureWebJobs.<name>.Disabled` set to true disables a function, as in Azure."""
    return str(settings.get(f"AzureWebJobs.{name}.Disabled", "")).strip().lower() in ("true", "1")


def load_functions(app_dir: Path) -> list[FunctionSpec]:
    """Import the app and index its functions; unsupported trigger kinds are an error naming them."""
    module = _import_app_module(app_dir)
    apps = [v for v in vars(module).values() if isinstance(v, FunctionRegister)]
    if not apps:
        raise ConfigError(f"{app_dir / 'function_app.py'} defines no azure.functions.FunctionApp")
    if len(apps) > 1:
        raise ConfigError(f"{app_dir / 'function_app.py'} defines {len(apps)} FunctionApp objects; one only")
    specs: list[FunctionSpec] = []
    for function in apps[0].get_functions():
        bindings = [json.loads(raw) for raw in function.get_raw_bindings()]
        trigger = next((b for b in bindings if str(b.get("type", "")).endswith("Trigger")), None)
        name = function.get_function_name()
        if trigger is None:
            raise ConfigError(f"function {name} has no trigger")
        if trigger["type"] not in SUPPORTED_TRIGGERS:
            raise ConfigError(
                f"function {name}: trigger {trigger['type']} is not supported by the local host "
                f"(supported: {', '.join(SUPPORTED_TRIGGERS)})"
            )
        others = [b for b in bindings if b is not trigger]
        specs.append(FunctionSpec(name, function.get_user_function(), trigger, others))
    return specs


class Context(func.Context):
    """The `context` argument a handler may declare, as the Python worker passes it."""

    def __init__(self, invocation_id: str, function_name: str, function_directory: str) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._function_directory = function_directory

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> Any:
        return None

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def trace_context(self) -> Any:
        return None

    @property
    def retry_context(self) -> Any:
        return None
