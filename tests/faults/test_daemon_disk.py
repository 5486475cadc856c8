"""The daemon's output disk going wrong: read-only, full, nearly full while recording,
the daemon killed; issue 18 items 5, 6 and 7, and the stack history of issue 16.

The disks are real: small tmpfs file systems mounted for the test (full ones give real
``ENOSPC``, read-only ones real ``EROFS``). Mounting needs root, which CI has; elsewhere
those tests are skipped, saying why.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import struct
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.persist import RawRecorder, attach_session_log, detach_session_log, read_index
from live_stack.io import open_source
from live_stack.io.images import read_image
from live_stack.io.ser import FRAME_COUNT_OFFSET, HEADER_SIZE, TIMESTAMP_SIZE, SerReader

#: Seconds between periodic saves in these tests.
SAVE_INTERVAL = "0.3"

#: Bytes written at a time when filling a disk.
FILL_CHUNK = 1 << 16


@pytest.fixture(scope="module")
def frames(capture: Any) -> list[np.ndarray]:
    with open_source(capture.video) as src:
        return [np.array(f) for f in src]


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``mount(size, read_only=False)``: a fresh tmpfs of ``size`` (e.g. ``"4m"``)."""
    mounted: list[Path] = []

    def make(size: str, *, read_only: bool = False) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs (a real full or read-only disk) needs root; CI runs "
                        "as root")
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        opts = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=True)


def _fill(disk: Path) -> Path:
    """Write a file into ``disk`` until it is full (real ENOSPC); return it."""
    filler = disk / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    chunk = b"\xff" * FILL_CHUNK
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)
    return filler


def _check_history(folder: Path, *, killed: int = 0) -> list[dict[str, Any]]:
    """Every stack file readable, each listed once in its session's index, and back.

    A daemon killed between writing a stack file and appending its index line leaves that
    file unlisted: up to ``killed`` such files are allowed, each the newest of the files.
    """
    stacks = sorted(folder.glob("stack-*"))
    records = [r for index in sorted(folder.glob("stacks-*.jsonl")) for r in read_index(index)]
    listed = sorted(r["file"] for r in records)
    assert len(set(listed)) == len(listed) and set(listed) <= {p.name for p in stacks}
    unlisted = [p for p in stacks if p.name not in listed]
    assert len(unlisted) <= killed, unlisted
    for p in unlisted:  # stack-SESSION-NNNN-HHMMSS: the newest of its session
        session, number = p.name[len("stack-"):].rsplit("-", 2)[:2]
        assert all(r["number"] < int(number) for r in records if r["session"] == session)
    for p in stacks:
        image, _ = read_image(p)
        assert image.ndim == 2 and image.size > 0
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    return records


def test_a_read_only_output_folder_is_refused_at_start_in_one_line(
    mount: Callable[..., Path], start_daemon: Callable[..., Any],
) -> None:
    ro = mount("1m", read_only=True)
    d = start_daemon(ro)
    assert d.process.finish() == 1
    assert d.process.stderr == (f"live-stack daemon: error: output.directory {ro}: cannot write "
                                f"there: Read-only file system\n")
    assert list(ro.iterdir()) == []


def test_a_failed_start_leaves_no_session_log_in_a_running_daemons_folder(
    live_daemon: Any, start_daemon: Callable[..., Any],
) -> None:
    before = sorted(live_daemon.output.iterdir())
    assert [p.name for p in before if p.name.startswith("session-")]  # the running one's
    second = start_daemon(live_daemon.output, endpoints=live_daemon.endpoints)
    assert second.process.finish() == 1
    lines = second.process.stderr.splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(r"live-stack daemon: error: cannot bind endpoints\.ingest "
                        r"tcp://127\.0\.0\.1:\d+: Address already in use", lines[0]), lines
    assert sorted(live_daemon.output.iterdir()) == before
    assert live_daemon.status()["state"] == "running"


