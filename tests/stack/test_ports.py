"""Ports for test stacks: chosen outside the range the OS gives outgoing connections as source ports
(where a port found free may be taken before the server binds it), distinct, and free."""

from __future__ import annotations

import socket
import subprocess
import sys

from infra.local.stack import HOST, REPO_ROOT, Ports, _ephemeral_ports, free_ports


def test_ports_for_servers_lie_below_the_ephemeral_range_and_are_distinct_and_free() -> None:
    ephemeral = _ephemeral_ports()
    ports = free_ports(50) + list(Ports.free().__dict__.values())
    assert len(set(ports)) == len(ports)
    assert not [p for p in ports if p in ephemeral or p in Ports().__dict__.values()]
    for port in ports[:10]:
        with socket.socket() as s:
            s.bind((HOST, port))


def test_two_processes_never_choose_the_same_port() -> None:
    """Parallel test workers: the ports one process chose stay its own while it lives (without the
    reservation, 300 random picks each from ~17,000 ports overlap about five times)."""
    code = (
        "import sys; from infra.local.stack import free_ports; "
        "print(' '.join(map(str, free_ports(300))), flush=True); sys.stdin.read()"
    )
    other = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        theirs = {int(p) for p in other.stdout.readline().split()}
        assert len(theirs) == 300
        assert not theirs & set(free_ports(300))
    finally:
        other.communicate("", timeout=10)
