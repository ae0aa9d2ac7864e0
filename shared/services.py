"""The app's services: the run registry, the training container, the file share and the compute
backend, built once per process from the settings and handed to every entry point (the blob trigger
``shared.ingest``, HTTP starts ``shared.run_starts``, the staging queue, the monitor, the API and
cleanup). Tests build their own with ``build_services`` against a stack of their own."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shared.compute_port import ComputeBackend
from shared.registry import RunRegistry
from shared.runspec import SpecContext

if TYPE_CHECKING:  # annotations only: the SDKs are imported when the services are built
    from azure.storage.blob import ContainerClient
    from azure.storage.fileshare import ShareClient

    from shared.settings import Settings


@dataclass
class Services:
    """Everything ingest and monitor talk to, built once from settings (or given by tests)."""

    settings: Settings
    registry: RunRegistry
    container: ContainerClient  # of TRAINING_CONTAINER
    share: ShareClient  # of FILE_SHARE_NAME
    cloud: ComputeBackend  # the training service (shared.compute_port), built by build_services
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def account_key(self) -> str | None:
        key = self.settings.storage.account_key
        return key.get_secret_value() if key is not None else None

    @property
    def spec_context(self) -> SpecContext:
        return SpecContext.from_settings(self.settings)


_services: Services | None = None


_services_lock = threading.Lock()


def build_services(settings: Settings) -> Services:
    """The one place the app's services are built: ingest, the monitor, the API and cleanup all
    receive these (the SDK clients come from shared.sdk_clients, the compute backend from the settings)."""
    from shared import sdk_clients
    from shared.compute_port import build_backend

    return Services(
        settings=settings,
        registry=RunRegistry(sdk_clients.runs_table(settings)),
        container=sdk_clients.training_container(settings),
        share=sdk_clients.share_client(settings),
        cloud=build_backend(settings),
    )


def get_services() -> Services:
    """The app's services from its settings (cached per process; built again when the settings are
    read again, e.g. after ``reset_settings``)."""
    global _services
    from shared.settings import get_settings

    settings = get_settings()
    if _services is None or _services.settings is not settings:
        with _services_lock:
            if _services is None or _services.settings is not settings:
                _services = build_services(settings)
    return _services


def reset_services() -> None:
    global _services
    with _services_lock:
        _services = None
