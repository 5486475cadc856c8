"""Fixtures of the fault suite: real ``live-stack`` processes, a real daemon, real files.

Every fault is reproduced as the operator meets it: the command is the installed
``live-stack`` console script (the ``live_stack_command`` fixture of ``tests/conftest.py``,
never PATH), the daemon is a ``live-stack daemon`` process on loopback ports picked at
random, and the tests read what the user reads (exit codes, stderr, ``ctl status``) and
what is left on disk.
"""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

#: Seconds a process gets to start (imports included) and answer.
START = 30.0
#: Seconds a test waits for something to happen (a line, a count in status).
WAIT = 20.0
#: Seconds between two ``status`` requests while waiting for a count.
STATUS_PERIOD = 0.05


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A running ``live-stack`` command whose stderr lines are collected by a thread."""

    def __init__(self, cmd: list[str], *, cwd: Path | None = None) -> None:
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=cwd)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.stderr_lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stdout = ""

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.put(line)
        self._lines.put(None)

    def wait_line(self, text: str, timeout: float = START) -> str:
        """The first stderr line (from now on) containing ``text``; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self._lines.get(timeout=max(left, 0.0))
            except queue.Empty:
                raise AssertionError(f"no line with {text!r} within {timeout} s from "
                                     f"{self.cmd}: {self.stderr_lines}") from None
            if line is None:
                self._lines.put(None)
                raise AssertionError(f"{self.cmd} ended (rc {self.proc.poll()}) without a "
                                     f"line with {text!r}: {self.stderr_lines}")
            self.stderr_lines.append(line)
            if text in line:
                return line

    def finish(self, timeout: float = WAIT) -> int:
        """Wait for the process to end; return its exit code (stderr all collected)."""
        rc = self.proc.wait(timeout)  # the commands print little: the pipe never fills
        self.stdout = self.proc.stdout.read() if self.proc.stdout is not None else ""
        self._reader.join(timeout)
        while True:
            line = self._lines.get_nowait() if not self._lines.empty() else None
            if line is None:
                break
            self.stderr_lines.append(line)
        return rc

    @property
    def stderr(self) -> str:
        return "".join(self.stderr_lines)

    def bytes_read(self) -> int:
        """Bytes the process has read with read(2) and its kind so far (Linux ``rchar``)."""
        with open(f"/proc/{self.proc.pid}/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
        raise AssertionError(f"/proc/{self.proc.pid}/io has no rchar")

    def stop(self) -> int:
        """SIGTERM, then wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.finish()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def run_live_stack(live_stack_command: str) -> Iterator[Callable[..., Process]]:
    """Start ``live-stack ARGS...`` as a process; killed at teardown if still running."""
    started: list[Process] = []

    def start(*args: str, cwd: Path | None = None) -> Process:
        p = Process([live_stack_command, *args], cwd=cwd)
        started.append(p)
        return p

    yield start
    for p in started:
        p.kill()


class Daemon:
    """A ``live-stack daemon`` process on free loopback ports, with ``status`` helpers."""

    def __init__(self, process: Process, endpoints: dict[str, str], output: Path) -> None:
        self.process = process
        self.endpoints = endpoints
        self.ingest = endpoints["ingest"]
        self.control = endpoints["control"]
        self.output = output

    def status(self, timeout: float = WAIT) -> dict[str, Any]:
        from daemon.client import control_request

        reply = control_request(self.control, "status", timeout=timeout)
        assert reply["ok"], reply
        return reply["result"]

    def wait_status(self, pred: Callable[[dict[str, Any]], bool], what: str,
                    timeout: float = WAIT) -> dict[str, Any]:
        """The first status for which ``pred`` is true; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        st = self.status()
        while not pred(st):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {st}")
            time.sleep(STATUS_PERIOD)
            st = self.status()
        return st

    def source(self, name: str) -> dict[str, Any]:
        """The status entry of the source whose id starts with ``name``."""
        sources = self.status()["sources"]
        found = [v for k, v in sources.items() if k.startswith(name)]
        assert len(found) == 1, sources
        return found[0]


@pytest.fixture
def start_daemon(run_live_stack: Callable[..., Process]) -> Callable[..., Daemon]:
    """``start_daemon(output, *args)``: a ``live-stack daemon ARGS`` process writing into
    ``output``, on free loopback ports (not waited for: see :meth:`Daemon.status`)."""

    def start(output: Path, *args: str, endpoints: dict[str, str] | None = None) -> Daemon:
        ep = endpoints or {n: f"tcp://127.0.0.1:{_free_port()}"
                           for n in ("ingest", "publish", "control")}
        proc = run_live_stack("daemon", "--ingest", ep["ingest"], "--publish", ep["publish"],
                              "--control", ep["control"], "--output", str(output), *args)
        return Daemon(proc, ep, output)

    return start


@pytest.fixture
def live_daemon(start_daemon: Callable[..., Daemon], tmp_path: Path) -> Iterator[Daemon]:
    """A running daemon (real live stacker), answering ``status``; stopped at teardown."""
    d = start_daemon(tmp_path / "daemon-out", "--save-interval", "0", "--queue-size", "1000")
    d.status(timeout=START)
    yield d
    d.process.stop()


@pytest.fixture(scope="session")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A simulated capture: 60 frames of 160x120, 8-bit mono SER with timestamps."""
    from live_stack.simulate import simulate_capture

    out = tmp_path_factory.mktemp("faults-capture")
    return simulate_capture("moon", frames=60, out_dir=out, width=160, height=120, seed=1)


@pytest.fixture
def start_source(run_live_stack: Callable[..., Process],
                 live_daemon: Daemon) -> Callable[..., Process]:
    """``start_source(KIND, PATH, *options)``: ``live-stack source KIND PATH`` sending to
    the ``live_daemon``, returned once it has started (said "watching" or "replaying")."""

    def start(kind: str, path: Path, *options: str) -> Process:
        p = run_live_stack("source", kind, str(path), "--to", live_daemon.ingest, *options)
        p.wait_line("watching" if kind == "folder" else "replaying")
        return p

    return start


@pytest.fixture
def watched(tmp_path: Path) -> Path:
    """An empty folder for a folder source to watch."""
    folder = tmp_path / "watched"
    folder.mkdir()
    return folder


class FrameFeed:
    """A thread pushing frames to a daemon's ingest, over and over, until :meth:`stop`."""

    def __init__(self, endpoint: str, frames: list[Any], *, fps: float, curve: Any) -> None:
        from daemon.sources import FramePusher

        self._stop = threading.Event()
        self.sent = 0
        self._push = FramePusher(endpoint, source="feed", curve=curve, stop=self._stop)
        self._frames, self._period = frames, 1.0 / fps
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        k = 0
        while not self._stop.wait(self._period):
            if not self._push.send(self._frames[k % len(self._frames)], capture_time=time.time()):
                break
            self.sent += 1
            k += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        self._push.close(flush=0)


@pytest.fixture
def frame_feed() -> Iterator[Callable[..., FrameFeed]]:
    """``frame_feed(endpoint, frames, *, fps=50, curve=None)``: frames pushed in a loop by
    a thread (with capture times of now); stopped at teardown."""
    feeds: list[FrameFeed] = []

    def start(endpoint: str, frames: list[Any], *, fps: float = 50.0,
              curve: Any = None) -> FrameFeed:
        feed = FrameFeed(endpoint, frames, fps=fps, curve=curve)
        feeds.append(feed)
        return feed

    yield start
    for feed in feeds:
        feed.stop()
