"""Issue 18, item 2: a file truncated or rewritten while it is read is an error, not SIGBUS.

The SER reader used to map the file: a capture program truncating it (or re-creating it
in place) while ``reprocess``, ``source replay`` or ``source folder`` read it killed the
process with SIGBUS (exit code 135, no message, nothing written). Each test truncates the
file under a real process at a known point of its reading and checks what the user sees
and what is left.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from watchdog.events import FileOpenedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from live_stack.io.ser import HEADER_SIZE, SerReader, SerWriter

#: Frame size of the simulated capture (tests/faults/conftest.py).
HEIGHT, WIDTH = 120, 160
FRAME_BYTES = HEIGHT * WIDTH
#: Frames left when a file is cut.
KEPT = 20
#: Seconds a test waits for a process to end.
END = 120.0


def _long_ser(capture: Any, path: Path, frames: int) -> list[np.ndarray]:
    """A SER of ``frames`` frames cycling through the capture's; returns the frames."""
    with SerReader(capture.video) as src:
        pool = list(src)
    out = [pool[k % len(pool)] for k in range(frames)]
    with SerWriter(path, width=WIDTH, height=HEIGHT) as w:
        w.write_frames(out, [1.7e9 + k / 50 for k in range(frames)])
    return out


def _cut(path: Path, frames: int) -> None:
    """Truncate in place, as a capture program re-opening the file with O_TRUNC does."""
    os.truncate(path, HEADER_SIZE + frames * FRAME_BYTES)


class _Opened(FileSystemEventHandler):
    """Sets :attr:`event` when a given file is opened (inotify IN_OPEN)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.event = threading.Event()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileOpenedEvent) and os.fsdecode(event.src_path) == self.path:
            self.event.set()


def _bytes_read(pid: int) -> int:
    """Bytes the process has read with read(2) and its kind so far (Linux ``rchar``)."""
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/io has no rchar")


def _wait_reading(pid: int, nbytes: int, timeout: float = 60.0) -> None:
    """Wait until process ``pid`` has read ``nbytes`` more bytes than now.

    A file opened is not yet a file being read: truncated between its open and the size
    check, it is a crash-cut file (stacked from what is left), not one cut while read.
    """
    start = _bytes_read(pid)
    deadline = time.monotonic() + timeout
    while _bytes_read(pid) - start < nbytes:
        assert time.monotonic() < deadline, f"process {pid} did not read {nbytes} bytes"
        time.sleep(0.001)


@pytest.fixture
def when_opened() -> Iterator[Callable[[Path], threading.Event]]:
    """``when_opened(path)``: an event set once some process opens ``path``."""
    observers = []

    def watch(path: Path) -> threading.Event:
        handler = _Opened(path)
        obs = Observer()
        obs.schedule(handler, str(path.parent))
        obs.start()
        observers.append(obs)
        return handler.event

    yield watch
    for obs in observers:
        obs.stop()
        obs.join()


def test_reprocess_of_a_file_truncated_while_read_exits_1_naming_it(
    run_live_stack: Callable[..., Any], capture: Any, tmp_path: Path,
    when_opened: Callable[[Path], threading.Event],
) -> None:
    path = tmp_path / "long.ser"
    _long_ser(capture, path, 1500)
    opened = when_opened(path)
    out = tmp_path / "stack.tif"
    p = run_live_stack("reprocess", str(path), "-o", str(out), "-q")
    assert opened.wait(60), "reprocess never opened the file"
    _wait_reading(p.proc.pid, 100 * FRAME_BYTES)
    _cut(path, KEPT)  # while the pipeline reads its 1500 frames (several passes)
    rc = p.finish(END)
    assert rc == 1, (rc, p.stderr)  # was -7 (SIGBUS), shown by a shell as 135
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith(f"live-stack reprocess: error: {path}: the file shrank while "
                               f"it was read: frame ")
    assert lines[0].endswith(f"the file had {HEADER_SIZE + 1500 * FRAME_BYTES + 1500 * 8} "
                             f"bytes when it was opened and has "
                             f"{HEADER_SIZE + KEPT * FRAME_BYTES} bytes now (truncated or "
                             f"rewritten by another program?)")
    assert not out.exists()
    assert [f.name for f in tmp_path.iterdir()] == ["long.ser"]


def test_replay_of_a_file_truncated_while_played_exits_1_and_the_frames_sent_arrive(
    run_live_stack: Callable[..., Any], live_daemon: Any, capture: Any, tmp_path: Path,
) -> None:
    path = tmp_path / "long.ser"
    _long_ser(capture, path, 100)
    p = run_live_stack("source", "replay", str(path), "--to", live_daemon.ingest,
                       "--fps", "20", "--source-id", "replay-trunc")
    p.wait_line("replaying")
    _cut(path, KEPT)  # frame 20 is due one second later
    rc = p.finish(END)
    assert rc == 1, (rc, p.stderr)
    assert (f"replay source: {path}: the file shrank while it was read: frame {KEPT} ends "
            f"at byte {HEADER_SIZE + (KEPT + 1) * FRAME_BYTES}") in p.stderr
    assert f"; {KEPT} frames were sent to {live_daemon.ingest} before" in p.stderr
    live_daemon.wait_status(lambda s: s["frames"]["received"] == KEPT, f"{KEPT} frames")
    assert live_daemon.source("replay-trunc")["frames"] == KEPT


def test_replay_of_a_file_recreated_under_its_name_plays_the_file_it_opened(
    run_live_stack: Callable[..., Any], live_daemon: Any, capture: Any, tmp_path: Path,
) -> None:
    path = tmp_path / "long.ser"
    _long_ser(capture, path, 40)
    p = run_live_stack("source", "replay", str(path), "--to", live_daemon.ingest,
                       "--fps", "40", "--source-id", "replay-new")
    p.wait_line("replaying")
    path.unlink()  # a capture program starting a new recording of the same name
    _long_ser(capture, path, 3)
    assert p.finish(END) == 0, p.stderr
    assert "sent 40 frames" in p.stderr
    live_daemon.wait_status(lambda s: s["frames"]["received"] == 40, "40 frames")


def test_folder_source_survives_a_file_truncated_while_sent(
    run_live_stack: Callable[..., Any], live_daemon: Any, capture: Any, tmp_path: Path,
) -> None:
    watched = tmp_path / "watched"
    watched.mkdir()
    state = tmp_path / "state.json"
    p = run_live_stack("source", "folder", str(watched), "--to", live_daemon.ingest,
                       "--settle", "0.2", "--fps", "20", "--state", str(state),
                       "--source-id", "folder-trunc")
    p.wait_line("watching")
    frames = _long_ser(capture, tmp_path / "long.ser", 100)
    os.replace(tmp_path / "long.ser", watched / "long.ser")
    p.wait_line("sending frames 0..99 of long.ser")
    _cut(watched / "long.ser", KEPT)
    line = p.wait_line("skipped long.ser")
    assert "(1 files skipped so far)" in line
    assert f"{watched / 'long.ser'}: the file shrank while it was read: frame {KEPT}" in line
    # the source is alive: the next file is sent
    assert cv2.imwrite(str(tmp_path / "next.png"), frames[0])
    os.replace(tmp_path / "next.png", watched / "next.png")
    p.wait_line("sent next.png")
    st = live_daemon.wait_status(lambda s: s["frames"]["received"] == KEPT + 1,
                                 f"{KEPT} + 1 frames")
    assert st["sources"]["folder-trunc"]["skipped_files"] == 1
    assert p.stop() == 0, p.stderr
    assert "stopped: 21 frames of 1 files sent, 1 files skipped" in p.stderr
