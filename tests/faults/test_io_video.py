"""Issue 18, item 2, for videos: a video cut off or still being written is never silently short.

OpenCV reads such a file up to the cut without a word: ``reprocess`` stacked 747 of a
900-frame AVI truncated while it was opened, and said nothing. Now the frame count the
container claims and the frames that could be decoded are both reported, naming the
file, the way a crash-cut SER file's are; a frame that cannot be decoded again later is
an error naming the file and both sizes, with rc 1 and no output. Each test writes a real
AVI with OpenCV's ``VideoWriter`` and runs a real ``live-stack reprocess`` process on it.
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

from live_stack.io.images import read_image
from live_stack.io.ser import SerReader

#: Frames written into each video (cycling through the simulated capture's 60).
FRAMES = 900
#: Frames per second written into the container.
FPS = 25.0


@pytest.fixture
def moon_frames(capture: Any) -> list[np.ndarray]:
    """The simulated capture's frames as BGR (a mono camera recorded as colour video)."""
    with SerReader(capture.video) as src:
        return [cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) for f in src]


def _writer(path: Path, frame: np.ndarray) -> cv2.VideoWriter:
    h, w = frame.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (w, h))
    assert writer.isOpened(), f"OpenCV cannot write MJPEG into {path}"
    return writer


def _reprocess(run_live_stack: Callable[..., Any], path: Path, out: Path) -> Any:
    p = run_live_stack("reprocess", str(path), "-o", str(out), "-q")
    assert p.finish(180) == 0, p.stderr
    return p


def _warnings(stderr: str) -> list[str]:
    """live-stack's own lines (FFmpeg's decoder may add lines of its own about the cut)."""
    return [ln for ln in stderr.splitlines() if ln.startswith("live-stack")]


def test_reprocess_of_a_cut_video_stacks_what_decodes_and_reports_both_counts(
    run_live_stack: Callable[..., Any], moon_frames: list[np.ndarray], tmp_path: Path,
    decodable_frames: Callable[[Path], int],
) -> None:
    path = tmp_path / "cut.avi"
    writer = _writer(path, moon_frames[0])
    for k in range(FRAMES):
        writer.write(moon_frames[k % len(moon_frames)])
    writer.release()
    os.truncate(path, path.stat().st_size * 6 // 10)  # the capture program crashed
    kept = decodable_frames(path)
    assert 0 < kept < FRAMES
    out = tmp_path / "stack.tif"
    p = _reprocess(run_live_stack, path, out)
    said = (f"the container says {FRAMES} frames but only {kept} could be decoded (cut off, "
            f"or still being written); the {kept} frames are read")
    assert _warnings(p.stderr) == [f"live-stack reprocess: warning: {path}: {said}"]
    assert f"{path}: {kept} frames" in p.stdout
    _, meta = read_image(out)
    assert meta["input_frames"] == kept
    assert meta["input_salvaged"] == said


@pytest.fixture
def growing_video(moon_frames: list[np.ndarray], tmp_path: Path) -> Iterator[Path]:
    """An AVI whose writer is still open: 900 frames written, the header not yet final."""
    path = tmp_path / "growing.avi"
    writer = _writer(path, moon_frames[0])
    for k in range(FRAMES):
        writer.write(moon_frames[k % len(moon_frames)])
    assert path.stat().st_size > 0, "the writer has flushed nothing yet"
    yield path
    writer.release()


def test_reprocess_of_a_video_still_being_written_says_it_has_no_frame_count(
    run_live_stack: Callable[..., Any], growing_video: Path, tmp_path: Path,
    decodable_frames: Callable[[Path], int],
) -> None:
    kept = decodable_frames(growing_video)
    assert 0 < kept < FRAMES
    out = tmp_path / "stack.tif"
    p = _reprocess(run_live_stack, growing_video, out)
    said = ("the container states no frame count (a recording still being written, or cut "
            f"off before its writer finished); the {kept} frames that could be decoded are "
            "read")
    assert _warnings(p.stderr) == [f"live-stack reprocess: warning: {growing_video}: {said}"]
    _, meta = read_image(out)
    assert meta["input_frames"] == kept
    assert meta["input_salvaged"] == said


def test_reprocess_of_an_intact_video_says_nothing(
    run_live_stack: Callable[..., Any], moon_frames: list[np.ndarray], tmp_path: Path,
) -> None:
    path = tmp_path / "whole.avi"
    writer = _writer(path, moon_frames[0])
    for f in moon_frames:
        writer.write(f)
    writer.release()
    out = tmp_path / "stack.tif"
    p = _reprocess(run_live_stack, path, out)
    assert p.stderr == ""
    _, meta = read_image(out)
    assert meta["input_frames"] == len(moon_frames)
    assert "input_salvaged" not in meta


#: Frames of the video cut after it was opened: 640x480 RGB, 600 of them (527 MiB
#: decoded) are more than the reader's 512 MiB cache, so some must be decoded again.
BIG_FRAMES = 600


def test_reprocess_of_a_video_cut_after_it_was_opened_exits_1_naming_it(
    run_live_stack: Callable[..., Any], moon_frames: list[np.ndarray], tmp_path: Path,
) -> None:
    path = tmp_path / "big.avi"
    tinted = []
    for f in moon_frames:
        big = cv2.resize(f, (640, 480), interpolation=cv2.INTER_CUBIC)
        big[..., 0] //= 2  # a colour picture: read as RGB, three bytes a pixel
        tinted.append(big)
    writer = _writer(path, tinted[0])
    for k in range(BIG_FRAMES):
        writer.write(tinted[k % len(tinted)])
    writer.release()
    size = path.stat().st_size
    out = tmp_path / "stack.tif"
    p = run_live_stack("reprocess", str(path), "-o", str(out), "-q")
    # cut once the counting pass has read the whole file and the second decoding (the
    # frames beyond the cache, reached from the start again) has read half of it again:
    # the file's first 600 frames are counted, and frames 300 and on are still to come
    deadline = time.monotonic() + 120
    while p.bytes_read() < size * 3 // 2:
        assert p.proc.poll() is None, p.stderr
        assert time.monotonic() < deadline, "reprocess never read the video"
        threading.Event().wait(0.001)
    os.truncate(path, size // 20)
    rc = p.finish(180)
    assert rc == 1, (rc, p.stderr)  # was: a stack of the frames before the cut, rc 0
    ours = [ln for ln in p.stderr.splitlines() if ln.startswith("live-stack")]
    assert len(ours) == 1, p.stderr
    assert ours[0].startswith(f"live-stack reprocess: error: {path}: frame ")
    assert " cannot be decoded again: the video ended at frame " in ours[0]
    assert ours[0].endswith(f", after {BIG_FRAMES} frames were decoded when it was opened; "
                            f"the file had {size} bytes then and has {size // 20} bytes now "
                            f"(truncated or rewritten by another program?)")
    assert not out.exists()
