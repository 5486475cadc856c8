"""OpenCV video source: round trips, mono detection, random access, caching, bad files."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from live_stack.io import SourceError, open_source, salvage_warning
from live_stack.io.video import VideoSource, looks_mono

H, W = 48, 64
N = 12
REAL_AVI = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "moon_pss_short.avi"

#: (fourcc, suffix) pairs to round-trip; each is skipped if this OpenCV cannot write it.
CODECS = [("MJPG", ".avi"), ("mp4v", ".mp4"), ("MJPG", ".mkv")]


def grey_frames(make_frames) -> np.ndarray:
    """N distinct smooth grey frames; frame k is brighter by 6 k levels."""
    base = make_frames(1, H, W)[0].astype(np.int16) // 2
    return np.stack([np.clip(base + 6 * k, 0, 255).astype(np.uint8) for k in range(N)])


def colour_frames(make_frames) -> np.ndarray:
    """N distinct RGB frames with a strong red cast that moves to the right."""
    frames = make_frames(N, H, W, layout="rgb").astype(np.int16)
    frames[..., 0] = np.clip(frames[..., 0] + 60, 0, 255)
    frames[..., 2] //= 3
    return frames.astype(np.uint8)


def write_video(path: Path, frames: np.ndarray, fourcc: str) -> None:
    """Write RGB (N, H, W, 3) or grey (N, H, W) frames with cv2.VideoWriter."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25.0, (W, H))
    if not writer.isOpened():
        writer.release()
        pytest.skip(f"this OpenCV build cannot write {fourcc} into {path.suffix}")
    try:
        for f in frames:
            bgr = cv2.cvtColor(f, cv2.COLOR_GRAY2BGR if f.ndim == 2 else cv2.COLOR_RGB2BGR)
            writer.write(bgr)
    finally:
        writer.release()


@pytest.fixture
def grey_avi(tmp_path, make_frames):
    frames = grey_frames(make_frames)
    path = tmp_path / "grey.avi"
    write_video(path, frames, "MJPG")
    return path, frames


def nearest(frame: np.ndarray, frames: np.ndarray) -> int:
    """Index of the original frame closest to a decoded one."""
    err = np.abs(frames.astype(np.int16) - frame.astype(np.int16)).reshape(len(frames), -1)
    return int(np.argmin(err.mean(axis=1)))


@pytest.mark.parametrize(("fourcc", "suffix"), CODECS)
def test_grey_round_trip_is_mono(tmp_path, make_frames, fourcc, suffix):
    frames = grey_frames(make_frames)
    path = tmp_path / f"grey{suffix}"
    write_video(path, frames, fourcc)
    with open_source(path) as src:
        assert isinstance(src, VideoSource)
        info = src.info
        assert (info.width, info.height, info.frames, len(src)) == (W, H, N, N)
        assert info.layout == "mono" and info.metadata["colour"] == "mono"
        assert (info.dtype, info.bit_depth, info.has_timestamps) == (np.uint8, 8, False)
        assert src.timestamps() is None
        assert "salvaged" not in info.metadata  # intact: its container's count holds
        got = list(src)
    for k, f in enumerate(got):
        assert f.shape == (H, W) and f.dtype == np.uint8
        assert nearest(f, frames) == k
        assert np.abs(f.astype(int) - frames[k]).mean() < 3  # lossy, but close


@pytest.mark.parametrize(("fourcc", "suffix"), CODECS[:2])
def test_colour_round_trip_is_rgb(tmp_path, make_frames, fourcc, suffix):
    frames = colour_frames(make_frames)
    path = tmp_path / f"colour{suffix}"
    write_video(path, frames, fourcc)
    with open_source(path) as src:
        assert src.info.layout == "rgb"
        got = np.stack(list(src))
    assert got.shape == (N, H, W, 3)
    means = got.reshape(-1, 3).mean(axis=0)
    assert means[0] > means[1] > means[2]  # red first: RGB order, not BGR
    assert np.abs(got.astype(int) - frames).mean() < 6


