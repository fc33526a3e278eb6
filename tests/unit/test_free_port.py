"""`free_port` never hands out a port an outgoing connection may take meanwhile."""

from __future__ import annotations

import socket

from demo import stubs


def test_free_ports_lie_below_the_ephemeral_range_are_bindable_and_never_repeat() -> None:
    low = stubs._ephemeral_low()
    ports = [stubs.free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(1024 <= p < low for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))
