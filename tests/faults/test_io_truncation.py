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


@pytest.fixture
def long_ser(capture: Any, tmp_path: Path) -> Callable[[int], Path]:
    """``long_ser(n)``: ``tmp_path/long.ser``, n frames cycling through the capture's."""
    with SerReader(capture.video) as src:
        pool = list(src)

    def write(frames: int) -> Path:
        path = tmp_path / "long.ser"
        with SerWriter(path, width=WIDTH, height=HEIGHT) as w:
            w.write_frames([pool[k % len(pool)] for k in range(frames)],
                           [1.7e9 + k / 50 for k in range(frames)])
        return path

    return write


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


def _wait_reading(process: Any, nbytes: int, timeout: float = 60.0) -> None:
    """Wait until ``process`` (a conftest ``Process``) has read ``nbytes`` more bytes than now.

    A file opened is not yet a file being read: truncated between its open and the size
    check, it is a crash-cut file (stacked from what is left), not one cut while read.
    """
    start = process.bytes_read()
    deadline = time.monotonic() + timeout
    while process.bytes_read() - start < nbytes:
        assert time.monotonic() < deadline, f"{process.cmd} did not read {nbytes} bytes"
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
    run_live_stack: Callable[..., Any], long_ser: Callable[[int], Path], tmp_path: Path,
    when_opened: Callable[[Path], threading.Event],
) -> None:
    path = long_ser(1500)
    opened = when_opened(path)
    out = tmp_path / "stack.tif"
    p = run_live_stack("reprocess", str(path), "-o", str(out), "-q")
    assert opened.wait(60), "reprocess never opened the file"
    _wait_reading(p, 100 * FRAME_BYTES)
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
    start_source: Callable[..., Any], live_daemon: Any, long_ser: Callable[[int], Path],
) -> None:
    path = long_ser(100)
    p = start_source("replay", path, "--fps", "20", "--source-id", "replay-trunc")
    _cut(path, KEPT)  # frame 20 is due one second later
    rc = p.finish(END)
    assert rc == 1, (rc, p.stderr)
    assert (f"replay source: {path}: the file shrank while it was read: frame {KEPT} ends "
            f"at byte {HEADER_SIZE + (KEPT + 1) * FRAME_BYTES}") in p.stderr
    assert f"; {KEPT} frames were sent to {live_daemon.ingest} before" in p.stderr
    live_daemon.wait_status(lambda s: s["frames"]["received"] == KEPT, f"{KEPT} frames")
    assert live_daemon.source("replay-trunc")["frames"] == KEPT


def test_replay_of_a_file_recreated_under_its_name_plays_the_file_it_opened(
    start_source: Callable[..., Any], live_daemon: Any, long_ser: Callable[[int], Path],
) -> None:
    path = long_ser(40)
    p = start_source("replay", path, "--fps", "40", "--source-id", "replay-new")
    path.unlink()  # a capture program starting a new recording of the same name
    assert long_ser(3) == path
    assert p.finish(END) == 0, p.stderr
    assert "sent 40 frames" in p.stderr
    live_daemon.wait_status(lambda s: s["frames"]["received"] == 40, "40 frames")


def test_folder_source_survives_a_file_truncated_while_sent(
    start_source: Callable[..., Any], live_daemon: Any, long_ser: Callable[[int], Path],
    capture: Any, tmp_path: Path, watched: Path,
) -> None:
    p = start_source("folder", watched, "--settle", "0.2", "--fps", "20", "--state",
                     str(tmp_path / "state.json"), "--source-id", "folder-trunc")
    os.replace(long_ser(100), watched / "long.ser")
    p.wait_line("sending frames 0..99 of long.ser")
    _cut(watched / "long.ser", KEPT)
    line = p.wait_line("skipped long.ser")
    assert "(1 files skipped so far)" in line
    assert f"{watched / 'long.ser'}: the file shrank while it was read: frame {KEPT}" in line
    # the source is alive: the next file is sent
    with SerReader(capture.video) as src:
        assert cv2.imwrite(str(tmp_path / "next.png"), src[0])
    os.replace(tmp_path / "next.png", watched / "next.png")
    p.wait_line("sent next.png")
    st = live_daemon.wait_status(lambda s: s["frames"]["received"] == KEPT + 1,
                                 f"{KEPT} + 1 frames")
    assert st["sources"]["folder-trunc"]["skipped_files"] == 1
    assert p.stop() == 0, p.stderr
    assert "stopped: 21 frames of 1 files sent, 1 files skipped" in p.stderr
