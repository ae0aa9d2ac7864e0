"""Shared fixtures: one local stack for the whole session, on free ports and in a temporary
directory, started service by service as tests ask for them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra.local.stack import LocalStack, Ports


class SessionStack(LocalStack):
    def ensure(self, *services: str) -> SessionStack:
        """Start each named service that is not running yet (in the stack's dependency order)."""
        missing = [s for s in services if s not in self.processes]
        if missing:
            self.start(missing)
        return self


@pytest.fixture(scope="session")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionStack]:
    stack = SessionStack(data_dir=tmp_path_factory.mktemp("stack"), ports=Ports.free())
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def app_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The local stack's app settings (``local_stack_values``) in the environment, and the settings
    read afresh before and after the test: for unit tests of code that reads ``get_settings()``."""
    from shared.settings import local_stack_values, reset_settings

    for key, value in local_stack_values().items():
        monkeypatch.setenv(key, value)
    reset_settings()
    yield
    reset_settings()
