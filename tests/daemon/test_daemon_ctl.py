"""``live-stack ctl``: a readable status by default, JSON with --json, quiet on a closed
pipe (issue 16)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from daemon.service import StackingService
from daemon.summary import reply_text, status_text


def _ctl(*args: str, stdout: Any = subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "live_stack.cli", "ctl", *args],
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60)


@pytest.fixture
def fed(make_service: Callable[..., StackingService], small_capture: Any,
        replay_into: Callable[..., None], wait_status: Callable[..., Any]) -> StackingService:
    """A daemon with the real live stacker that has stacked a replayed capture."""
    from live_stack.live import LiveParams, LiveStacker

    svc = make_service(LiveStacker(LiveParams()), service={"queue_size": 200})
    replay_into(svc.endpoints.ingest, small_capture.video)
    wait_status(svc, lambda st: st["frames"]["processed"] == small_capture.frames
                and bool(st["stack"]))
    return svc


def test_ctl_status_is_readable_and_json_on_demand(fed: StackingService,
                                                   small_capture: Any) -> None:
    svc = fed
    ctl = svc.endpoints.control
    r = _ctl("--control", ctl, "status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert 8 <= len(lines) <= 20, r.stdout  # a summary, not the whole map
    assert lines[0].startswith("daemon running for ") and svc.session in lines[0]
    n = small_capture.frames
    frames = next(x for x in lines if x.startswith("frames:"))
    assert f"{n} received" in frames and f"{n} stacked" in frames
    assert any(x.startswith("stack:") and "x" in x and "#" in x for x in lines)
    assert any(x.startswith("endpoints:") and ctl in x for x in lines)
    assert not r.stdout.lstrip().startswith("{")
    # every AP of this well-lit capture stacked the asked frames and none fell back
    assert fed.status()["stacker"]["ap_frames"]
    assert not any(x.startswith("APs:") for x in lines), r.stdout
    r = _ctl("--control", ctl, "--json", "status")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)["result"]
    assert st["frames"]["received"] == n and st["endpoints"]["control"] == ctl
    r = _ctl("--control", ctl, "set", "stack_size", "30%")
    assert r.returncode == 0 and r.stdout.strip() == "stack_size = '30%'"
    r = _ctl("--control", ctl, "set", "stack_size", "0%")
    assert r.returncode == 1 and r.stdout == "" and "stack size" in r.stderr


def test_ctl_into_a_closed_pipe_ends_quietly(fed: StackingService) -> None:
    """``ctl status | head``: the reader is gone before ctl writes (no traceback)."""
    svc = fed
    for extra in ([], ["--json"]):
        read, write = os.pipe()
        os.close(read)  # every write into it now fails with EPIPE
        try:
            r = _ctl("--control", svc.endpoints.control, *extra, "status", stdout=write)
        finally:
            os.close(write)
        assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
        assert r.returncode == 0, r.stderr
    r = subprocess.run(["bash", "-c", f"{sys.executable} -m live_stack.cli ctl --control "
                        f"{svc.endpoints.control} --json status | head -n 2"],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.splitlines()[0] == "{" and "Traceback" not in r.stderr


def test_status_text_of_a_fresh_daemon_and_of_faults() -> None:
    st = {"state": "running", "uptime_s": 4000.0, "session": "s1", "segment": 2,
          "diagnosis": {"kind": "alignment", "text": "nothing to stack: why", "fault": True},
          "frames": {"received": 5}, "stack": {}, "output": {"directory": "/o"},
          "recording": {"path": "/o/raw.ser", "frames": 5, "failed": "disk full"}}
    lines = status_text(st, now=0.0).splitlines()
    assert lines[0] == "daemon running for 67 min, session s1, stack 2"
    assert lines[1] == "! nothing to stack: why"
    assert "stack:     none yet" in lines and "saved:     nothing yet (into /o)" in lines
    assert "recording: /o/raw.ser (5 frames, STOPPED: disk full)" in lines
    sources = {"dir": {"frames": 3, "width": 64, "height": 48, "dtype": "uint8",
                       "layout": "mono", "gaps": 0, "skipped_files": 2},
               "cam": {"frames": 9, "width": 64, "height": 48, "dtype": "uint8",
                       "layout": "mono", "gaps": 1, "skipped_files": 0}}
    lines = status_text({**st, "sources": sources}, now=0.0).splitlines()
    assert "source:    cam: 9 frames 64x48 uint8 mono, 1 missed" in lines
    assert ("source:    dir: 3 frames 64x48 uint8 mono, 0 missed, 2 files SKIPPED "
            "(unreadable: the source's log says why)") in lines
    assert reply_text("reset", {"saved": None, "segment": 3}) == "nothing to save; now stack 3"
    assert reply_text("pause", {"state": "paused"}) == "state: paused"


def test_ctl_sets_several_parameters_together(
        make_service: Callable[..., StackingService]) -> None:
    """``ctl set A 1 B 2`` is validated as a whole (issue 14): ``warmup 300`` needs the
    ``buffer_size 400`` given after it, and a bad value among good ones changes nothing."""
    from live_stack.live import LiveParams, LiveStacker

    svc = make_service(LiveStacker(LiveParams()))
    ctl = svc.endpoints.control
    alone = _ctl("--control", ctl, "set", "warmup", "300")  # above the buffer of 200
    assert alone.returncode == 1 and "warmup" in alone.stderr, alone
    r = _ctl("--control", ctl, "set", "warmup", "300", "buffer_size", "400")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "warmup = 300, buffer_size = 400"
    assert (svc.status()["params"]["warmup"], svc.status()["params"]["buffer_size"]) == (300, 400)
    for args, why in ((["buffer_size", "500", "stack_size", "0%"], "stack size"),
                      (["buffer_size", "500", "warmup", "nan"], "warmup")):
        r = _ctl("--control", ctl, "set", *args)  # refused by the daemon
        assert r.returncode == 1 and why in r.stderr, (args, r.stderr)
        assert svc.status()["params"]["buffer_size"] == 400  # nothing of the set applied
    for args, why in ((["buffer_size"], "NAME VALUE"),
                      (["warmup", "50", "warmup", "60"], "twice")):
        r = _ctl("--control", ctl, "set", *args)  # refused before sending: a usage error
        assert r.returncode == 2 and why in r.stderr, (args, r.stderr)


def test_status_text_says_where_the_stack_is_weak() -> None:
    """One line when an AP stacked fewer frames than asked or shifts fell back; none when
    the stack is whole or there is none yet."""
    base = {"state": "running", "uptime_s": 5.0, "frames": {}, "stack": {}, "output": {}}

    def weak(**stacker: Any) -> list[str]:
        text = status_text({**base, "stacker": stacker}, now=0.0)
        return [x for x in text.splitlines() if x.startswith("APs:")]

    assert weak(frames_per_ap=30, ap_frames=[30, 28, 30, 12], ap_fell_back=[3, 0, 9, 0]) == [
        "APs:       4, 2 short of 30 frames, 12 % of shifts fell back (12 of 100)"]
    assert weak(frames_per_ap=30, ap_frames=[30, 29], ap_fell_back=[0, 0]) == [
        "APs:       2, 1 short of 30 frames"]
    assert weak(frames_per_ap=5, ap_frames=[5, 5], ap_fell_back=[0, 1]) == [
        "APs:       2, 10 % of shifts fell back (1 of 10)"]
    assert weak(frames_per_ap=5, ap_frames=[5, 5], ap_fell_back=[0, 0]) == []
    assert weak(frames_per_ap=0, ap_frames=[], ap_fell_back=[]) == []  # warming up
    assert weak() == []  # an older daemon's status
    assert not any(x.startswith("APs:") for x in status_text(base, now=0.0).splitlines())
