"""The daemon's small parts: queue, counters, configuration, life cycle, recording, keys."""

from __future__ import annotations

import os
import signal
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from daemon import config as cfg
from daemon.fairlock import FairLock
from daemon.framequeue import DropOldestQueue, QueueClosed
from daemon.lifecycle import StopSignal, SystemdNotifier
from daemon.persist import RawRecorder, new_session, numbered
from daemon.security import make_keys
from daemon.stats import IngestStats

# -- queue ------------------------------------------------------------------------------


def test_queue_drops_oldest_when_full() -> None:
    q: DropOldestQueue[int] = DropOldestQueue(3)
    dropped = [q.put(i) for i in range(5)]
    assert dropped == [[], [], [], [0], [1]]
    assert len(q) == 3
    assert [q.get(timeout=0) for _ in range(3)] == [2, 3, 4]
    assert q.get(timeout=0.01) is None


def test_queue_drops_oldest_beyond_its_bytes() -> None:
    q: DropOldestQueue[str] = DropOldestQueue(100, max_bytes=10)
    assert q.put("a", 4) == [] and q.put("b", 4) == []
    assert q.put("c", 4) == ["a"]  # 12 bytes > 10: the oldest goes
    assert q.nbytes == 8
    assert q.put("big", 9) == ["b", "c"]
    assert q.put("huge", 50) == ["big"]  # the newest stays, even alone above the limit
    assert len(q) == 1 and q.nbytes == 50
    assert q.get(timeout=0) == "huge" and q.nbytes == 0


def test_queue_close_wakes_a_waiting_get() -> None:
    q: DropOldestQueue[int] = DropOldestQueue(2)
    q.put(1)
    q.put(2)
    errors: list[BaseException] = []

    def consume() -> None:
        try:
            while True:
                q.get()
        except QueueClosed as exc:
            errors.append(exc)

    t = threading.Thread(target=consume)
    t.start()
    while len(q):  # the consumer empties the queue, then waits
        q.get(timeout=0.01)
    assert q.close() == 0
    t.join(2)
    assert not t.is_alive() and len(errors) == 1
    with pytest.raises(QueueClosed):
        q.put(3)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_queue_size_is_checked(bad: object) -> None:
    with pytest.raises(ValueError, match="maxsize"):
        DropOldestQueue(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_bytes"):
        DropOldestQueue(4, max_bytes=bad)  # type: ignore[arg-type]


# -- fair lock --------------------------------------------------------------------------


def test_fair_lock_serves_waiters_in_order() -> None:
    lock = FairLock()
    order: list[int] = []
    lock.acquire()
    threads = []
    for k in range(4):
        def take(k: int = k) -> None:
            with lock:
                order.append(k)
        t = threading.Thread(target=take)
        t.start()
        threads.append(t)
        while lock._next != k + 2:  # wait until thread k holds its ticket
            threading.Event().wait(0.001)
    lock.release()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3]


def test_fair_lock_timeout_gives_up_its_turn() -> None:
    lock = FairLock()
    lock.acquire()
    assert lock.acquire(timeout=0.01) is False  # abandoned ticket
    lock.release()
    assert lock.acquire(timeout=1.0) is True  # the abandoned ticket is skipped
    lock.release()


# -- counters ---------------------------------------------------------------------------


def _header(seq: int, source: str = "a") -> dict:
    return {"seq": seq, "source": source, "time": 100.0 + seq, "width": 8, "height": 8,
            "dtype": "uint8", "layout": "mono"}


def test_sequence_gaps_are_counted_per_source() -> None:
    st = IngestStats(recent=4, rate_window=1.0)
    for seq in (0, 1, 2, 5, 6, 10):
        st.on_received(_header(seq, "a"))
    for seq in (0, 1, 3):
        st.on_received(_header(seq, "b"))
    st.on_received(_header(0, "b"))  # restarted
    d = st.as_dict()
    assert d["sources"]["a"]["gaps"] == 2 + 3
    assert d["sources"]["b"]["gaps"] == 1 and d["sources"]["b"]["restarts"] == 1
    assert d["gaps"] == 6 and d["frames"]["received"] == 10


def test_recent_qualities_keep_the_last_n() -> None:
    st = IngestStats(recent=3, rate_window=1.0)
    for k in range(5):
        st.on_processed(_header(k), admitted=k % 2 == 0, reason=None if k % 2 == 0 else "q",
                        quality=k / 10)
    d = st.as_dict()
    assert d["recent"]["index"] == [2, 3, 4]
    assert d["recent"]["quality"] == [0.2, 0.3, 0.4]
    assert d["recent"]["admitted"] == [True, False, True]
    assert d["frames"]["admitted"] == 3 and d["rejected"] == {"q": 2}
    assert d["newest"]["seq"] == 4 and d["newest"]["time"] == 104.0