def test_colour_modes(tmp_path, make_frames, grey_avi):
    path, _ = grey_avi
    with VideoSource(path, colour="rgb") as src:
        f = src[0]
        assert src.info.layout == "rgb" and f.shape == (H, W, 3)
        np.testing.assert_allclose(f[..., 0], f[..., 1], atol=4)
    cpath = tmp_path / "c.avi"
    write_video(cpath, colour_frames(make_frames), "MJPG")
    with VideoSource(cpath, colour="mono") as src:
        assert src.info.layout == "mono" and src[3].shape == (H, W)


@pytest.mark.parametrize("cache_mb", [512, 0.01, 0], ids=["all-cached", "3-frames", "no-cache"])
def test_random_access_equals_sequential(grey_avi, cache_mb):
    path, _ = grey_avi
    with VideoSource(path, cache_mb=cache_mb) as src:
        sequential = list(src)
        order = [7, 2, 11, 0, 5, 5, -1, 3, 10, 1, -12, 9]
        for i in order:
            np.testing.assert_array_equal(src[i], sequential[i])
        again = list(src)
    for a, b in zip(sequential, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_frames_are_copies(grey_avi):
    path, _ = grey_avi
    with VideoSource(path) as src:
        a = src[4]
        expected = a.copy()
        a[:] = 0
        np.testing.assert_array_equal(src[4], expected)


def test_cached_video_is_not_decoded_again(grey_avi):
    """A video that fits in the cache is decoded once: it reads even after deletion."""
    path, frames = grey_avi
    with VideoSource(path) as src:
        path.unlink()
        assert [nearest(src[i], frames) for i in (5, 0, 11, 3)] == [5, 0, 11, 3]
        assert len(list(src)) == N


def test_uncached_video_decodes_again(grey_avi):
    path, _ = grey_avi
    with VideoSource(path, cache_mb=0) as src:
        src[N - 1]
        path.unlink()
        with pytest.raises(SourceError, match="cannot open"):
            src[0]  # behind the decoder: needs a re-open


def noise_frames(count: int) -> np.ndarray:
    """Random RGB frames: large once compressed, so a writer flushes them soon."""
    return np.random.default_rng(3).integers(0, 256, (count, H, W, 3), dtype=np.uint8)


def test_cut_video_reads_what_decodes_and_says_both_counts(tmp_path, decodable_frames):
    path = tmp_path / "cut.avi"
    write_video(path, noise_frames(60), "MJPG")
    os.truncate(path, path.stat().st_size // 2)
    kept = decodable_frames(path)
    assert 0 < kept < 60
    with open_source(path) as src:
        assert len(src) == src.info.frames == kept
        assert len(list(src)) == kept
        note = (f"the container says 60 frames but only {kept} could be decoded (cut off, "
                f"or still being written); the {kept} frames are read")
        assert src.info.metadata["salvaged"] == note
        assert salvage_warning(src) == f"{path}: {note}"


def test_video_still_being_written_says_it_has_no_count(tmp_path, decodable_frames):
    path = tmp_path / "growing.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (W, H))
    try:
        for f in noise_frames(400):
            writer.write(f)
        assert path.stat().st_size > 0, "the writer flushed nothing yet"
        kept = decodable_frames(path)
        with open_source(path) as src:
            assert len(src) == kept > 0
            assert salvage_warning(src) == (
                f"{path}: the container states no frame count (a recording still being "
                f"written, or cut off before its writer finished); the {kept} frames that "
                f"could be decoded are read")
    finally:
        writer.release()
    with open_source(path) as src:  # finished: intact
        assert len(src) == 400 and salvage_warning(src) is None


def test_video_cut_after_it_was_opened_is_an_error_naming_it(tmp_path):
    path = tmp_path / "cut-later.avi"
    write_video(path, noise_frames(60), "MJPG")
    size = path.stat().st_size
    with VideoSource(path, cache_mb=0) as src:
        assert len(src) == 60 and "salvaged" not in src.info.metadata
        os.truncate(path, size // 2)
        with pytest.raises(SourceError) as err:
            for _ in src:
                pass
    msg = str(err.value)
    assert msg.startswith(f"{path}: frame ")
    assert " cannot be decoded again: the video ended at frame " in msg
    assert msg.endswith(f"after 60 frames were decoded when it was opened; the file had "
                        f"{size} bytes then and has {size // 2} bytes now (truncated or "
                        f"rewritten by another program?)")


def test_cut_mp4_cannot_be_opened_and_says_why(tmp_path):
    path = tmp_path / "cut.mp4"
    write_video(path, noise_frames(60), "mp4v")
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(SourceError) as err:
        open_source(path)
    assert str(err.value) == (
        f"{path}: OpenCV cannot open this video (an MP4 or MOV recording that was cut off, "
        f"or is still being written, lacks the index its writer puts at the end)")


def test_indexing_errors(grey_avi):
    path, _ = grey_avi
    src = VideoSource(path)
    with pytest.raises(IndexError, match="out of range"):
        src[N]
    with pytest.raises(IndexError):
        src[-N - 1]
    src.close()
    with pytest.raises(SourceError, match="closed"):
        src[0]


def test_looks_mono():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (H, W), dtype=np.uint8)
    assert looks_mono(grey)
    # A decoder shifted the channels by a few levels, and they clip at black and white.
    shifted = np.stack([grey.astype(int) - 3, grey, grey.astype(int) + 2], axis=-1)
    assert looks_mono(np.clip(shifted, 0, 255).astype(np.uint8))
    noisy = np.stack([grey, grey, grey], axis=-1).astype(int)
    noisy[..., 1] += rng.integers(-6, 7, (H, W))
    assert not looks_mono(np.clip(noisy, 0, 255).astype(np.uint8))
    tinted = np.stack([grey, grey, grey], axis=-1).astype(int)
    tinted[..., 0] = np.clip(tinted[..., 0] + 40, 0, 255)
    assert not looks_mono(tinted.astype(np.uint8))
    assert looks_mono(np.zeros((H, W, 3), np.uint8))


@pytest.mark.parametrize("content", [b"", b"RIFF" + bytes(200), bytes(range(256)) * 40])
def test_not_a_video(tmp_path, content):
    path = tmp_path / "broken.avi"
    path.write_bytes(content)
    with pytest.raises(SourceError) as err:
        open_source(path)
    assert str(path) in str(err.value)


def test_bad_options(grey_avi, tmp_path):
    path, _ = grey_avi
    with pytest.raises(ValueError, match="colour must be one of"):
        VideoSource(path, colour="bgr")
    with pytest.raises(ValueError, match="cache_mb must be >= 0"):
        VideoSource(path, cache_mb=-1)
    with pytest.raises(SourceError, match="no such file"):
        VideoSource(tmp_path / "missing.mp4")


@pytest.mark.realdata
def test_real_avi():
    if not REAL_AVI.is_file():
        pytest.skip(f"real capture not available: {REAL_AVI} (../shared/data is absent)")
    with open_source(REAL_AVI) as src:
        info = src.info
        assert (info.frames, info.width, info.height) == (101, 1280, 960)
        assert info.layout == "mono" and info.dtype == np.uint8
        frames = list(src)
    assert len(frames) == 101
    assert all(f.shape == (960, 1280) for f in frames)
    assert 20 < float(frames[0].mean()) < 235  # a real, exposed picture
    assert not np.array_equal(frames[0], frames[50])
    # Random access through a small cache re-decodes and must match the first pass.
    with VideoSource(REAL_AVI, cache_mb=8) as src:
        for i in (90, 7, 100, 0, 51):
            np.testing.assert_array_equal(src[i], frames[i])
