"""The service's socket, queue and control mechanics, over real loopback sockets.

These tests use ``SocketMechanicsStandIn`` (see conftest.py), which stacks nothing: they
check how frames move, how drops are counted, how control requests are answered. The
stacking results are checked with the real LiveStacker in test_daemon_end_to_end.py.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from daemon import protocol
from daemon.client import Message, NoAnswer, Subscriber, control_request
from daemon.persist import read_index
from daemon.security import ClientCurve, make_keys
from daemon.service import StackingService
from daemon.sources import FramePusher
from live_stack.io.images import read_image

#: Seconds any test waits for something to happen over a socket.
WAIT = 10.0


def _status(svc: StackingService, **kw: Any) -> dict[str, Any]:
    reply = control_request(svc.endpoints.control, "status", timeout=WAIT, **kw)
    assert reply["ok"], reply
    return reply["result"]


def _wait_for(pred: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait until pred() holds; the waits are on sockets (control requests) inside pred."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.02)


def _frames(n: int, shape: tuple[int, ...] = (16, 16), dtype: Any = np.uint8) -> list[np.ndarray]:
    return [np.full(shape, (10 * (k + 1)) % 250, dtype=dtype) for k in range(n)]


def _recv_topic(sub: Subscriber, topic: str, pred: Callable[[Message], bool] = lambda m: True,
                timeout: float = WAIT) -> Message:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = sub.recv(timeout=max(0.0, deadline - time.monotonic()))
        if msg is not None and msg.topic == topic and pred(msg):
            return msg
    raise AssertionError(f"no {topic} message in {timeout} s")


@pytest.fixture
def svc(make_service: Callable[..., StackingService], standin_cls: type) -> StackingService:
    return make_service(standin_cls())


def test_frames_flow_to_the_stacker_and_the_stack_is_published(svc: StackingService,
                                                              zctx: zmq.Context) -> None:
    frames = _frames(5)
    with Subscriber(svc.endpoints.publish, context=zctx) as sub, \
            FramePusher(svc.endpoints.ingest, source="t", context=zctx) as push:
        for k, f in enumerate(frames):
            assert push.send(f, capture_time=1000.0 + k)
        msg = _recv_topic(sub, "stack", lambda m: m.header["meta"]["newest"]["index"] == 4)
    assert msg.image.dtype == np.uint16 and msg.image.shape == (16, 16)
    mean = np.mean([f / 255.0 for f in frames], axis=0)
    np.testing.assert_allclose(protocol.stack_from_wire(msg.image), mean, atol=1 / 65535)
    meta = msg.header["meta"]
    assert meta["newest"]["seq"] == 4 and meta["newest"]["time"] == 1004.0
    assert meta["ap_centres"] == [[4, 4]] and meta["ap_size"] == 8
    assert meta["stats"]["admitted"] == 5
    st = _status(svc)
    assert st["frames"]["received"] == 5 and st["frames"]["processed"] == 5
    assert st["sources"]["t"]["frames"] == 5 and st["gaps"] == 0
    assert st["recent"]["index"] == [0, 1, 2, 3, 4]
    assert st["stack"]["latency_s"] is not None


def test_status_messages_are_published(svc: StackingService, zctx: zmq.Context) -> None:
    with Subscriber(svc.endpoints.publish, topics=(protocol.TOPIC_STATUS,),
                    context=zctx) as sub:
        first = _recv_topic(sub, "status").header
        second = _recv_topic(sub, "status").header
    assert second["time"] > first["time"]
    for key in ("v", "state", "rates", "frames", "drops", "queue", "buffer", "aps",
                "latency_s", "quality", "recent", "sources", "gaps", "params", "endpoints"):
        assert key in second, key
    assert second["state"] == "running" and second["queue"]["size"] == 1000
    assert second["queue"]["bytes"] == 0
    assert second["params"] == {"gain": 1.0}


def test_a_late_subscriber_gets_the_latest_stack_at_once(svc: StackingService,
                                                         zctx: zmq.Context) -> None:
    with FramePusher(svc.endpoints.ingest, context=zctx) as push:
        for f in _frames(3):
            push.send(f)
    _wait_for(lambda: _status(svc)["stack"].get("newest_index") == 2, "the stack")
    time.sleep(0.3)  # several publish intervals pass without a change: nothing is re-sent
    t0 = time.monotonic()
    with Subscriber(svc.endpoints.publish, topics=(protocol.TOPIC_STACK,),
                    context=zctx) as late:
        msg = _recv_topic(late, "stack", timeout=2.0)
    assert time.monotonic() - t0 < 2.0
    assert msg.header["meta"]["newest"]["index"] == 2


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param([b"\xc1garbage", b"12345678"], id="bad-msgpack"),
        pytest.param([b"only-one-part"], id="one-part"),
        pytest.param([b"a", b"b", b"c"], id="three-parts"),
        pytest.param("short-buffer", id="short-buffer"),
        pytest.param("unknown-dtype", id="unknown-dtype"),
        pytest.param("bad-version", id="bad-version"),
        pytest.param("stack-kind", id="kind-not-frame"),
    ],
)
def test_malformed_messages_are_counted_and_the_daemon_goes_on(
    svc: StackingService, zctx: zmq.Context, parts: Any
) -> None:
    good_header, good_pixels = protocol.encode_image(np.zeros((16, 16), np.uint8))
    header = protocol.unpack(good_header)
    if parts == "short-buffer":
        parts = [good_header, bytes(good_pixels)[:-1]]
    elif parts == "unknown-dtype":
        parts = [protocol.pack({**header, "dtype": "complex64"}), bytes(good_pixels)]
    elif parts == "bad-version":
        parts = [protocol.pack({**header, "v": 2}), bytes(good_pixels)]
    elif parts == "stack-kind":
        parts = [protocol.pack({**header, "kind": "stack"}), bytes(good_pixels)]
    with FramePusher(svc.endpoints.ingest, context=zctx) as push:
        for _ in range(3):
            push.send_raw(parts)
        push.send(np.ones((16, 16), np.uint8))
    _wait_for(lambda: _status(svc)["frames"]["processed"] == 1, "the good frame")
    st = _status(svc)
    assert st["drops"]["malformed"] == 3
    assert st["frames"]["received"] == 1


def test_frames_of_another_size_are_dropped(svc: StackingService, zctx: zmq.Context) -> None:
    with FramePusher(svc.endpoints.ingest, context=zctx) as push:
        push.send(np.ones((16, 16), np.uint8))
        push.send(np.ones((24, 16), np.uint8))
        push.send(np.ones((16, 16, 3), np.uint8))
        push.send(np.ones((16, 16), np.uint16))  # same shape, other dtype
        push.send(np.ones((16, 16), np.uint8))
    _wait_for(lambda: _status(svc)["frames"]["processed"] == 2, "two frames")
    st = _status(svc)
    assert st["drops"]["wrong_size"] == 3 and st["frames"]["received"] == 5


def test_a_flood_is_bounded_and_counted(make_service: Callable[..., StackingService],
                                        zctx: zmq.Context, standin_cls: type) -> None:
    gate = threading.Event()
    stacker = standin_cls(gate=gate)
    svc = make_service(stacker, service={"queue_size": 8, "batch_size": 1})
    n = 300
    try:
        with FramePusher(svc.endpoints.ingest, context=zctx) as push:
            for f in _frames(n, shape=(64, 64), dtype=np.uint16):
                push.send(f)
            _wait_for(lambda: _status(svc)["frames"]["received"] == n, "all frames received")
            st = _status(svc)  # the stacker is stuck on the first frame
            assert st["queue"]["fill"] == 8
            assert st["drops"]["overflow"] == n - 8 - 1
            assert st["frames"]["processed"] == 0
            gate.set()
            _wait_for(lambda: _status(svc)["frames"]["processed"] == 9, "the queue drained")
            # still alive and stacking
            push.send(np.zeros((64, 64), np.uint16))
        _wait_for(lambda: _status(svc)["frames"]["processed"] == 10, "one more frame")
    finally:
        gate.set()
    st = _status(svc)
    assert st["queue"]["fill"] == 0 and st["drops"]["overflow"] == n - 9
    # the frames kept were the newest ones: the first, then the last 8 of the flood
    assert stacker.timestamps[1:9] == sorted(stacker.timestamps[1:9])
    assert st["newest"]["seq"] == n  # the extra frame's seq


def test_the_stacker_catches_up_while_no_frame_waits(
    make_service: Callable[..., StackingService], zctx: zmq.Context, standin_cls: type
) -> None:
    """Deferred stacker work is done in idle time, until the stacker says none is left
    (no busy loop after that), and never while paused."""

    class Deferring(standin_cls):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.left = 0
            self.catch_ups = 0

        def add(self, frame: np.ndarray, timestamp: float | None = None) -> Any:
            self.left = 5  # every frame leaves five steps of work behind
            return super().add(frame, timestamp)

        def catch_up(self, budget: int = 32) -> bool:
            assert budget >= 1
            self.catch_ups += 1
            self.left -= 1
            return self.left > 0

    stacker = Deferring()
    svc = make_service(stacker, service={"batch_size": 1})
    with FramePusher(svc.endpoints.ingest, context=zctx) as push:
        push.send(np.ones((16, 16), np.uint8))
        _wait_for(lambda: stacker.calls == 1 and stacker.left == 0, "the stacker caught up")
        assert stacker.catch_ups == 5
        threading.Event().wait(0.3)
        assert stacker.catch_ups == 5  # nothing left: the loop waits for frames again
        svc.set_paused(True)
        push.send(np.ones((16, 16), np.uint8))
        _wait_for(lambda: _status(svc)["drops"].get("paused", 0) == 1, "the paused drop")
        threading.Event().wait(0.2)
        assert stacker.catch_ups == 5
        svc.set_paused(False)
        push.send(np.ones((16, 16), np.uint8))
        _wait_for(lambda: stacker.left == 0 and stacker.catch_ups == 10, "caught up again")


def test_a_flood_with_batches_accounts_for_every_frame(
    make_service: Callable[..., StackingService], zctx: zmq.Context, standin_cls: type
) -> None:
    gate = threading.Event()
    svc = make_service(standin_cls(gate=gate), service={"queue_size": 4, "batch_size": 4})
    n = 100
    try:
        with FramePusher(svc.endpoints.ingest, context=zctx) as push:
            for f in _frames(n, shape=(32, 32)):
                push.send(f)
            _wait_for(lambda: _status(svc)["frames"]["received"] == n, "all frames received")
            st = _status(svc)
            assert st["queue"]["fill"] <= 4 and st["drops"]["overflow"] >= n - 4 - 4
            gate.set()
            _wait_for(lambda: _status(svc)["queue"]["fill"] == 0, "the queue drained")
    finally:
        gate.set()
    _wait_for(lambda: (lambda s: s["frames"]["processed"] + s["drops"]["overflow"] == n)(
        _status(svc)), "every frame processed or dropped")


def test_sequence_gaps_are_reported(svc: StackingService, zctx: zmq.Context) -> None:
    with FramePusher(svc.endpoints.ingest, source="cam", context=zctx) as push:
        for k, f in enumerate(_frames(6)):
            if k in (2, 3):
                push.seq += 1  # as if frames 2 and 3 were lost on the way
                continue
            push.send(f)
    _wait_for(lambda: _status(svc)["frames"]["processed"] == 4, "four frames")
    st = _status(svc)
    assert st["sources"]["cam"]["gaps"] == 2 and st["gaps"] == 2


def test_every_save_is_a_new_file_in_the_index_and_a_changed_parameter_is_saved_at_stop(
    make_service: Callable[..., StackingService], standin_cls: Any, zctx: zmq.Context,
) -> None:
    svc = make_service(standin_cls(), output={"save_interval": 0.1})
    with FramePusher(svc.endpoints.ingest, context=zctx) as push:
        push.send(np.full((16, 16), 100, np.uint8))
        _wait_for(lambda: _status(svc)["output"]["saves"] == 1, "a periodic save")
        push.send(np.full((16, 16), 200, np.uint8))
        _wait_for(lambda: _status(svc)["output"]["saves"] == 2, "a save of the new stack")
    # the stack does not change: no more periodic files
    time.sleep(0.5)  # five save intervals
    assert _status(svc)["output"]["saves"] == 2
    svc.set_param("gain", 4.0)  # a new parameter, no new frame
    path = svc.stop()
    records = read_index(svc.output_dir / f"stacks-{svc.session}.jsonl")
    assert [r["reason"] for r in records] == ["periodic", "periodic", "stop"]
    assert [r["params"]["gain"] for r in records] == [1.0, 1.0, 4.0]
    assert [r["frames_processed"] for r in records] == [1, 2, 2]
    assert path is not None and records[-1]["file"] == path.name
    assert sorted(p.name for p in svc.output_dir.glob("stack-*")) == [r["file"] for r in records]
    first, _ = read_image(svc.output_dir / records[0]["file"])
    last, _ = read_image(path)
    assert first.mean() == pytest.approx(100 / 255, abs=1e-3)
    assert last.mean() == pytest.approx(150 / 255, abs=1e-3)


def test_control_requests(svc: StackingService, zctx: zmq.Context, tmp_path: Path) -> None:
    ep = svc.endpoints.control

    def ask(cmd: str, **fields: Any) -> dict[str, Any]:
        return control_request(ep, cmd, timeout=WAIT, context=zctx, **fields)

    assert ask("save") == {"ok": False, "error": "save: there is no stack to save yet"}
    assert ask("set", name="gain", value=2) == {"ok": True,
                                                "result": {"name": "gain", "value": 2.0}}
    bad = ask("set", name="nonsense", value=1)
    assert not bad["ok"] and "unknown parameter 'nonsense'" in bad["error"]
    bad = ask("set", name="gain", value=-3)
    assert not bad["ok"] and "gain must be" in bad["error"]
    assert _status(svc)["params"]["gain"] == 2.0

    assert ask("pause")["result"] == {"state": "paused"}
    with FramePusher(svc.endpoints.ingest, context=zctx) as push:
        push.send(np.ones((16, 16), np.uint8))
        _wait_for(lambda: _status(svc)["drops"]["paused"] == 1, "a paused drop")
        assert _status(svc)["state"] == "paused"
        assert ask("resume")["result"] == {"state": "running"}
        push.send(np.ones((16, 16), np.uint8))
        _wait_for(lambda: _status(svc)["frames"]["processed"] == 1, "a frame")

    saved = ask("save")["result"]
    path = Path(saved["path"])
    assert path.is_file() and path.parent == tmp_path / "out"
    assert re.fullmatch(rf"stack-{svc.session}-0001-\d{{6}}\.tif", path.name), path.name
    assert saved["number"] == 1 and Path(saved["index"]).name == f"stacks-{svc.session}.jsonl"
    # an asked-for save always writes a new file, even of the same stack
    again = Path(ask("save")["result"]["path"])
    assert again != path and again.name.startswith(f"stack-{svc.session}-0002-")
    assert np.array_equal(read_image(again)[0], read_image(path)[0])

    reset = ask("reset")["result"]
    assert reset == {"saved": str(again), "segment": 2}  # unchanged: no third file
    assert _status(svc)["segment"] == 2
    with FramePusher(svc.endpoints.ingest, context=zctx) as push:
        push.send(np.ones((24, 24), np.uint8))  # a reset adopts the next frame's size
    _wait_for(lambda: _status(svc)["frames"]["processed"] == 2, "a frame after reset")
    third = Path(ask("save")["result"]["path"])
    assert third.name.startswith(f"stack-{svc.session}-0003-") and third.is_file()
    index = read_index(Path(saved["index"]))
    assert [r["file"] for r in index] == [path.name, again.name, third.name]
    assert [r["segment"] for r in index] == [1, 1, 2]
    assert [r["reason"] for r in index] == ["request"] * 3
    assert index[0]["frames_processed"] == 1 and index[2]["frames_processed"] == 2
    assert index[0]["params"]["gain"] == 2.0
    st = _status(svc)["output"]
    assert st["saves"] == 3 and st["last_saved"] == str(third) and st["save_error"] is None


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param([b"\xc1\xc1"], id="bad-msgpack"),
        pytest.param([protocol.pack([1, 2])], id="not-a-map"),
        pytest.param([protocol.pack({"cmd": "explode"})], id="unknown-command"),
        pytest.param([protocol.pack({"cmd": "status", "x": 1})], id="extra-field"),
        pytest.param([protocol.pack({"cmd": "set", "name": "gain"})], id="missing-value"),
        pytest.param([protocol.pack({"cmd": "status"}), b"more"], id="two-parts"),
        pytest.param([b""], id="empty"),
    ],
)
def test_malformed_control_requests_get_an_error_and_rep_is_not_stuck(
    svc: StackingService, zctx: zmq.Context, raw: list[bytes]
) -> None:
    with zctx.socket(zmq.REQ) as req:
        req.linger = 0
        req.connect(svc.endpoints.control)
        req.send_multipart(raw)
        assert req.poll(WAIT * 1000), "no reply"
        reply = protocol.decode_reply(req.recv())
    assert reply["ok"] is False and reply["error"]
    assert _status(svc)["state"] == "running"  # the REP socket answers the next request


def test_shutdown_request_and_stop_time(svc: StackingService, zctx: zmq.Context) -> None:
    with FramePusher(svc.endpoints.ingest, context=zctx) as push:
        push.send(np.full((16, 16), 100, np.uint8))
    _wait_for(lambda: _status(svc)["frames"]["processed"] == 1, "a frame")
    reply = control_request(svc.endpoints.control, "shutdown", timeout=WAIT, context=zctx)
    assert reply == {"ok": True, "result": {"stopping": True}}
    assert svc.wait(WAIT)
    t0 = time.monotonic()
    path = svc.stop()
    assert time.monotonic() - t0 < 2.0
    from live_stack.io.images import read_image

    image, meta = read_image(path)
    np.testing.assert_allclose(image, 100 / 255, atol=1 / 65535)
    assert meta["frames_admitted"] == 1 and meta["session"] == svc.session
    with pytest.raises(NoAnswer):
        control_request(svc.endpoints.control, "status", timeout=0.3, context=zctx)


def test_a_busy_port_is_a_clear_error(tmp_path: Path, zctx: zmq.Context,
                                      standin_cls: type) -> None:
    from daemon.config import build_config
    from daemon.service import ServiceError

    with zctx.socket(zmq.PULL) as blocker:
        blocker.linger = 0
        port = blocker.bind_to_random_port("tcp://127.0.0.1")
        cfg = build_config({"endpoints": {"ingest": f"tcp://127.0.0.1:{port}",
                                          "publish": "tcp://127.0.0.1:*",
                                          "control": "tcp://127.0.0.1:*"},
                            "output": {"directory": str(tmp_path)}})
        svc = StackingService(cfg, standin_cls())
        with pytest.raises(ServiceError, match=f"endpoints.ingest tcp://127.0.0.1:{port}"):
            svc.start()
        assert svc.stop() is None


def test_curve_refuses_clients_without_an_authorised_key(
    make_service: Callable[..., StackingService], zctx: zmq.Context, tmp_path: Path,
    standin_cls: type,
) -> None:
    keys = make_keys(tmp_path / "keys")
    stranger = make_keys(tmp_path / "stranger")  # a valid key pair the daemon does not know
    svc = make_service(standin_cls(),
                       curve={"server_secret_key": str(keys.server_secret),
                              "authorized_clients": str(keys.authorized_clients)})
    good = ClientCurve(str(keys.server_public), str(keys.client_secret))
    bad = ClientCurve(str(keys.server_public), str(stranger.client_secret))

    # no key at all, and an unknown key: no answer, no frames taken, nothing published
    with pytest.raises(NoAnswer):
        control_request(svc.endpoints.control, "shutdown", timeout=1.0, context=zctx)
    with pytest.raises(NoAnswer):
        control_request(svc.endpoints.control, "shutdown", timeout=1.0, curve=bad,
                        context=zctx)
    # a refused handshake leaves the pusher no pipe: its send waits (the key may be
    # authorised later) until the stop event, which gives up after a second
    give_up = threading.Event()
    timer = threading.Timer(1.0, give_up.set)
    timer.start()
    with FramePusher(svc.endpoints.ingest, curve=bad, context=zctx, stop=give_up) as push:
        push.send(np.ones((16, 16), np.uint8))
        with Subscriber(svc.endpoints.publish, curve=bad, context=zctx) as sub:
            assert sub.recv(timeout=1.0) is None
        push.close(flush=0)

    # the authorised client gets everything
    with FramePusher(svc.endpoints.ingest, curve=good, context=zctx) as push:
        push.send(np.ones((16, 16), np.uint8))
    with Subscriber(svc.endpoints.publish, curve=good, context=zctx) as sub:
        msg = _recv_topic(sub, "status", lambda m: m.header["frames"]["processed"] == 1)
    st = msg.header
    assert st["frames"]["received"] == 1 and st["curve"] is True
    assert not svc.stop_requested.is_set()  # the refused shutdowns did nothing
    reply = control_request(svc.endpoints.control, "status", timeout=WAIT, curve=good,
                            context=zctx)
    assert reply["ok"]


def test_stop_stays_within_2s_with_a_slow_snapshot(
    make_service: Callable[..., StackingService], zctx: zmq.Context, standin_cls: type
) -> None:
    """With an engine whose snapshots take 1.5 s, stop() saves the latest snapshot taken
    rather than wait for a new one, and slow snapshots are published less often."""
    from live_stack.io.images import read_image

    stacker = standin_cls(snapshot_seconds=1.5)
    svc = make_service(stacker, service={"publish_interval": 0.1})
    with FramePusher(svc.endpoints.ingest, context=zctx) as push:
        push.send(np.full((16, 16), 10, np.uint8))
        _wait_for(lambda: _status(svc)["stack"].get("seq") == 1, "a first stack")
        push.send(np.full((16, 16), 30, np.uint8))
        _wait_for(lambda: _status(svc)["frames"]["processed"] == 2, "the second frame")
    t0 = time.monotonic()
    path = svc.stop()
    assert time.monotonic() - t0 < 2.0
    image, meta = read_image(path)
    np.testing.assert_allclose(image, 10 / 255, atol=1 / 65535)  # the first stack
    assert meta["frames_processed"] == 1


def test_an_unusable_output_folder_is_a_clear_error(tmp_path: Path, standin_cls: type) -> None:
    from daemon.config import build_config
    from daemon.service import ServiceError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cfg = build_config({"endpoints": {k: "tcp://127.0.0.1:*"
                                      for k in ("ingest", "publish", "control")},
                        "output": {"directory": str(blocker / "out")}})
    svc = StackingService(cfg, standin_cls())
    with pytest.raises(ServiceError, match="output.directory"):
        svc.start()
    assert svc.stop() is None


def test_stop_stays_within_2s_with_a_stuck_stacker(
    make_service: Callable[..., StackingService], zctx: zmq.Context, standin_cls: type
) -> None:
    gate = threading.Event()
    stacker = standin_cls(gate=gate)
    svc = make_service(stacker)
    try:
        with FramePusher(svc.endpoints.ingest, context=zctx) as push:
            push.send(np.ones((16, 16), np.uint8))
        _wait_for(lambda: stacker.calls == 1, "the stacker to get the frame")
        t0 = time.monotonic()
        assert svc.stop() is None  # nothing to save: the only frame is still being stacked
        assert time.monotonic() - t0 < 2.0
    finally:
        gate.set()