def test_rates_over_the_window() -> None:
    now = [0.0]
    st = IngestStats(recent=3, rate_window=10.0, clock=lambda: now[0])
    st.sample_rates()
    for k in range(20):
        st.on_received(_header(k))
    for k in range(10):
        st.on_processed(_header(k), admitted=True, reason=None, quality=1.0)
    now[0] = 2.0
    rates = st.sample_rates()
    assert rates == {"received_fps": 10.0, "processed_fps": 5.0}


# -- configuration ----------------------------------------------------------------------


def test_defaults_need_no_file() -> None:
    c = cfg.load_config()
    assert c.endpoints.ingest == "tcp://127.0.0.1:5555"
    assert c.endpoints.publish == "tcp://127.0.0.1:5556"
    assert c.endpoints.control == "tcp://127.0.0.1:5557"
    assert not c.curve.enabled and c.live == {}


def test_file_then_overrides(tmp_path: Path) -> None:
    f = tmp_path / "d.toml"
    f.write_text('[service]\nqueue_size = 8\npublish_interval = 2\n'
                 '[output]\nformat = "png"\n[live]\nsome_param = 3\n')
    c = cfg.load_config(f, overrides={"service.queue_size": 4, "output.record": None})
    assert c.service.queue_size == 4  # flag over file
    assert c.service.publish_interval == 2.0 and isinstance(c.service.publish_interval, float)
    assert c.output.format == "png" and c.output.record is False
    assert c.live == {"some_param": 3}


def test_the_example_file_is_valid() -> None:
    example = Path(__file__).parents[2] / "docs" / "daemon.example.toml"
    c = cfg.load_config(example)
    assert c == cfg.build_config({"live": c.live})  # the example shows the defaults


def test_the_examples_live_parameters_exist_with_those_defaults() -> None:
    import tomllib

    from daemon.cli import make_stacker

    example = Path(__file__).parents[2] / "docs" / "daemon.example.toml"
    text = example.read_text().split("[live]", 1)[1]
    lines = [line[2:].split("#")[0] for line in text.splitlines()
             if line.startswith("# ") and "=" in line.split("#")[1]]
    live = tomllib.loads("\n".join(lines))
    assert {"buffer_size", "threads"} <= set(live)
    stacker = make_stacker(live)  # every name is a parameter, every value valid
    defaults = make_stacker({}).params
    assert stacker.params == defaults  # and the values shown are the defaults


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ("[nope]\na = 1\n", r"unknown section \[nope\]"),
        ("[service]\nqueue_sz = 1\n", "unknown key.*queue_sz"),
        ("[service]\nqueue_size = 0\n", "service.queue_size"),
        ("[service]\nqueue_size = 2.5\n", "service.queue_size must be an integer"),
        ("[service]\npoll_timeout = 1.0\n", "service.poll_timeout"),
        ("[service]\nlog_level = 'loud'\n", "service.log_level"),
        ("[output]\nformat = 'jpg'\n", "output.format"),
        ("[output]\nrecord = 'yes'\n", "output.record"),
        ("[output]\nsave_interval = -1\n", "output.save_interval"),
        ("[endpoints]\ningest = 'http://x'\n", "endpoints.ingest"),
        ("[endpoints]\ningest = 'tcp://127.0.0.1:70000'\n", "out of range"),
        ("[endpoints]\ncontrol = 'tcp://0.0.0.0:5557'\n", "endpoints.control.*CURVE"),
        ("[curve]\nserver_secret_key = 'a'\n", "together"),
        ("[service\n", "not valid TOML"),
    ],
)
def test_bad_config_is_named(tmp_path: Path, toml: str, words: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(toml)
    with pytest.raises(ValueError, match=words) as info:
        cfg.load_config(f)
    assert str(f) in str(info.value)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read config file .*nothere.toml"):
        cfg.load_config(tmp_path / "nothere.toml")


def test_non_loopback_is_allowed_with_curve() -> None:
    c = cfg.build_config({"endpoints": {"ingest": "tcp://*:5555"},
                          "curve": {"server_secret_key": "s", "authorized_clients": "d"}})
    assert c.curve.enabled and c.endpoints.non_loopback() == ["ingest"]


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [("tcp://127.0.0.1:1", True), ("tcp://127.3.2.1:*", True), ("tcp://localhost:5", True),
     ("tcp://[::1]:5", True), ("ipc:///tmp/x", True), ("inproc://x", True),
     ("tcp://0.0.0.0:5", False), ("tcp://*:5", False), ("tcp://192.168.1.2:5", False),
     ("tcp://eth0:5", False)],
)
def test_loopback_detection(endpoint: str, local: bool) -> None:
    assert cfg.is_loopback(endpoint) is local


# -- life cycle -------------------------------------------------------------------------


