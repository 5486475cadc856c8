"""Issue 18, item 1: crash-cut SER recordings are stacked from the command line.

A capture program killed before it wrote the header's frame count leaves FrameCount 0;
one killed mid-frame leaves a count larger than the data. ``reprocess``, ``source
replay`` and ``source folder`` stack every complete frame, say what the header claimed
and how many frames were read, and leave the file as it is; ``live-stack repair`` mends
the header.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from live_stack.io import SourceError
from live_stack.io.images import read_image
from live_stack.io.ser import FRAME_COUNT_OFFSET, HEADER_SIZE, SerReader

#: Frames of the simulated capture (tests/faults/conftest.py) and the bytes of one.
FRAMES = 60
FRAME_BYTES = 160 * 120


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cut(capture: Any, folder: Path, *, claimed: int, keep: int | None = None,
         partial: int = 0) -> Path:
    """A copy of the capture as a crash leaves it: ``keep`` whole frames (all if None)
    and ``partial`` bytes of the next, no trailer, FrameCount ``claimed``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cut.ser"
    shutil.copyfile(capture.video, path)
    keep = FRAMES if keep is None else keep
    with open(path, "r+b") as f:
        f.truncate(HEADER_SIZE + keep * FRAME_BYTES + partial)
        f.seek(FRAME_COUNT_OFFSET)
        f.write(struct.pack("<i", claimed))
    return path


@pytest.mark.parametrize(("claimed", "keep", "said"), [
    (0, FRAMES, "header says 0 frames (a capture cut off before it wrote the count); "
                f"the {FRAMES} complete frames the file holds are read, and 500 bytes of "
                "an incomplete frame after them are ignored"),
    (FRAMES, 41, f"header says {FRAMES} frames but the file holds 41 complete frames "
                 "(cut off); 41 frames are read, and 500 bytes of an incomplete frame "
                 "after them are ignored"),
], ids=["count-0", "count-too-large"])
def test_reprocess_stacks_a_crash_cut_ser_and_reports_both_counts(
    run_live_stack: Callable[..., Any], capture: Any, tmp_path: Path, claimed: int,
    keep: int, said: str,
) -> None:
    path = _cut(capture, tmp_path / "in", claimed=claimed, keep=keep, partial=500)
    before = _digest(path)
    out = tmp_path / "stack.tif"
    p = run_live_stack("reprocess", str(path), "-o", str(out), "-q")
    assert p.finish(120) == 0, p.stderr
    assert p.stderr == (f"live-stack reprocess: warning: {path}: {said}; the file is left as "
                        f"it is (live-stack repair {path} mends it)\n")
    assert f"{path}: {keep} frames" in p.stdout
    _, meta = read_image(out)
    assert meta["input_frames"] == keep
    assert meta["input_salvaged"] == said
    assert _digest(path) == before  # untouched


def test_repair_makes_the_file_valid_for_strict_readers(
    run_live_stack: Callable[..., Any], capture: Any, tmp_path: Path,
) -> None:
    path = _cut(capture, tmp_path, claimed=0, keep=30, partial=123)
    with pytest.raises(SourceError, match="header says 0 frames"):
        SerReader(path)
    with SerReader(capture.video) as src:
        expected = np.stack([src[i] for i in range(30)])
    p = run_live_stack("repair", str(path))
    assert p.finish() == 0, p.stderr
    assert p.stdout == (f"{path}: header FrameCount 0 -> 30; 123 bytes after the last "
                        f"complete frame were cut off\n")
    assert path.stat().st_size == HEADER_SIZE + 30 * FRAME_BYTES
    with SerReader(path) as src:  # strict
        np.testing.assert_array_equal(np.stack(list(src)), expected)
    again = run_live_stack("repair", str(path), str(tmp_path / "absent.ser"))
    assert again.finish() == 1
    assert again.stdout == f"{path}: nothing to repair: the header's 30 frames match the file\n"
    assert f"live-stack repair: error: {tmp_path / 'absent.ser'}: cannot open" in again.stderr


def test_replay_sends_every_complete_frame_of_a_crash_cut_ser(
    start_source: Callable[..., Any], live_daemon: Any, capture: Any, tmp_path: Path,
) -> None:
    path = _cut(capture, tmp_path, claimed=0, keep=37, partial=10)
    before = _digest(path)
    p = start_source("replay", path, "--fps", "0", "--source-id", "replay-cut")
    assert p.finish(60) == 0, p.stderr
    assert "header says 0 frames" in p.stderr and "the 37 complete frames" in p.stderr
    assert "sent 37 frames" in p.stderr
    live_daemon.wait_status(lambda s: s["frames"]["received"] == 37, "37 frames received")
    assert live_daemon.source("replay-cut")["frames"] == 37
    assert _digest(path) == before


def test_folder_source_sends_every_complete_frame_of_a_crash_cut_ser(
    start_source: Callable[..., Any], live_daemon: Any, capture: Any, tmp_path: Path,
    watched: Path,
) -> None:
    path = _cut(capture, watched, claimed=FRAMES + 40, keep=FRAMES)
    before = _digest(path)
    p = start_source("folder", watched, "--settle", "0.2", "--state",
                     str(tmp_path / "state.json"), "--source-id", "folder-cut")
    p.wait_line(f"header says {FRAMES + 40} frames but the file holds {FRAMES} complete")
    p.wait_line(f"sent {FRAMES} frames of cut.ser")
    live_daemon.wait_status(lambda s: s["frames"]["received"] == FRAMES, "all frames received")
    assert p.stop() == 0, p.stderr
    assert _digest(path) == before
