"""Ports for test stacks: chosen outside the range the OS gives outgoing connections as source ports
(where a port found free may be taken before the server binds it), distinct, and free."""

from __future__ import annotations

import socket

from infra.local.stack import HOST, Ports, _ephemeral_ports, free_ports


def test_ports_for_servers_lie_below_the_ephemeral_range_and_are_distinct_and_free() -> None:
    ephemeral = _ephemeral_ports()
    ports = free_ports(50) + list(Ports.free().__dict__.values())
    assert len(set(ports)) == len(ports)
    assert not [p for p in ports if p in ephemeral or p in Ports().__dict__.values()]
    for port in ports[:10]:
        with socket.socket() as s:
            s.bind((HOST, port))
