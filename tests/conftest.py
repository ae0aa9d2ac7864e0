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
