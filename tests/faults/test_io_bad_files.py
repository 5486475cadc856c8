"""Issue 18, items 3, 4 and 11: bad image files never stop a source or a whole folder.

* A 0-byte ``.png``/``.jpg`` (a camera driver's empty file) stopped the folder source with
  an uncaught ``cv2.error``, at every restart again.
* LZW-compressed TIFF (OpenCV's default) could not be read at all; one such file failed a
  whole ``reprocess DIR`` and the folder source waited for it forever.
* The folder source said "changed after it was sent" for every unchanged file on
  restart, and "sent" for frames the daemon then dropped as malformed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import tifffile

from live_stack.io.images import read_image
from live_stack.io.ser import SerReader

#: Settle time of the watched folders (seconds).
SETTLE = "0.2"


@pytest.fixture(scope="module")
def frames(capture: Any) -> list[np.ndarray]:
    with SerReader(capture.video) as src:
        return list(src)


@pytest.fixture
def folder_source(start_source: Callable[..., Any], watched: Path,
                  tmp_path: Path) -> Callable[[str], Any]:
    """``folder_source(ID)``: a folder source watching ``watched`` (one state file)."""

    def start(source_id: str) -> Any:
        return start_source("folder", watched, "--settle", SETTLE, "--state",
                            str(tmp_path / "state.json"), "--source-id", source_id)

    return start


def _put(path: Path, data: bytes, mtime: float | None = None) -> None:
    """Write a file as a capture program does: whole, under a temporary name first."""
    tmp = path.with_name("." + path.name + ".part")
    tmp.write_bytes(data)
    if mtime is not None:
        os.utime(tmp, (mtime, mtime))
    os.replace(tmp, path)


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def test_empty_images_in_a_watched_folder_are_skipped_counted_and_never_fatal(
    folder_source: Callable[[str], Any], live_daemon: Any, frames: list[np.ndarray],
    watched: Path, tmp_path: Path,
) -> None:
    state = tmp_path / "state.json"  # where folder_source keeps it
    _put(watched / "a.png", b"", mtime=1_700_000_000)
    _put(watched / "b.jpg", b"", mtime=1_700_000_001)
    _put(watched / "c.png", _png(frames[0]), mtime=1_700_000_002)  # sent after the two
    p = folder_source("folder-empty")
    line = p.wait_line("skipped a.png")
    assert line.rstrip().endswith(f"WARNING skipped a.png (1 files skipped so far): "
                                  f"{watched / 'a.png'}: the file is empty (0 bytes); it is "
                                  f"read again when it changes")
    assert "(2 files skipped so far)" in p.wait_line("skipped b.jpg")
    p.wait_line("sent c.png")
    live_daemon.wait_status(lambda s: s["frames"]["received"] == 1, "c.png received")
    assert live_daemon.source("folder-empty")["skipped_files"] == 2
    assert p.stop() == 0, p.stderr
    assert "stopped: 1 frames of 1 files sent, 2 files skipped" in p.stderr
    files = json.loads(state.read_text())["files"]
    assert files["a.png"]["skipped"] == f"{watched / 'a.png'}: the file is empty (0 bytes)"
    assert files["b.jpg"]["skipped"] == f"{watched / 'b.jpg'}: the file is empty (0 bytes)"
    assert "skipped" not in files["c.png"] and files["c.png"]["frames"] == 1

    # a restart neither stops nor warns again about the same files, nor sends c.png again
    p = folder_source("folder-empty")
    p.wait_line("a.png is skipped: ")
    p.wait_line("b.jpg is skipped: ")
    _put(watched / "a.png", _png(frames[1]))  # the driver finally wrote it: read again
    p.wait_line("sent a.png")
    live_daemon.wait_status(lambda s: s["frames"]["received"] == 2, "a.png received")
    assert p.stop() == 0, p.stderr
    assert "WARNING" not in p.stderr and "c.png" not in p.stderr
    assert "stopped: 1 frames of 1 files sent, 0 files skipped" in p.stderr


def test_restart_says_nothing_of_unchanged_files_and_names_changed_ones(
    folder_source: Callable[[str], Any], live_daemon: Any, frames: list[np.ndarray],
    watched: Path,
) -> None:
    for k in range(3):
        _put(watched / f"f{k}.png", _png(frames[k]), mtime=1_700_000_000 + k)
    p = folder_source("folder-restart")
    for k in range(3):
        p.wait_line(f"sent f{k}.png")
    assert p.stop() == 0
    p = folder_source("folder-restart")
    _put(watched / "f1.png", _png(frames[5]))
    p.wait_line("f1.png changed after it was sent; not sending it again")
    assert p.stop() == 0
    assert "f0.png" not in p.stderr and "f2.png" not in p.stderr  # was: "changed" for each
    assert live_daemon.status()["frames"]["received"] == 3


def test_a_frame_the_daemon_would_drop_is_not_said_to_be_sent(
    folder_source: Callable[[str], Any], live_daemon: Any, frames: list[np.ndarray],
    watched: Path,
) -> None:
    _put(watched / "wide.png", _png(np.full((100, 17000), 128, np.uint8)), mtime=1_700_000_000)
    _put(watched / "ok.png", _png(frames[0]), mtime=1_700_000_001)
    p = folder_source("folder-wide")
    line = p.wait_line("skipped wide.png")
    assert "ProtocolError: frame size 17000x100 is out of range (8..16384)" in line
    p.wait_line("sent ok.png")
    st = live_daemon.wait_status(lambda s: s["frames"]["received"] == 1, "ok.png received")
    assert st["drops"]["malformed"] == 0
    assert p.stop() == 0
    assert "sent wide.png" not in p.stderr


def _tiff_folder(folder: Path, frames: list[np.ndarray]) -> list[str]:
    """Frames as LZW (written by OpenCV), deflate and PackBits TIFFs; returns the codecs."""
    folder.mkdir()
    codecs = []
    for k, frame in enumerate(frames):
        path = folder / f"f{k:02d}.tif"
        if k % 3 == 0:
            assert cv2.imwrite(str(path), frame)  # OpenCV writes LZW by default
        else:
            tifffile.imwrite(path, frame, compression="deflate" if k % 3 == 1 else "packbits")
        with tifffile.TiffFile(path) as tif:
            codecs.append(tif.pages.first.compression.name)
    return codecs


def test_reprocess_a_folder_of_compressed_tiffs_with_an_empty_one(
    run_live_stack: Callable[..., Any], frames: list[np.ndarray], tmp_path: Path,
) -> None:
    folder = tmp_path / "tiffs"
    codecs = _tiff_folder(folder, frames[:30])
    assert set(codecs) == {"LZW", "DEFLATE", "PACKBITS"}
    (folder / "f99.tif").write_bytes(b"")  # one broken file does not fail the folder
    out = tmp_path / "stack.tif"
    p = run_live_stack("reprocess", str(folder), "-o", str(out), "-q")
    assert p.finish(120) == 0, p.stderr
    assert p.stderr.startswith(f"live-stack reprocess: warning: {folder}: 1 of 31 image files "
                               f"cannot be read and are left out ({folder / 'f99.tif'}: "
                               f"cannot read TIFF")
    _, meta = read_image(out)
    assert meta["input_frames"] == 30


def test_folder_source_sends_an_lzw_tiff(
    folder_source: Callable[[str], Any], live_daemon: Any, frames: list[np.ndarray],
    watched: Path, tmp_path: Path,
) -> None:
    p = folder_source("folder-lzw")
    assert cv2.imwrite(str(tmp_path / "lzw.tif"), frames[0])
    os.replace(tmp_path / "lzw.tif", watched / "lzw.tif")
    p.wait_line("sent lzw.tif")
    live_daemon.wait_status(lambda s: s["frames"]["received"] == 1, "the TIFF received")
    assert p.stop() == 0
    assert "WARNING" not in p.stderr
