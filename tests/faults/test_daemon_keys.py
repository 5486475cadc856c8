"""CURVE keys changed while the daemon runs, and sources without a valid key
(issue 18 item 10).

A real daemon with CURVE on (its ZAP authenticator), real clients (``live-stack ctl``,
``source replay``, ``source folder``, a pusher) with real key files, on loopback.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq.auth

from daemon import protocol
from daemon.client import NoAnswer, Subscriber, control_request
from daemon.security import AUTHORIZED_DIR, ClientCurve, make_keys
from live_stack.io import open_source
from live_stack.io.images import write_image

#: Seconds a ctl that should get no answer waits.
NO_ANSWER = 3.0

#: Seconds to wait for a control reply that should come.
WAIT = 10.0

#: Seconds without a status message that show a subscriber was cut off (the daemon
#: publishes one a second).
STATUS_SILENCE = 3.0


@pytest.fixture(scope="module")
def frames(capture: Any) -> list[np.ndarray]:
    with open_source(capture.video) as src:
        return [np.array(f) for f in src]


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """``live-stack keys`` folder: the daemon's pair, ``client`` (authorised) and ``late``
    (made, but not yet authorised)."""
    d = tmp_path / "keys"
    make_keys(d)
    make_keys(d, client="late", server=False)
    (d / AUTHORIZED_DIR / "late.key").unlink()
    return d


@pytest.fixture
def curve_daemon(start_daemon: Callable[..., Any], keys: Path, tmp_path: Path) -> Any:
    d = start_daemon(tmp_path / "out", "--save-interval", "0",
                     "--server-secret-key", str(keys / "server.key_secret"),
                     "--authorized-clients", str(keys / AUTHORIZED_DIR))
    d.late = ClientCurve(str(keys / "server.key"), str(keys / "late.key_secret"))
    d.client = ClientCurve(str(keys / "server.key"), str(keys / "client.key_secret"))
    d.status = lambda timeout=WAIT, curve=d.client: _status(d, curve, timeout)
    d.status(timeout=30)
    yield d
    d.process.stop()


def _status(d: Any, curve: ClientCurve, timeout: float) -> dict[str, Any]:
    reply = control_request(d.control, "status", timeout=timeout, curve=curve)
    assert reply["ok"], reply
    return reply["result"]


def _ctl_status(run_live_stack: Callable[..., Any], d: Any, keys: Path) -> Any:
    p = run_live_stack("ctl", "--control", d.control, "--keys", str(keys),
                       "--timeout", str(NO_ANSWER), "--json", "status")
    p.finish()
    return p


def test_a_removed_key_is_refused_and_a_new_one_accepted_without_a_restart(
    curve_daemon: Any, keys: Path, run_live_stack: Callable[..., Any],
    frame_feed: Callable[..., Any], frames: list[np.ndarray],
) -> None:
    d = curve_daemon
    assert _ctl_status(run_live_stack, d, keys).proc.returncode == 0  # ctl takes --keys
    feed = frame_feed(d.ingest, frames, curve=d.client)
    d.wait_status(lambda s: s["frames"]["received"] >= 10, "frames from the client")
    with pytest.raises(NoAnswer):  # "late" is not authorised yet
        d.status(curve=d.late, timeout=NO_ANSWER)

    # a new key: accepted at once, no restart
    shutil.copy(keys / "late.key", keys / AUTHORIZED_DIR / "late.key")
    assert d.status(curve=d.late)["state"] == "running"

    # subscribers of both keys receive the status
    viewer = Subscriber(d.endpoints["publish"], topics=(protocol.TOPIC_STATUS,), curve=d.client)
    other = Subscriber(d.endpoints["publish"], topics=(protocol.TOPIC_STATUS,), curve=d.late)
    assert viewer.recv(WAIT) is not None and other.recv(WAIT) is not None

    # the client's key removed: its open connection is cut off, a new one refused
    d.status = lambda timeout=WAIT, curve=d.late: _status(d, curve, timeout)
    (keys / AUTHORIZED_DIR / "client.key").unlink()
    st = d.wait_status(lambda s: s["drops"].get("unauthorised", 0) >= 5,
                       "the removed key's frames refused")
    received = st["frames"]["received"]
    st = d.wait_status(lambda s: s["drops"]["unauthorised"] >= 20, "more refused")
    assert st["frames"]["received"] == received  # none of them taken
    ctl = _ctl_status(run_live_stack, d, keys)
    assert ctl.proc.returncode == 3 and "no answer" in ctl.stderr
    assert d.status()["curve_refused"] >= 21
    feed.stop()
    # the publisher was bound again: the removed key's viewer gets nothing more, the
    # other one reconnected and goes on
    while viewer.recv(0.0) is not None:  # what was queued before
        pass
    assert viewer.recv(STATUS_SILENCE) is None
    while other.recv(0.0) is not None:
        pass
    assert other.recv(WAIT) is not None
    viewer.close()
    other.close()

    # and back: the same key is accepted again
    shutil.copy(keys / "client.key", keys / AUTHORIZED_DIR / "client.key")
    assert _ctl_status(run_live_stack, d, keys).proc.returncode == 0
    assert d.process.stop() == 0
    err = d.process.stderr
    refused_key = zmq.auth.load_certificate(keys / "client.key")[0].decode()
    assert f"refused a message from client key {refused_key}: it was removed from" in err
    assert re.search(rf"refused a CURVE handshake: client key {re.escape(refused_key)} is not in "
                     rf"\S+{AUTHORIZED_DIR}", err), err
    assert "authorised client keys in" in err and "1 added, 0 removed" in err
    assert "0 added, 1 removed" in err
    assert "publisher bound again on" in err and "did not close" not in err
    # rate-limited: a few warnings, not one per refused frame
    assert err.count("refused a") <= 4, err


def test_sources_without_an_authorised_key_say_their_frames_do_not_arrive(
    curve_daemon: Any, keys: Path, tmp_path: Path, run_live_stack: Callable[..., Any],
    capture: Any,
) -> None:
    d = curve_daemon
    stranger = tmp_path / "stranger"  # the daemon's public key, a client key it never saw
    stranger.mkdir()
    shutil.copy(keys / "server.key", stranger / "server.key")
    zmq.auth.create_certificates(stranger, "client")
    replay = run_live_stack("source", "replay", str(capture.video), "--to", d.ingest,
                            "--fps", "100", "--keys", str(stranger))
    line = replay.wait_line("no handshake with the daemon")  # at once, not after 5 s
    assert re.search(r"WARNING .*no handshake with the daemon at \S+ completed: the daemon "
                     r"refused this client's key \(is it in the daemon's authorized_clients "
                     r"folder\?\); the frames sent wait here and do not arrive", line), line
    # it waits (the key may be authorised later); stopped, it says what never arrived
    assert replay.stop() in (0, 1)
    # frames queued before the refusal are said not to have arrived (none may have been)
    queued = re.search(r"WARNING .*none of the \d+ frames sent reached the daemon at \S+: "
                       r"the daemon refused this client's key", replay.stderr)
    assert queued or "sent 0 frames" in replay.stderr, replay.stderr
    assert "Traceback" not in replay.stderr
    assert d.status()["frames"]["received"] == 0

    # the same source with the right keys: its frames arrive, and nothing is said
    ok = run_live_stack("source", "replay", str(capture.video), "--to", d.ingest, "--fps",
                        "100", "--keys", str(keys))
    assert ok.finish(timeout=30) == 0
    assert "handshake" not in ok.stderr and "reached" not in ok.stderr
    d.wait_status(lambda s: s["frames"]["received"] == 60, "the 60 frames")

    # source folder takes --keys too
    watched = tmp_path / "watched"
    watched.mkdir()
    write_image(watched / "a.png", np.full((120, 160), 0.5, np.float32))
    folder = run_live_stack("source", "folder", str(watched), "--to", d.ingest, "--keys",
                            str(keys), "--state", str(tmp_path / "state.json"), "--settle", "0.1")
    d.wait_status(lambda s: s["frames"]["received"] == 61, "the folder's frame")
    assert folder.stop() == 0
