"""The INDI source's PyIndi client (daemon/sources/indi_link.py) against a real indiserver.

Skipped only when indiserver or PyIndi is truly missing.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from conftest_indi import SIM_DEVICE, IndiServer, free_port, requires_indi

pytestmark = [pytest.mark.indi, requires_indi]

#: Seconds to wait for the link to see something.
WAIT = 10.0

#: The start of a BLOB message, as an indiserver killed while sending a frame leaves it.
HALF_A_BLOB = (
    b'<setBLOBVector device="CCD Simulator" name="CCD1" state="Ok" timeout="60" '
    b'timestamp="2026-01-01T00:00:00">\n'
    b'    <oneBLOB name="CCD1" size="81920" enclen="109228" format=".stream">\n'
    + b"q7SsqZ/AqKymprKTsbGqqrGsp7mpsZuvmZ6mr5uPl7ilpqeYqZ+mo7CgsrKYr5Kto6q3" * 100
)


def test_devices_are_seen_again_after_a_connection_cut_mid_message(tmp_path: Path) -> None:
    """A server that dies halfway through a message must not blind the next connection.

    PyIndi's client keeps its XML parser across connections: reused, it took everything
    the restarted server sent as the rest of the cut BLOB and never saw a device again
    (test_survives_server_restart failed whenever indiserver was killed mid-frame).
    """
    from daemon.sources.indi_link import IndiLink

    port = free_port()
    link = IndiLink("localhost", port, queue_size=2, connect_timeout=2.0)
    try:
        # A stand-in server on the port: half a BLOB message, then the connection drops.
        with socket.create_server(("127.0.0.1", port)) as listener:
            assert link.connect()
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(WAIT)
                conn.recv(4096)  # the client's getProperties
                conn.sendall(HALF_A_BLOB)
        assert link.wait(lambda: link.server_losses == 1, WAIT), "the loss was not seen"
        assert not link.server_up

        home = tmp_path / "indi-home"
        home.mkdir()
        server = IndiServer(home)
        server.start(port)  # the real server, restarted on the same port
        try:
            assert link.connect()
            seen = link.wait(lambda: link.prop(SIM_DEVICE, "CONNECTION") is not None, WAIT)
            assert seen, f"devices after reconnecting: {link.devices()}"
            assert link.devices() == [SIM_DEVICE]
            assert link.server_losses == 1  # our own disconnect is not a loss
        finally:
            server.stop()
    finally:
        link.disconnect()