def test_sd_notify_datagrams(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        server.settimeout(5)
        with SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"}) as n:
            assert n.enabled and n.watchdog_interval == 2.0
            assert n.notify("READY=1")
            assert n.notify("WATCHDOG=1")
        assert server.recv(100) == b"READY=1"
        assert server.recv(100) == b"WATCHDOG=1"


def test_sd_notify_is_a_no_op_outside_systemd() -> None:
    with SystemdNotifier({}) as n:
        assert not n.enabled and n.watchdog_interval is None
        assert n.notify("READY=1") is False


def test_stop_signal_on_sigterm_and_trigger() -> None:
    with StopSignal() as stop:
        assert stop.wait(0.01) is False
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5) is True
        assert stop.signal == signal.SIGTERM
    with StopSignal() as stop:
        threading.Timer(0.05, stop.trigger).start()
        assert stop.wait(5) is True and stop.signal is None
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


# -- persistence ------------------------------------------------------------------------


def test_sessions_and_file_names(tmp_path: Path) -> None:
    s1 = new_session(tmp_path, now=0)
    numbered(tmp_path, "stack", s1, 1, "tif").write_bytes(b"")
    s2 = new_session(tmp_path, now=0)
    assert s1 != s2 and s2.startswith(s1)
    assert numbered(tmp_path, "stack", s1, 1, "tif").name == f"stack-{s1}.tif"
    assert numbered(tmp_path, "raw", s1, 3, "ser").name == f"raw-{s1}-3.ser"


@pytest.mark.parametrize(("dtype", "layout"), [("uint8", "mono"), ("uint16", "RGGB"),
                                               ("uint8", "rgb"), ("float32", "mono")])
def test_recorder_writes_readable_ser(tmp_path: Path, dtype: str, layout: str) -> None:
    from live_stack.io.ser import SerReader

    rng = np.random.default_rng(1)
    shape = (10, 12, 3) if layout == "rgb" else (10, 12)
    if dtype == "float32":
        frames = [rng.random(shape, dtype=np.float32) for _ in range(3)]
    else:
        frames = [rng.integers(0, 200, shape).astype(dtype) for _ in range(3)]
    rec = RawRecorder(tmp_path, "s")
    for k, f in enumerate(frames):
        rec.write({"layout": layout, "time": 1000.0 + k}, f)
    # another size starts a second file
    rec.write({"layout": "mono", "time": 2000.0}, np.zeros((8, 8), np.uint8))
    rec.close()
    assert rec.total == 4 and rec.failed is None
    with SerReader(tmp_path / "raw-s.ser") as src:
        assert len(src) == 3 and src.info.layout == layout
        got = np.stack(list(src))
        ts = src.timestamps()
    if dtype == "float32":
        np.testing.assert_array_equal(got, [np.rint(f * 65535).astype(np.uint16) for f in frames])
    else:
        np.testing.assert_array_equal(got, np.stack(frames))
    np.testing.assert_allclose(ts, [1000.0, 1001.0, 1002.0], atol=1e-6)
    with SerReader(tmp_path / "raw-s-2.ser") as src:
        assert len(src) == 1


def test_recorder_stops_on_a_write_error_without_raising(tmp_path: Path) -> None:
    rec = RawRecorder(tmp_path / "missing-folder", "s")
    rec.write({"layout": "mono", "time": 1.0}, np.zeros((8, 8), np.uint8))
    assert rec.failed is not None and rec.total == 0
    rec.write({"layout": "mono", "time": 1.0}, np.zeros((8, 8), np.uint8))  # no raise
    assert rec.as_dict()["failed"] == rec.failed


# -- keys -------------------------------------------------------------------------------


def test_make_keys(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "k")
    for p in (keys.server_public, keys.server_secret, keys.client_public, keys.client_secret):
        assert p.is_file()
    assert (keys.authorized_clients / "client.key").read_bytes() == keys.client_public.read_bytes()
    assert keys.server_secret.stat().st_mode & 0o077 == 0
    with pytest.raises(ValueError, match="already exist"):
        make_keys(tmp_path / "k")
    more = make_keys(tmp_path / "k", client="laptop", server=False)
    assert (more.authorized_clients / "laptop.key").is_file()
    with pytest.raises(ValueError, match="plain name"):
        make_keys(tmp_path / "k", client="../evil", server=False)


def test_the_service_takes_only_a_whole_stacker(tmp_path: Path) -> None:
    """The live stacker is a :class:`daemon.service.Stacker`; an object lacking some of
    what the service calls is refused at once, naming what is missing."""
    from daemon.service import Stacker, StackingService
    from live_stack.live import LiveStacker

    with LiveStacker() as stacker:
        assert isinstance(stacker, Stacker)

    class Partial:
        params = None

        def add(self, frame, timestamp=None):
            return None

    config = cfg.build_config({"output": {"directory": str(tmp_path / "out")}})
    with pytest.raises(TypeError, match=r"add_batch, catch_up, snapshot, reset, set_params, close"):
        StackingService(config, Partial())
