"""Issue 18, items 3 and 4, for images whose header is intact but whose pixels are not.

A camera driver cut off mid-write leaves a PNG whose IHDR header reads but whose pixel
data ends early; a damaged card leaves a TIFF whose compressed strips do not decode.
``reprocess DIR`` used to find such a file only when the pipeline decoded it, and then
stopped the whole run with an error (rc 1, nothing written), while a file with an
unreadable header was left out with a warning. Now both are left out the same way:
warned about once, naming each file, counted in the summary. The folder source skips
such a file, counts it in the daemon's status (and in ``ctl status``'s readable
summary) and goes on.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from live_stack.io.folder import _probe
from live_stack.io.images import read_image
from live_stack.io.ser import SerReader

#: Images of the folder given to reprocess.
IMAGES = 30
#: Settle time of the watched folder (seconds).
SETTLE = "0.2"


@pytest.fixture(scope="module")
def frames(capture: Any) -> list[np.ndarray]:
    with SerReader(capture.video) as src:
        return list(src)


def _cut_png(path: Path, frame: np.ndarray) -> None:
    """A PNG cut off halfway through its pixel data: its IHDR header is whole."""
    ok, buf = cv2.imencode(".png", frame)
    assert ok
    path.write_bytes(buf.tobytes()[: len(buf) // 2])
    _probe(str(path))  # the header reads: only decoding finds the damage


def _damaged_tiff(path: Path, frame: np.ndarray) -> None:
    """An LZW TIFF (OpenCV's, its header at the end) with a run of its strips zeroed."""
    assert cv2.imwrite(str(path), frame)
    data = bytearray(path.read_bytes())
    at = len(data) * 6 // 10
    data[at : at + 64] = bytes(64)
    path.write_bytes(bytes(data))
    _probe(str(path))


def test_reprocess_dir_leaves_out_images_whose_pixels_do_not_decode(
    run_live_stack: Callable[..., Any], frames: list[np.ndarray], tmp_path: Path,
) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for k in range(IMAGES):
        assert cv2.imwrite(str(folder / f"f{k:02d}.png"), frames[k])
    _cut_png(folder / "f07.png", frames[7])
    _damaged_tiff(folder / "f15.tif", frames[15])
    (folder / "f20.png").write_bytes(b"")  # and an unreadable header, as before
    os.remove(folder / "f15.png")  # f15 is the TIFF now
    out = tmp_path / "stack.tif"
    p = run_live_stack("reprocess", str(folder), "-o", str(out), "-q")
    assert p.finish(120) == 0, p.stderr  # was rc 1: "f07.png: OpenCV cannot decode ..."
    ours = [ln for ln in p.stderr.splitlines() if ln.startswith("live-stack")]
    assert len(ours) == 1, p.stderr  # warned once, naming every file
    assert ours[0].startswith(
        f"live-stack reprocess: warning: {folder}: 3 of {IMAGES} image files cannot be read "
        f"and are left out ({folder / 'f07.png'}: OpenCV cannot decode this image (corrupt "
        f"or not an image); {folder / 'f15.tif'}: cannot read TIFF (corrupt or not a TIFF "
        f"file): ")
    assert ours[0].endswith(f"; {folder / 'f20.png'}: not a PNG file (no IHDR header))")
    assert f"{folder}: {IMAGES - 3} frames" in p.stdout
    assert "  3 image file(s) left out: they cannot be read (see the warning)" in p.stdout
    _, meta = read_image(out)
    assert meta["input_frames"] == IMAGES - 3
    assert meta["summary"]["files_left_out"] == 3
    assert meta["input_salvaged"].startswith(f"3 of {IMAGES} image files cannot be read")


def test_folder_source_skips_images_whose_pixels_do_not_decode_and_goes_on(
    start_source: Callable[..., Any], run_live_stack: Callable[..., Any], live_daemon: Any,
    frames: list[np.ndarray], watched: Path, tmp_path: Path,
) -> None:
    p = start_source("folder", watched, "--settle", SETTLE, "--state",
                     str(tmp_path / "state.json"), "--source-id", "folder-pixels")
    staging = tmp_path / "staging"
    staging.mkdir()
    _cut_png(staging / "a.png", frames[0])
    os.replace(staging / "a.png", watched / "a.png")
    line = p.wait_line("skipped a.png")
    assert line.rstrip().endswith(
        f"WARNING skipped a.png (1 files skipped so far): {watched / 'a.png'}: OpenCV cannot "
        f"decode this image (corrupt or not an image); it is read again when it changes")
    _damaged_tiff(staging / "b.tif", frames[1])
    os.replace(staging / "b.tif", watched / "b.tif")
    assert "(2 files skipped so far): " in p.wait_line("skipped b.tif")
    assert cv2.imwrite(str(staging / "c.png"), frames[2])
    os.replace(staging / "c.png", watched / "c.png")
    p.wait_line("sent c.png")  # still running
    live_daemon.wait_status(lambda s: s["frames"]["received"] == 1, "c.png received")
    assert live_daemon.source("folder-pixels")["skipped_files"] == 2
    ctl = run_live_stack("ctl", "--control", live_daemon.control, "status")
    assert ctl.finish() == 0, ctl.stderr
    assert ("source:    folder-pixels: 1 frames 160x120 uint8 mono, 0 missed, 2 files SKIPPED "
            "(unreadable: the source's log says why)") in ctl.stdout.splitlines()
    assert p.stop() == 0, p.stderr
    assert "stopped: 1 frames of 1 files sent, 2 files skipped" in p.stderr
