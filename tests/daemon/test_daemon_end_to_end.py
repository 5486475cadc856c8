"""End to end with the real live stacker, and the replay source."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from daemon import protocol
from daemon.client import Subscriber, control_request
from daemon.service import StackingService
from daemon.sources import FramePusher
from daemon.sources.replay import ReplayParams, frame_offsets, replay

#: Seconds any test waits for something to happen over a socket.
WAIT = 30.0


def test_replayed_capture_through_the_daemon_matches_the_engine(
    make_service: Callable[..., StackingService], small_capture: Any, zctx: zmq.Context,
    recv_stack: Callable[..., Any], replay_into: Callable[..., None],
) -> None:
    from live_stack.io import open_source
    from live_stack.live import LiveParams, LiveStacker

    svc = make_service(LiveStacker(LiveParams()), service={"queue_size": 200})
    n = small_capture.frames
    with Subscriber(svc.endpoints.publish, topics=(protocol.TOPIC_STACK,), context=zctx) as sub:
        replay_into(svc.endpoints.ingest, small_capture.video, "--original-times")
        msg = recv_stack(sub, lambda m: m.header["meta"]["newest"]["index"] == n - 1)
    st = control_request(svc.endpoints.control, "status", timeout=WAIT, context=zctx)["result"]
    assert st["frames"]["received"] == n and st["frames"]["processed"] == n
    assert sum(st["drops"].values()) == 0 and st["gaps"] == 0
    assert list(st["sources"]) == [f"replay:{Path(small_capture.video).name}"]

    # the engine's own result for the same frames
    engine = LiveStacker(LiveParams())
    with open_source(small_capture.video) as src:
        times = src.timestamps()
        for k, frame in enumerate(src):
            engine.add(frame, timestamp=float(times[k]))
    snap = engine.snapshot()
    assert snap is not None
    assert msg.image.shape == snap.image.shape
    diff = np.abs(msg.image.astype(np.int32) - protocol.stack_to_wire(snap.image))
    assert diff.max() <= 1  # equal up to the float rounding of batched adds
    meta = msg.header["meta"]
    np.testing.assert_array_equal(np.asarray(meta["ap_centres"]), snap.ap_centres)
    assert meta["ap_size"] == snap.ap_size
    assert meta["stats"]["admitted"] == snap.stats["admitted"]
    assert meta["newest"]["time"] == pytest.approx(float(times[-1]))

    # and the stack is a good one
    from live_stack.io.images import read_image
    from live_stack.simulate.score import score

    truth, _ = read_image(small_capture.truth)
    first = score(open_source(small_capture.video)[0].astype(np.float32) / 255, truth)
    stacked = score(protocol.stack_from_wire(msg.image), truth)
    assert stacked.psnr > first.psnr


@pytest.fixture
def pull(zctx: zmq.Context) -> Iterator[tuple[zmq.Socket, str]]:
    """A PULL socket standing in for the daemon's ingest (the sources are tested alone)."""
    sock = zctx.socket(zmq.PULL)
    sock.linger = 0
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close(linger=0)


def _receive(sock: zmq.Socket, n: int, timeout: float = WAIT) -> list[tuple[dict, np.ndarray]]:
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        left = deadline - time.monotonic()
        if left <= 0 or not sock.poll(left * 1000):
            break
        header, array = protocol.decode_image(sock.recv_multipart())
        got.append((header, array.copy()))
    return got


def test_replay_paces_loops_and_counts(pull: tuple[zmq.Socket, str], small_capture: Any,
                                       zctx: zmq.Context) -> None:
    from live_stack.io import open_source

    sock, endpoint = pull
    stop = threading.Event()
    params = ReplayParams(small_capture.video, fps=200, loop=True, count=100)
    t0 = time.time()
    with FramePusher(endpoint, source="r", context=zctx, stop=stop) as push:
        sent = replay(params, push, stop=stop)
    assert sent == 100
    got = _receive(sock, 100)
    assert len(got) == 100
    assert [h["seq"] for h, _ in got] == list(range(100))
    assert [h["meta"]["frame"] for h, _ in got] == list(range(80)) + list(range(20))
    assert [h["meta"]["lap"] for h, _ in got] == [0] * 80 + [1] * 20
    times = np.array([h["time"] for h, _ in got])
    assert times[0] >= t0 and np.all(np.diff(times) > 0)
    assert times[-1] - times[0] == pytest.approx(99 / 200, abs=0.25)  # paced at 200 fps
    with open_source(small_capture.video) as src:
        np.testing.assert_array_equal(got[85][1], src[5])
        assert got[5][0]["meta"]["file_time"] == pytest.approx(float(src.timestamps()[5]))


def test_replay_stops_when_asked(pull: tuple[zmq.Socket, str], small_capture: Any,
                                 zctx: zmq.Context) -> None:
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    with FramePusher(pull[1], context=zctx, stop=stop) as push:
        sent = replay(ReplayParams(small_capture.video, fps=20, loop=True), push, stop=stop)
    assert time.monotonic() - t0 < 2.0
    assert 2 <= sent <= 12


def test_frame_offsets() -> None:
    ts = np.array([10.0, 10.1, 10.3, 10.3, 10.6])
    np.testing.assert_allclose(frame_offsets(ts, 5, None), [0, 0.1, 0.3, 0.301, 0.601])
    np.testing.assert_allclose(frame_offsets(ts, 5, 10.0), [0, 0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(frame_offsets(ts, 5, 0), 0)
    np.testing.assert_allclose(frame_offsets(ts[::-1], 5, None), np.arange(5) / 30.0)
    np.testing.assert_allclose(frame_offsets(None, 3, None), np.arange(3) / 30.0)


@pytest.mark.parametrize(("args", "code", "words"), [
    (["/nonexistent/video.ser"], 1, "/nonexistent/video.ser"),
    (["x.ser", "--fps", "-1"], 2, "fps must be"),
    (["x.ser", "--to", "nowhere"], 2, "--to must look like"),
])
def test_replay_errors_are_named(args: list[str], code: int, words: str) -> None:
    r = subprocess.run([sys.executable, "-m", "live_stack.cli", "source", "replay", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == code
    assert words in r.stderr


def test_source_dispatch(tmp_path: Path) -> None:
    from daemon.cli import source_main

    assert source_main(["nonsense"]) == 2
    cfg = tmp_path / "s.toml"
    cfg.write_text('[source]\nkind = "replay"\nargs = ["/nonexistent.ser"]\n')
    assert source_main(["--config", str(cfg)]) == 1  # dispatched; the file is missing
    cfg.write_text('[source]\nkind = "replay"\nargs = "x"\n')
    assert source_main(["--config", str(cfg)]) == 2
    cfg.write_text('[source]\nkind = "replay"\nextra = 1\n')
    assert source_main(["--config", str(cfg)]) == 2
