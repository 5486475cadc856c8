"""The daemon as a process, with the real live stacker: signals, crashes, ctl, systemd."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.client import control_request
from daemon.sources import FramePusher

#: Seconds a daemon process gets to start (imports included) and answer.
START = 30.0

#: Seconds any test waits for something to happen over a socket.
WAIT = 15.0


def _frames(capture: Any) -> tuple[list[np.ndarray], np.ndarray]:
    from live_stack.io import open_source

    with open_source(capture.video) as src:
        return list(src), src.timestamps()


def _status(control: str, timeout: float = WAIT) -> dict[str, Any]:
    reply = control_request(control, "status", timeout=timeout)
    assert reply["ok"], reply
    return reply["result"]


def _wait_status(control: str, pred: Callable[[dict[str, Any]], bool], what: str) -> dict:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        st = _status(control)
        if pred(st):
            return st
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: {st}")


def _daemon_args(endpoints: dict[str, str], out: Path, *extra: str) -> list[str]:
    return ["--ingest", endpoints["ingest"], "--publish", endpoints["publish"],
            "--control", endpoints["control"], "--output", str(out),
            "--publish-interval", "0.1", "--queue-size", "100", *extra]


def _push(endpoint: str, frames: list[np.ndarray], times: np.ndarray) -> None:
    with FramePusher(endpoint, source="test") as push:
        for f, t in zip(frames, times, strict=True):
            assert push.send(f, capture_time=float(t))


def test_sigterm_saves_the_stack_and_stops_within_2s(
    daemon_process: Callable[..., subprocess.Popen], endpoints: dict[str, str],
    small_capture: Any, tmp_path: Path,
) -> None:
    from live_stack.io.images import read_image

    out = tmp_path / "out"
    proc = daemon_process(*_daemon_args(endpoints, out, "--save-interval", "0"))
    _status(endpoints["control"], timeout=START)
    frames, times = _frames(small_capture)
    _push(endpoints["ingest"], frames, times)
    # wait for a published stack that contains the last frame (one published while the
    # last frames were still being stacked may be cropped differently)
    st = _wait_status(endpoints["control"],
                      lambda s: s["frames"]["processed"] == len(frames) and s["stack"]
                      and s["stack"].get("newest_index") == len(frames) - 1,
                      "all frames stacked and a stack of them published")
    assert not list(out.glob("stack-*"))  # save_interval 0: nothing saved yet
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(10)
    assert time.monotonic() - t0 < 2.0
    assert rc == 0
    saved = list(out.glob("stack-*.tif"))
    assert len(saved) == 1
    image, meta = read_image(saved[0])
    assert image.shape == (st["stack"]["height"], st["stack"]["width"])
    assert meta["frames_processed"] == len(frames)
    log = next(out.glob("session-*.log")).read_text()
    assert "daemon stopped" in log and "stack saved" in log


def test_sigkill_then_restart_leaves_readable_stack_and_recording(
    daemon_process: Callable[..., subprocess.Popen], endpoints: dict[str, str],
    small_capture: Any, tmp_path: Path,
) -> None:
    from live_stack.io.images import read_image
    from live_stack.io.ser import SerReader

    out = tmp_path / "out"
    args = _daemon_args(endpoints, out, "--save-interval", "0.2", "--record")
    proc = daemon_process(*args)
    _status(endpoints["control"], timeout=START)
    frames, times = _frames(small_capture)
    _push(endpoints["ingest"], frames, times)
    _wait_status(endpoints["control"],
                 lambda s: s["frames"]["processed"] == len(frames)
                 and s["output"]["last_saved"] is not None
                 and s["recording"]["frames"] == len(frames), "a save and the recording")
    proc.kill()
    proc.wait(10)

    stack_file = next(out.glob("stack-*.tif"))
    image, meta = read_image(stack_file)
    assert image.ndim == 2 and image.size > 0 and meta["frames_admitted"] > 0
    raw = next(out.glob("raw-*.ser"))
    # no trailer was written: read the complete frames the header counts
    with SerReader(raw, strict=False) as src:
        assert len(src) == len(frames)
        np.testing.assert_array_equal(src[0], frames[0])
        np.testing.assert_array_equal(src[len(frames) - 1], frames[-1])
    # a frame cut in half by a crash is ignored
    with raw.open("ab") as fh:
        fh.write(b"\0" * (frames[0].size // 2))
    with SerReader(raw, strict=False) as src:
        assert len(src) == len(frames)

    # the restarted daemon starts a new session and leaves the old files alone
    before = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    proc2 = daemon_process(*args)
    st = _status(endpoints["control"], timeout=START)
    assert st["frames"]["received"] == 0 and st["session"] not in stack_file.name
    _push(endpoints["ingest"], frames[:10], times[:10])
    _wait_status(endpoints["control"], lambda s: s["frames"]["processed"] == 10, "10 frames")
    reply = control_request(endpoints["control"], "shutdown", timeout=WAIT)
    assert reply["ok"]
    assert proc2.wait(10) == 0
    for p, mtime in before.items():
        assert p.stat().st_mtime_ns == mtime, p
    with SerReader(next(p for p in out.glob("raw-*.ser") if p not in before)) as src:
        assert len(src) == 10 and src.timestamps() is not None
        np.testing.assert_allclose(src.timestamps(), times[:10], atol=1e-6)


def _ctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "live_stack.cli", "ctl", "--json", *args],
                          capture_output=True, text=True, timeout=60)


def test_ctl_command(daemon_process: Callable[..., subprocess.Popen],
                     endpoints: dict[str, str], tmp_path: Path) -> None:
    proc = daemon_process(*_daemon_args(endpoints, tmp_path / "out"))
    _status(endpoints["control"], timeout=START)
    ep = ["--control", endpoints["control"]]

    r = _ctl(*ep, "status")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["result"]["state"] == "running"

    r = _ctl(*ep, "set", "stack_size", "30%")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"ok": True, "result": {"name": "stack_size",
                                                          "value": "30%"}}
    r = _ctl(*ep, "set", "buffer_size", "100")  # a JSON number
    assert r.returncode == 0 and json.loads(r.stdout)["result"]["value"] == 100

    r = _ctl(*ep, "set", "no_such_parameter", "1")
    assert r.returncode == 1
    assert json.loads(r.stdout)["ok"] is False and "no_such_parameter" in r.stderr
    r = _ctl(*ep, "set", "buffer_size", "-5")
    assert r.returncode == 1 and "buffer_size" in json.loads(r.stdout)["error"]

    r = _ctl(*ep, "save")  # nothing stacked yet
    assert r.returncode == 1 and "no stack" in r.stderr

    r = _ctl(*ep, "set", "stack_size")
    assert r.returncode == 2 and "NAME VALUE" in r.stderr
    r = _ctl(*ep, "bogus")
    assert r.returncode == 2

    r = _ctl(*ep, "shutdown")
    assert r.returncode == 0 and json.loads(r.stdout)["result"] == {"stopping": True}
    assert proc.wait(10) == 0

    r = _ctl(*ep, "--timeout", "0.5", "status")
    assert r.returncode == 3
    assert f"no answer from a daemon at {endpoints['control']}" in r.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--ingest", "tcp://0.0.0.0:5555"], "endpoints.ingest.*CURVE"),
        (["--queue-size", "0"], "service.queue_size"),
        (["--set", "no_such_parameter=3"], "no_such_parameter"),
        (["--set", "buffer_size=abc"], "buffer_size"),
        (["--config", "/nonexistent/d.toml"], "cannot read config file"),
    ],
)
def test_bad_daemon_options_are_named(args: list[str], words: str) -> None:
    r = subprocess.run([sys.executable, "-m", "live_stack.cli", "daemon", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert pytest.importorskip("re").search(words, r.stderr), r.stderr


def test_systemd_readiness_and_watchdog(daemon_process: Callable[..., subprocess.Popen],
                                        endpoints: dict[str, str], tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(path)
        notify.settimeout(START)
        env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
        proc = daemon_process(*_daemon_args(endpoints, tmp_path / "out"), env=env)
        ready = notify.recv(1000).decode()
        assert ready.startswith("READY=1") and endpoints["ingest"] in ready
        # the daemon answers as soon as it said it is ready
        assert control_request(endpoints["control"], "status", timeout=2.0)["ok"]
        notify.settimeout(WAIT)
        assert notify.recv(100) == b"WATCHDOG=1"
        assert notify.recv(100) == b"WATCHDOG=1"
        proc.send_signal(signal.SIGTERM)
        msgs = []
        while (m := notify.recv(100)) != b"STOPPING=1":
            msgs.append(m)
        assert set(msgs) <= {b"WATCHDOG=1"}
        assert proc.wait(10) == 0


def test_a_daemon_bound_beyond_loopback_needs_and_uses_curve(
    daemon_process: Callable[..., subprocess.Popen], tmp_path: Path,
    free_port: Callable[[], int],
) -> None:
    from daemon.security import ClientCurve, make_keys

    keys = make_keys(tmp_path / "keys")
    ports = [free_port() for _ in range(3)]
    args = ["--ingest", f"tcp://0.0.0.0:{ports[0]}", "--publish", f"tcp://0.0.0.0:{ports[1]}",
            "--control", f"tcp://0.0.0.0:{ports[2]}", "--output", str(tmp_path / "out")]
    r = subprocess.run([sys.executable, "-m", "live_stack.cli", "daemon", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "CURVE" in r.stderr
    daemon_process(*args, "--server-secret-key", str(keys.server_secret),
                   "--authorized-clients", str(keys.authorized_clients))
    control = f"tcp://127.0.0.1:{ports[2]}"
    curve = ClientCurve(str(keys.server_public), str(keys.client_secret))
    reply = control_request(control, "status", timeout=START, curve=curve)
    assert reply["ok"] and reply["result"]["curve"] is True
    r = _ctl("--control", control, "--timeout", "1", "shutdown")  # no keys: refused
    assert r.returncode == 3
    r = _ctl("--control", control, "--server-key", str(keys.server_public), "--client-key",
             str(keys.client_secret), "status")
    assert r.returncode == 0 and json.loads(r.stdout)["result"]["state"] == "running"
