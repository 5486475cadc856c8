"""A real ``indiserver`` running ``indi_simulator_ccd`` for the INDI source's tests.

Imported by the ``test_indi*.py`` files (``from conftest_indi import ...``), which wrap
:func:`running_indi_server` and :func:`source_starter` in fixtures. The server
gets a random free port, its own abstract local socket (``-u``) so several servers can
run at once, and its own ``HOME`` so the simulator's saved configuration never touches
the user's. Readiness is taken from indiserver's own ``listening to port`` line (``-v``),
read by a thread that also drains its log into a file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

#: The simulator's device name.
SIM_DEVICE = "CCD Simulator"
#: The simulator's sensor size (its default SIMULATOR_SETTINGS).
SIM_WIDTH, SIM_HEIGHT = 1280, 1024
#: Seconds to wait for indiserver to listen.
START_TIMEOUT = 10.0
#: Seconds to wait for indiserver or a source to exit after a signal.
EXIT_TIMEOUT = 10.0
#: Attempts at finding a free port (another process may take the one we picked).
PORT_ATTEMPTS = 5
#: The simulator's polling period in ms: its exposures finish on this timer, so a short
#: one makes the exposure loop fast.
SIM_POLLING_MS = 50
#: Simulator noise amplitude (ADU), so frames are not flat black.
SIM_NOISE = 3000


def missing_indi() -> str:
    """Why the INDI tests cannot run here, or "" if they can."""
    missing = [tool for tool in ("indiserver", "indi_simulator_ccd", "indi_setprop")
               if shutil.which(tool) is None]
    if missing:
        return (f"{', '.join(missing)} not found: install Debian's indi-bin "
                "(apt-get install indi-bin)")
    if importlib.util.find_spec("PyIndi") is None:
        return "pyindi-client (PyIndi) is not installed: pip install 'live-stack[indi]'"
    return ""


#: Mark for tests that need a real indiserver; skipped only when it truly is missing.
requires_indi = pytest.mark.skipif(bool(missing_indi()), reason=missing_indi() or "ok")


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class IndiServer:
    """An ``indiserver`` with the CCD simulator, started and stopped by the tests."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = 0
        self.log_path = home / "indiserver.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def start(self, port: int | None = None) -> None:
        """Start on ``port`` (a free one if None); raises RuntimeError if it cannot."""
        attempts = 1 if port is not None else PORT_ATTEMPTS
        last = ""
        for _ in range(attempts):
            self.port = port if port is not None else free_port()
            if self._launch():
                return
            last = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"indiserver did not start on port {self.port}:\n{last}")

    def _launch(self) -> bool:
        env = dict(os.environ, HOME=str(self.home))
        cmd = ["indiserver", "-v", "-p", str(self.port),
               "-u", f"/live-stack-test-indi-{os.getpid()}-{self.port}", "indi_simulator_ccd"]
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        listening = threading.Event()
        needle = f"listening to port {self.port}".encode()

        def drain(proc: subprocess.Popen[bytes]) -> None:
            assert proc.stderr is not None
            with proc.stderr, open(self.log_path, "ab") as out:
                for line in proc.stderr:
                    out.write(line)
                    out.flush()
                    if needle in line:
                        listening.set()
            listening.set()  # the process ended: stop waiting

        self._reader = threading.Thread(target=drain, args=(self.proc,), daemon=True)
        self._reader.start()
        listening.wait(START_TIMEOUT)
        if self.proc.poll() is None and listening.is_set():
            return True
        self.kill()
        return False

    def kill(self) -> None:
        """Kill the server (SIGKILL, as in a crash) and wait for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(EXIT_TIMEOUT)
        if self._reader is not None:
            self._reader.join(EXIT_TIMEOUT)
        self.proc = None

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it lingers)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(EXIT_TIMEOUT)
        self.kill()

    def setprop(self, *assignments: str) -> None:
        """Set simulator properties with ``indi_setprop`` (``"CCD Simulator.P.E=V"``)."""
        subprocess.run(["indi_setprop", "-p", str(self.port), "-t", "5", *assignments],
                       check=True, capture_output=True, timeout=START_TIMEOUT)

    def getprop(self, name: str) -> str:
        """One element's value with ``indi_getprop`` (``"CCD Simulator.P.E"``)."""
        out = subprocess.run(["indi_getprop", "-p", str(self.port), "-t", "5", name],
                             check=True, capture_output=True, text=True,
                             timeout=START_TIMEOUT).stdout
        return out.splitlines()[0].partition("=")[2].strip()

    def configure(self, *, bayer: bool = False) -> None:
        """Set the simulator up before a source connects it (fast polling, noise, Bayer)."""
        self.setprop(f"{SIM_DEVICE}.POLLING_PERIOD.PERIOD_MS={SIM_POLLING_MS}",
                     f"{SIM_DEVICE}.SIMULATOR_SETTINGS.SIM_NOISE={SIM_NOISE}")
        if bayer:
            self.setprop(f"{SIM_DEVICE}.SIMULATE_BAYER.INDI_ENABLED=On")


@contextlib.contextmanager
def running_indi_server(tmp_path: Path) -> Iterator[IndiServer]:
    """A running indiserver with the CCD simulator on a random port (stopped after).

    Skips the test if indiserver or PyIndi is missing.
    """
    reason = missing_indi()
    if reason:
        pytest.skip(reason)
    home = tmp_path / "indi-home"
    home.mkdir()
    server = IndiServer(home)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class SourceProcess:
    """``live-stack source indi`` run as a real process (its log kept in a file)."""

    def __init__(self, args: Sequence[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        code = "import sys; from daemon.sources.indi import main; sys.exit(main(sys.argv[1:]))"
        self.proc = subprocess.Popen([sys.executable, "-c", code, *args],
                                     stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; its exit status."""
        return self.proc.wait(timeout)

    def stop(self) -> int:
        """SIGTERM the process and wait for it; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(EXIT_TIMEOUT)
        self._log.close()
        return int(self.proc.returncode)

    def output(self) -> str:
        """What the process logged so far."""
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def source_starter(tmp_path: Path) -> Iterator:
    """A function starting source processes (stopped, and their logs printed, after)."""
    started: list[SourceProcess] = []

    def start(*args: str) -> SourceProcess:
        proc = SourceProcess(list(args), tmp_path / f"source-{len(started)}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
        sys.stderr.write(f"--- {proc.log_path.name} ---\n{proc.output()[-4000:]}\n")


class FrameReceiver:
    """A PULL socket on a random loopback port: what the source pushes arrives here."""

    def __init__(self) -> None:
        import zmq

        self._zmq = zmq
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PULL)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind("tcp://127.0.0.1:*")
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def recv(self, timeout: float):
        """The next ``(header, image)``, or None after ``timeout`` seconds."""
        from daemon.protocol import decode_image

        if not self.socket.poll(int(timeout * 1000)):
            return None
        return decode_image(self.socket.recv_multipart())

    def frames(self, count: int, timeout: float) -> list:
        """``count`` frames, failing the test if they do not come within ``timeout``."""
        import time

        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            remaining = deadline - time.monotonic()
            item = self.recv(max(0.0, remaining)) if remaining > 0 else None
            if item is None:
                raise AssertionError(f"only {len(got)} of {count} frames within {timeout} s")
            got.append(item)
        return got

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()
