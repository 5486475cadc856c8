"""Fixtures for the daemon tests: real sockets on loopback with random ports."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from daemon.config import build_config
from daemon.service import StackingService

#: Bind every socket on a free loopback port.
ANY_PORT = "tcp://127.0.0.1:*"

#: Seconds any test waits for something to happen over a socket.
WAIT = 10.0


@dataclass(frozen=True)
class StandInParams:
    gain: float = 1.0  # the one "live parameter" of the stand-in


@dataclass
class StandInResult:
    admitted: bool
    reason: str | None
    quality: float


@dataclass
class StandInSnapshot:
    image: np.ndarray
    stats: dict[str, Any]
    ap_centres: np.ndarray
    ap_size: int


class SocketMechanicsStandIn:
    """NOT a stacker: a test-only stand-in used only to test the daemon's socket, queue and
    control mechanics. It "stacks" nothing: its snapshot is the mean of the frames given
    (enough to see that frames arrive). Stacking results are tested with the real
    ``live_stack.live.LiveStacker``.

    ``gate``: when given, ``add`` waits for it, to make processing arbitrarily slow.
    Frames with a mean below ``reject_below`` are "rejected" (admitted False).
    ``snapshot_seconds``: how long ``snapshot`` takes (a slow engine).
    """

    def __init__(self, gate: threading.Event | None = None, reject_below: float = -1.0,
                 snapshot_seconds: float = 0.0) -> None:
        self.params = StandInParams()
        self.gate = gate
        self.snapshot_seconds = snapshot_seconds
        self.reject_below = reject_below
        self.shape: tuple[int, ...] | None = None
        self.sum: np.ndarray | None = None
        self.n = 0
        self.calls = 0
        self.timestamps: list[float | None] = []

    def add(self, frame: np.ndarray, timestamp: float | None = None) -> StandInResult:
        self.calls += 1
        if self.gate is not None:
            self.gate.wait()
        if self.shape is not None and frame.shape != self.shape:
            raise ValueError(f"frame of shape {frame.shape}, the stack is {self.shape}")
        self.shape = frame.shape
        self.timestamps.append(timestamp)
        scale = 255.0 if frame.dtype == np.uint8 else 65535.0 if frame.dtype == np.uint16 else 1
        f = frame.astype(np.float64) / scale
        quality = float(f.mean())
        if quality < self.reject_below:
            return StandInResult(False, "quality", quality)
        self.sum = f if self.sum is None else self.sum + f
        self.n += 1
        return StandInResult(True, None, quality)

    def snapshot(self) -> StandInSnapshot | None:
        if self.sum is None:
            return None
        if self.snapshot_seconds:
            threading.Event().wait(self.snapshot_seconds)
        stats = {"frames_seen": self.calls, "admitted": self.n, "dropped": {},
                 "buffer_fill": self.n, "buffer_size": 100, "aps": 1,
                 "quality": {"hist": [self.n], "edges": [0.0, 1.0], "threshold": 0.0},
                 "timings_ms": {"add": 0.1}}
        return StandInSnapshot((self.sum / self.n).astype(np.float32), stats,
                               np.array([[4, 4]]), 8)

    def add_batch(self, frames: list[np.ndarray],
                  timestamps: list[float] | None = None) -> list[StandInResult]:
        """``add`` of each frame, after checking that all of them fit (as the real one)."""
        shape = self.shape or (frames[0].shape if frames else None)
        for i, frame in enumerate(frames):
            if frame.shape != shape:
                raise ValueError(f"frames[{i}] of shape {frame.shape}, the stack is {shape}")
        stamps = timestamps if timestamps is not None else [None] * len(frames)
        return [self.add(f, t) for f, t in zip(frames, stamps, strict=True)]

    def catch_up(self, budget: int) -> bool:
        return False  # it defers nothing

    def close(self) -> None:
        pass  # it has no threads

    def reset(self) -> None:
        self.shape, self.sum, self.n = None, None, 0

    def set_params(self, values: dict[str, Any]) -> None:
        for name, value in values.items():  # all checked before any is applied
            if name not in ("gain",):
                raise ValueError(f"unknown parameter {name!r}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"gain must be a number > 0, got {value!r}")
        for value in values.values():
            self.params = dataclasses.replace(self.params, gain=float(value))


def config_for(tmp_path: Path, **sections: dict[str, Any]) -> Any:
    """A DaemonConfig on random loopback ports writing into tmp_path/out."""
    data: dict[str, dict[str, Any]] = {
        "endpoints": {"ingest": ANY_PORT, "publish": ANY_PORT, "control": ANY_PORT},
        "service": {"publish_interval": 0.1, "status_interval": 0.2, "poll_timeout": 0.02},
        "output": {"directory": str(tmp_path / "out"), "save_interval": 0},
    }
    for name, table in sections.items():
        data.setdefault(name, {}).update(table)
    return build_config(data)


@pytest.fixture
def zctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[Callable[..., StackingService]]:
    """Start a StackingService (stopped at teardown) around a given stacker."""
    started: list[StackingService] = []

    def make(stacker: Any, **sections: dict[str, Any]) -> StackingService:
        svc = StackingService(config_for(tmp_path, **sections), stacker)
        svc.start()
        started.append(svc)
        return svc

    yield make
    for svc in started:
        svc.stop()


@pytest.fixture
def standin_cls() -> type[SocketMechanicsStandIn]:
    """The class of the socket-mechanics stand-in (see its docstring)."""
    return SocketMechanicsStandIn


def _free_port() -> int:
    """A TCP port free on loopback right now (for daemons run as separate processes)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A function returning a TCP port free right now."""
    return _free_port


@pytest.fixture
def endpoints() -> dict[str, str]:
    """Three free loopback endpoints for a daemon process."""
    return {name: f"tcp://127.0.0.1:{_free_port()}" for name in ("ingest", "publish", "control")}


@pytest.fixture
def recv_stack() -> Callable[..., Any]:
    """``recv_stack(sub, pred, timeout=30)``: the first ``stack`` message on the
    subscriber ``sub`` for which ``pred(message)`` holds (AssertionError after
    ``timeout`` seconds)."""
    import time

    def recv(sub: Any, pred: Callable[[Any], bool], timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = sub.recv(timeout=max(0.0, deadline - time.monotonic()))
            if msg is not None and msg.topic == "stack" and pred(msg):
                return msg
        raise AssertionError("no such stack published")

    return recv


@pytest.fixture
def wait_status(zctx: zmq.Context) -> Callable[..., dict[str, Any]]:
    """``wait_status(svc, pred, timeout=30)``: the first status the service publishes for
    which ``pred(status)`` holds (AssertionError after ``timeout`` seconds)."""
    import time

    from daemon.client import Subscriber
    from daemon.protocol import TOPIC_STATUS

    def wait(svc: StackingService, pred: Callable[[dict[str, Any]], bool],
             timeout: float = 30.0) -> dict[str, Any]:
        last = None
        deadline = time.monotonic() + timeout
        with Subscriber(svc.endpoints.publish, topics=(TOPIC_STATUS,), context=zctx) as sub:
            while (left := deadline - time.monotonic()) > 0:
                msg = sub.recv(timeout=left)
                if msg is not None:
                    last = msg.header
                    if pred(last):
                        return last
        raise AssertionError(f"no status matched within {timeout} s; last: {last}")

    return wait


@pytest.fixture
def replay_into() -> Callable[..., None]:
    """``replay_into(ingest, video, *options)``: run ``live-stack source replay VIDEO
    --fps 0 --to INGEST OPTIONS`` as a process to its end (the whole capture sent, or
    AssertionError with its stderr)."""
    import subprocess
    import sys

    def replay(ingest: str, video: Any, *options: str) -> None:
        r = subprocess.run([sys.executable, "-m", "live_stack.cli", "source", "replay",
                            str(video), "--fps", "0", "--to", ingest, *options],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr

    return replay


@pytest.fixture
def indi_server(tmp_path: Path) -> Iterator[Any]:
    """A running indiserver with the CCD simulator (see conftest_indi.py); skips the
    test when indiserver or PyIndi is missing."""
    from conftest_indi import running_indi_server

    with running_indi_server(tmp_path) as server:
        yield server


@pytest.fixture
def start_source(tmp_path: Path) -> Iterator[Any]:
    """A function starting ``live-stack source indi`` processes (stopped after)."""
    from conftest_indi import source_starter

    with source_starter(tmp_path) as start:
        yield start


@pytest.fixture(scope="session")
def small_capture(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A small simulated capture (80 frames of 160x120, 8-bit mono) with its truth."""
    from live_stack.simulate import simulate_capture

    out = tmp_path_factory.mktemp("capture")
    return simulate_capture("moon", frames=80, out_dir=out, width=160, height=120, seed=1)


@pytest.fixture
def daemon_process(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start ``live-stack daemon ARGS`` as a process; killed at teardown if still running."""
    import subprocess
    import sys

    procs: list[subprocess.Popen] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(tmp_path / f"daemon-{len(procs)}.log", "wb")  # noqa: SIM115
        cmd = [sys.executable, "-m", "live_stack.cli", "daemon", *args]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