def test_a_full_disk_shows_in_status_is_logged_once_and_a_stop_still_exits_0(
    mount: Callable[..., Path], start_daemon: Callable[..., Any],
    frame_feed: Callable[..., Any], frames: list[np.ndarray], run_live_stack: Callable,
) -> None:
    disk = mount("2m")
    d = start_daemon(disk, "--save-interval", SAVE_INTERVAL)
    d.status(timeout=30)
    feed = frame_feed(d.ingest, frames)
    d.wait_status(lambda s: s["output"]["saves"] >= 2, "two periodic saves")

    filler = _fill(disk)
    st = d.wait_status(lambda s: (s["output"]["save_error"] or {}).get("count", 0) >= 3,
                       "three failed saves")
    error = st["output"]["save_error"]
    assert re.fullmatch(rf"cannot write stack-{st['session']}-\d{{4}}-\d{{6}}\.tif in {disk}: "
                        r"No space left on device", error["message"]), error
    assert error["first_time"] <= error["time"] and st["state"] == "running"
    saves_while_full = st["output"]["saves"]
    assert st["output"]["disk"]["low"] is True and st["output"]["disk"]["free_mib"] < 1

    ctl = run_live_stack("ctl", "--control", d.control, "save")
    assert ctl.finish() == 1
    assert re.fullmatch(r"live-stack ctl: the daemon answered: save: cannot write "
                        r"stack-\S+\.tif in \S+: No space left on device\n", ctl.stderr)

    summary = run_live_stack("ctl", "--control", d.control, "status")
    assert summary.finish() == 0
    assert re.search(r"^SAVE FAILED \d+ time\(s\), last \d+ s ago: cannot write stack-\S+ "
                     r"in \S+: No space left on device$", summary.stdout, re.M), summary.stdout
    assert re.search(r"^disk: +0 MiB free LOW", summary.stdout, re.M), summary.stdout

    filler.unlink()  # room again: the next periodic save works and clears the error
    st = d.wait_status(lambda s: s["output"]["save_error"] is None
                       and s["output"]["saves"] > saves_while_full, "a save that works")
    _fill(disk)
    d.wait_status(lambda s: s["output"]["save_error"] is not None, "failing again")
    feed.stop()

    assert d.process.stop() == 0
    err = d.process.stderr
    assert "Traceback" not in err and "Logging error" not in err
    # one line per episode of failures (two), however many saves failed
    assert err.count("saving the stack failed: cannot write") == 2, err
    assert "saving works again, after " in err
    assert re.search(r"the final stack could not be saved \(the disk is full\): cannot write "
                     r"\S+ in \S+: No space left on device; the last stack saved is \S+\.tif",
                     err), err
    records = _check_history(disk)
    assert len(records) == st["output"]["saves"] >= 3
    assert {r["reason"] for r in records} == {"periodic"}
    assert [r["number"] for r in records] == list(range(1, len(records) + 1))
    log = next(disk.glob("session-*.log")).read_text()
    assert "Traceback" not in log


def test_recording_stops_cleanly_before_the_disk_is_full_with_a_valid_ser(
    mount: Callable[..., Path], start_daemon: Callable[..., Any],
    frame_feed: Callable[..., Any], frames: list[np.ndarray], tmp_path: Path,
) -> None:
    disk = mount("6m")
    config = tmp_path / "daemon.toml"
    config.write_text("[output]\nrecord = true\nsave_interval = 0\nwarn_free_mib = 4\n"
                      "min_free_mib = 2\n")
    d = start_daemon(disk, "--config", str(config))
    d.status(timeout=30)
    feed = frame_feed(d.ingest, frames, fps=200)
    st = d.wait_status(lambda s: (s["recording"] or {}).get("failed") is not None,
                       "recording stopped", timeout=60)
    rec = st["recording"]
    assert re.fullmatch(r"the disk is nearly full: \d\.\d MiB free, output\.min_free_mib is 2",
                        rec["failed"]), rec
    d.wait_status(lambda s: s["output"]["disk"]["low"] is True, "the low-space warning")
    feed.stop()
    received = d.status()["frames"]["received"]
    assert received > rec["frames"]  # frames came on after it stopped: still stacked
    assert d.process.stop() == 0
    err = d.process.stderr
    assert "Traceback" not in err
    assert re.search(r"the output disk of \S+ has only \d+ MiB free \(output\.warn_free_mib 4\)",
                     err), err
    assert f"raw recording into {rec['path']} stopped after {rec['frames']} frames" in err

    ser = Path(rec["path"])
    frame_bytes = frames[0].nbytes
    n = rec["frames"]
    assert ser.stat().st_size == HEADER_SIZE + n * (frame_bytes + TIMESTAMP_SIZE)
    with SerReader(ser) as src:  # strict: header count = complete frames, trailer intact
        assert len(src) == n > 100
        assert np.array_equal(src[0], frames[0])
        assert np.all(np.diff(src.timestamps()) >= 0)
    assert os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize > 1 << 20  # room was kept
    (stack,) = disk.glob("stack-*.tif")  # the stop save had its room
    assert [r["reason"] for r in _check_history(disk)] == ["stop"]
    assert stack.stat().st_size > 0


