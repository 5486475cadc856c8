"""indiserver + CCD simulator -> ``live-stack source indi`` -> the real daemon -> a stack.

The daemon is :class:`daemon.service.StackingService` (the ``make_service`` fixture of
conftest.py) around the real :class:`live_stack.live.LiveStacker`. The simulator without
a star catalogue sends noise, so the stack shows that frames went all the way through,
not what it looks like.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest_indi import (
    SIM_DEVICE,
    SIM_HEIGHT,
    SIM_WIDTH,
    IndiServer,
    requires_indi,
)

from daemon.client import Subscriber, control_request
from daemon.protocol import TOPIC_STATUS
from daemon.security import ClientCurve, make_keys
from live_stack.live import LiveParams, LiveStacker

pytestmark = [pytest.mark.indi, requires_indi]


#: Seconds until the first published stack (server, camera, warm-up of the stacker).
FIRST_STACK = 60.0
#: Seconds frames may take to flow again after the INDI server came back.
RECOVERY = 40.0
#: Binning of the simulator's frames (keeps the stacker quick).
BINNING = 4
#: A small stacker: few frames of warm-up.
STACKER = LiveParams(warmup=5, buffer_size=20)


def _status(svc: Any) -> dict[str, Any]:
    reply = control_request(svc.endpoints.control, "status", timeout=10.0)
    assert reply["ok"], reply
    return reply["result"]


def _source_stats(svc: Any) -> dict[str, Any]:
    sources = _status(svc)["sources"]
    indi = {k: v for k, v in sources.items() if k.startswith("indi:")}
    assert len(indi) <= 1, sources
    return next(iter(indi.values()), {"frames": 0})


def _wait_stack(sub: Subscriber, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        msg = sub.recv(timeout=remaining)
        if msg is not None and msg.topic == "stack":
            return msg
    raise AssertionError(f"no stack published within {timeout} s")


def _wait_frames(sub: Subscriber, more_than: int, timeout: float) -> dict[str, Any]:
    """Wait for a status message saying the daemon has more frames from the source."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        msg = sub.recv(timeout=remaining)
        if msg is None or msg.topic != "status":
            continue
        indi = [v for k, v in msg.header["sources"].items() if k.startswith("indi:")]
        if indi and indi[0]["frames"] > more_than:
            return indi[0]
    raise AssertionError(f"the daemon got no frames beyond {more_than} within {timeout} s")


@pytest.mark.parametrize("mode", ["stream", "exposure"])
@pytest.mark.parametrize("bayer", [False, True], ids=["mono", "bayer"])
def test_source_to_daemon_publishes_a_stack(indi_server: IndiServer, start_source: Any,
                                            make_service: Callable[..., Any], mode: str,
                                            bayer: bool) -> None:
    indi_server.configure(bayer=bayer)
    svc = make_service(LiveStacker(STACKER))
    with Subscriber(svc.endpoints.publish) as sub:
        src = start_source("--port", str(indi_server.port), "--device", SIM_DEVICE,
                           "--to", svc.endpoints.ingest, "--mode", mode,
                           "--exposure", "0.001" if mode == "stream" else "0.01",
                           "--binning", str(BINNING))
        msg = _wait_stack(sub, FIRST_STACK)
    height, width = SIM_HEIGHT // BINNING, SIM_WIDTH // BINNING
    stack = msg.image
    assert msg.header["kind"] == "stack"
    assert height // 2 < stack.shape[0] <= height and width // 2 < stack.shape[1] <= width
    stats = _source_stats(svc)
    assert stats["frames"] >= STACKER.warmup
    assert (stats["width"], stats["height"]) == (width, height)
    assert stats["layout"] == ("RGGB" if bayer else "mono")
    assert stats["dtype"] == ("uint8" if mode == "stream" else "uint16")
    assert stats["restarts"] == 0
    assert src.stop() == 0


def test_server_restart_keeps_frames_flowing_to_the_daemon(
        indi_server: IndiServer, start_source: Any, make_service: Callable[..., Any]) -> None:
    indi_server.configure()
    svc = make_service(LiveStacker(STACKER))
    sub = Subscriber(svc.endpoints.publish, topics=(TOPIC_STATUS,))
    try:
        src = start_source("--port", str(indi_server.port), "--device", SIM_DEVICE,
                           "--to", svc.endpoints.ingest, "--mode", "stream",
                           "--exposure", "0.001", "--binning", str(BINNING),
                           "--stall-timeout", "2")
        before = _wait_frames(sub, 3, FIRST_STACK)
        port = indi_server.port
        indi_server.kill()
        assert src.running(), src.output()
        indi_server.start(port)
        indi_server.configure()
        after = _wait_frames(sub, _source_stats(svc)["frames"] + 3, RECOVERY)
    finally:
        sub.close()
    assert after["last_seq"] > before["last_seq"]
    assert after["restarts"] == 0  # the same source went on: its numbering never went back
    assert _status(svc)["state"] == "running"
    assert src.running()
    assert src.stop() == 0


def test_keys_folder_reaches_a_daemon_with_curve(
        indi_server: IndiServer, start_source: Any, make_service: Callable[..., Any],
        tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    svc = make_service(LiveStacker(STACKER),
                       curve={"server_secret_key": str(keys.server_secret),
                              "authorized_clients": str(keys.authorized_clients)})
    indi_server.configure()
    src = start_source("--port", str(indi_server.port), "--device", SIM_DEVICE,
                       "--to", svc.endpoints.ingest, "--keys", str(tmp_path / "keys"),
                       "--binning", str(BINNING), "--exposure", "0.001")
    good = ClientCurve(str(keys.server_public), str(keys.client_secret))
    with Subscriber(svc.endpoints.publish, topics=(TOPIC_STATUS,), curve=good) as sub:
        stats = _wait_frames(sub, 2, FIRST_STACK)
    assert stats["layout"] == "mono" and stats["width"] == SIM_WIDTH // BINNING
    assert src.stop() == 0