def test_a_killed_daemon_leaves_valid_files_and_a_restart_adds_to_them(
    start_daemon: Callable[..., Any], frame_feed: Callable[..., Any],
    frames: list[np.ndarray], tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    d = start_daemon(out, "--record", "--save-interval", SAVE_INTERVAL)
    d.status(timeout=30)
    feed = frame_feed(d.ingest, frames)
    d.wait_status(lambda s: s["output"]["saves"] >= 3, "three saves")
    d.process.kill()  # SIGKILL: no stop save, no trailer
    feed.stop()
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    records = _check_history(out, killed=1)
    assert len(records) >= 3
    (ser,) = out.glob("raw-*.ser")
    frame_bytes = frames[0].nbytes
    n = (ser.stat().st_size - HEADER_SIZE) // frame_bytes  # complete frames on disk
    (count,) = struct.unpack_from("<i", ser.read_bytes(), FRAME_COUNT_OFFSET)
    # the count is rewritten after each frame: a kill in between leaves it one behind
    assert n - 1 <= count <= n and count >= records[-1]["frames_processed"]
    with SerReader(ser, strict=False) as src:
        assert len(src) in (count, n)
        last = len(src) - 1
        assert np.array_equal(src[last], frames[last % len(frames)])

    again = start_daemon(out, "--record", "--save-interval", "0")
    st = again.status(timeout=30)
    assert st["session"] != records[0]["session"]
    feed = frame_feed(again.ingest, frames)
    again.wait_status(lambda s: s["frames"]["processed"] >= 45, "frames in the new session")
    feed.stop()
    assert again.process.stop() == 0
    for name, data in first.items():  # nothing of the killed session changed
        assert (out / name).read_bytes() == data, name
    later = _check_history(out, killed=1)
    assert [r["reason"] for r in later if r["session"] == st["session"]] == ["stop"]
    assert len(list(out.glob("raw-*.ser"))) == 2


def test_the_session_log_on_a_full_disk_says_so_once_and_closes_quietly(
    mount: Callable[..., Path], capfd: pytest.CaptureFixture[str],
) -> None:
    disk = mount("1m")
    path = disk / "session-x.log"
    handler = attach_session_log(path, level=logging.INFO)
    log = logging.getLogger("daemon.test")
    try:
        log.info("before the disk filled")
        _fill(disk)
        for k in range(2000):  # far more than the page the file still had
            log.info("line %d of a session that goes on", k)
    finally:
        detach_session_log(handler)  # the last flush fails too: no exception
    err = capfd.readouterr().err
    assert err == (f"live-stack daemon: the session log {path} cannot be written (No space "
                   f"left on device); its records go only to the other logs from now on\n")
    assert handler.failed == "No space left on device" and handler.dropped > 1000
    assert "before the disk filled" in path.read_text()  # what was written stays


def test_a_recording_write_that_fails_anyway_leaves_whole_frames(
    mount: Callable[..., Path], frames: list[np.ndarray],
) -> None:
    disk = mount("1m")
    rec = RawRecorder(disk, "s", min_free=0)
    for k in range(5):
        rec.write({"layout": "mono", "time": 1.7e9 + k}, frames[k])
    _fill(disk)  # another program fills the disk between two of the guard's measurements
    rec.write({"layout": "mono", "time": 1.7e9 + 5}, frames[5])
    assert rec.failed is not None and rec.failed.startswith("No space left on device (frame 6 ")
    ser = disk / "raw-s.ser"
    assert ser.stat().st_size == HEADER_SIZE + 5 * frames[0].nbytes  # no part of frame 6
    with SerReader(ser) as src:  # strict
        assert len(src) == 5
        assert np.array_equal(src[4], frames[4])
