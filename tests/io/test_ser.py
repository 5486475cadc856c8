"""SER reader and writer: round trips, byte-order detection, bad files, killed recordings."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from live_stack.io import SourceError, open_source
from live_stack.io.ser import (
    FRAME_COUNT_OFFSET,
    HEADER_SIZE,
    SerReader,
    SerWriter,
    repair_header,
    ticks_to_unix,
    unix_to_ticks,
)

H, W = 24, 32
T0 = 1_700_000_000.25  # a Unix time with a fractional part
LAYOUTS = ["mono", "RGGB", "GRBG", "GBRG", "BGGR", "rgb"]

# Header field offsets (see live_stack.io.ser).
COLOR_ID_OFFSET = 18
ENDIAN_OFFSET = 22
WIDTH_OFFSET = 26
HEIGHT_OFFSET = 30
DEPTH_OFFSET = 34


def patch_int(path, offset: int, value: int) -> None:
    """Overwrite one little-endian int32 header field."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack("<i", value))


def write_ser(path, frames, *, layout="mono", bit_depth=8, timestamps=None, **kw) -> None:
    h, w = frames.shape[1:3]
    with SerWriter(path, width=w, height=h, layout=layout, bit_depth=bit_depth, **kw) as sw:
        sw.write_frames(list(frames), timestamps)


@pytest.mark.parametrize("bit_depth", [8, 12, 16])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("with_ts", [True, False], ids=["ts", "no-ts"])
def test_round_trip(tmp_path, make_frames, bit_depth, layout, with_ts):
    frames = make_frames(4, H, W, layout=layout, bit_depth=bit_depth, seed=bit_depth)
    ts = [T0 + 0.0371 * k for k in range(len(frames))] if with_ts else None
    path = tmp_path / "v.ser"
    write_ser(
        path,
        frames,
        layout=layout,
        bit_depth=bit_depth,
        timestamps=ts,
        observer="Ann",
        instrument="ASI 174",
        telescope="C11",
    )
    with open_source(path) as src:
        info = src.info
        assert isinstance(src, SerReader)
        assert (info.width, info.height, info.frames, len(src)) == (W, H, 4, 4)
        assert info.layout == layout
        assert info.bit_depth == bit_depth
        assert info.dtype == frames.dtype
        assert info.shape == frames.shape[1:]
        assert info.metadata["observer"] == "Ann"
        assert info.metadata["instrument"] == "ASI 174"
        assert info.metadata["telescope"] == "C11"
        got = np.stack(list(src))
        assert got.dtype == frames.dtype
        np.testing.assert_array_equal(got, frames)
        assert info.has_timestamps == with_ts
        stamps = src.timestamps()
        if with_ts:
            assert stamps.dtype == np.float64
            np.testing.assert_allclose(stamps, ts, rtol=0, atol=1e-6)
            assert info.metadata["start_time"] == pytest.approx(T0, abs=1e-6)
        else:
            assert stamps is None
        if bit_depth > 8:
            assert info.metadata["byte_order"] == "little"


@pytest.mark.parametrize("bit_depth", [12, 16])
@pytest.mark.parametrize("layout", ["mono", "RGGB", "rgb"])
def test_big_endian_round_trip(tmp_path, make_frames, bit_depth, layout):
    frames = make_frames(3, H, W, layout=layout, bit_depth=bit_depth)
    path = tmp_path / "be.ser"
    write_ser(path, frames, layout=layout, bit_depth=bit_depth, little_endian=False)
    raw = path.read_bytes()
    assert struct.unpack_from("<i", raw, ENDIAN_OFFSET)[0] == 0
    # The samples really are big-endian on disk.
    first = np.frombuffer(raw, dtype=">u2", count=frames[0].size, offset=HEADER_SIZE)
    np.testing.assert_array_equal(first.reshape(frames[0].shape), frames[0])
    with SerReader(path) as src:
        assert src.info.metadata["byte_order"] == "big"
        np.testing.assert_array_equal(np.stack(list(src)), frames)


@pytest.mark.parametrize(
    ("bit_depth", "rule"), [(16, "smoothness"), (12, "pixel depth"), (10, "pixel depth")]
)
@pytest.mark.parametrize("little", [True, False], ids=["le-data", "be-data"])
def test_wrong_endian_flag_detected_from_data(tmp_path, make_frames, bit_depth, rule, little):
    frames = make_frames(3, 48, 64, bit_depth=bit_depth, seed=3)
    path = tmp_path / "flag.ser"
    write_ser(path, frames, bit_depth=bit_depth, little_endian=little)
    patch_int(path, ENDIAN_OFFSET, 0 if little else 1)  # the flag now lies
    with SerReader(path) as src:
        assert src.info.metadata["byte_order"] == ("little" if little else "big")
        assert src.info.metadata["byte_order_rule"] == rule
        np.testing.assert_array_equal(np.stack(list(src)), frames)


def test_msb_aligned_12_bit_detected(tmp_path, make_frames):
    """12-bit data shifted to the top of 16 bits (low 4 bits zero) is also recognised."""
    frames = make_frames(2, H, W, bit_depth=12) << 4
    path = tmp_path / "msb.ser"
    write_ser(path, frames, bit_depth=16, little_endian=False)
    patch_int(path, DEPTH_OFFSET, 12)
    patch_int(path, ENDIAN_OFFSET, 1)
    with SerReader(path) as src:
        assert src.info.metadata["byte_order"] == "big"
        assert src.info.bit_depth == 12
        np.testing.assert_array_equal(src[1], frames[1])


@pytest.mark.parametrize("flag", [0, 1])
def test_flat_16_bit_data_falls_back_to_flag(tmp_path, flag):
    frames = np.full((2, H, W), 0x1234, dtype=np.uint16)
    path = tmp_path / "flat.ser"
    write_ser(path, frames, bit_depth=16, little_endian=bool(flag))
    with SerReader(path) as src:
        assert src.info.metadata["byte_order_rule"] == "flag"
        assert src.info.metadata["byte_order"] == ("little" if flag else "big")
        np.testing.assert_array_equal(src[0], frames[0])


def test_bgr_returned_as_rgb(tmp_path, make_frames):
    frames = make_frames(2, H, W, layout="rgb")
    path = tmp_path / "bgr.ser"
    write_ser(path, frames, layout="rgb")
    patch_int(path, COLOR_ID_OFFSET, 101)  # the stored planes are now read as B, G, R
    with SerReader(path) as src:
        assert src.info.layout == "rgb"
        assert src.info.metadata["color_id"] == 101
        np.testing.assert_array_equal(src[1], frames[1][..., ::-1])


def test_random_access_and_indexing(tmp_path, make_frames):
    frames = make_frames(6, H, W)
    path = tmp_path / "idx.ser"
    write_ser(path, frames)
    with SerReader(path) as src:
        for i in (3, 0, 5, -1, -6, np.int64(2)):
            np.testing.assert_array_equal(src[i], frames[i])
        a = src[1]
        a[:] = 0  # a copy: the next read is unaffected
        np.testing.assert_array_equal(src[1], frames[1])
        for bad in (6, -7, 100):
            with pytest.raises(IndexError, match="out of range"):
                src[bad]
        with pytest.raises(TypeError, match="integer"):
            src[1.0]
        assert [f.sum() for f in src] == [f.sum() for f in frames]
    with pytest.raises(SourceError, match="closed"):
        src[0]
    src.close()  # idempotent


def test_partial_timestamps_give_no_trailer(tmp_path, make_frames):
    frames = make_frames(3, H, W)
    path = tmp_path / "partial.ser"
    with SerWriter(path, width=W, height=H) as sw:
        sw.write(frames[0], timestamp=T0)
        sw.write(frames[1])
        sw.write(frames[2], timestamp=T0 + 1)
    assert path.stat().st_size == HEADER_SIZE + frames.nbytes
    with SerReader(path) as src:
        assert src.timestamps() is None
        assert not src.info.has_timestamps
        assert len(src) == 3


def test_empty_recording(tmp_path):
    path = tmp_path / "empty.ser"
    SerWriter(path, width=W, height=H).close()
    with SerReader(path) as src:
        assert len(src) == 0
        assert list(src) == []
        with pytest.raises(IndexError):
            src[0]


def test_zeroed_trailer_means_no_timestamps(tmp_path, make_frames):
    frames = make_frames(2, H, W)
    path = tmp_path / "zero_ts.ser"
    write_ser(path, frames)
    with open(path, "ab") as f:
        f.write(bytes(8 * len(frames)))
    with SerReader(path) as src:
        assert src.timestamps() is None


def test_ticks_conversion():
    assert unix_to_ticks(0.0) == 621_355_968_000_000_000
    assert ticks_to_unix(unix_to_ticks(T0)) == pytest.approx(T0, abs=1e-7)
    np.testing.assert_allclose(
        ticks_to_unix(np.array([unix_to_ticks(1.5), unix_to_ticks(2.5)])), [1.5, 2.5]
    )


# -- bad files --------------------------------------------------------------------------


@pytest.fixture
def good_ser(tmp_path, make_frames):
    path = tmp_path / "good.ser"
    write_ser(path, make_frames(4, H, W), timestamps=[T0 + k for k in range(4)])
    return path


def test_truncated_file(good_ser):
    data = good_ser.read_bytes()
    good_ser.write_bytes(data[: HEADER_SIZE + 2 * H * W + 100])  # 2.x frames of 4
    with pytest.raises(SourceError) as err:
        SerReader(good_ser)
    msg = str(err.value)
    assert str(good_ser) in msg
    assert "truncated: header says 4 frames but only 2 complete frames fit" in msg
    with SerReader(good_ser, strict=False) as src:
        assert len(src) == 2
        assert src.timestamps() is None
        assert src[-1].shape == (H, W)


@pytest.mark.parametrize("extra", [5, 8 * 4 + 1, H * W + 8 * 4])
def test_file_larger_than_header_says(good_ser, extra):
    with open(good_ser, "r+b") as f:
        f.truncate(HEADER_SIZE + 4 * H * W + extra)
    with pytest.raises(SourceError, match="file size disagrees with header") as err:
        SerReader(good_ser)
    assert str(good_ser) in str(err.value)
    with SerReader(good_ser, strict=False) as src:
        assert len(src) == 4
        assert src.timestamps() is None


def test_header_zero_frames_recovered_when_not_strict(good_ser):
    patch_int(good_ser, FRAME_COUNT_OFFSET, 0)
    with pytest.raises(SourceError, match="header says 0 frames"):
        SerReader(good_ser)
    with SerReader(good_ser, strict=False) as src:
        assert len(src) == 4  # the trailer's 32 bytes are taken as the 4 frames' timestamps


def test_salvage_says_what_the_header_claimed_and_what_was_read(good_ser):
    with SerReader(good_ser) as src:
        assert "salvaged" not in src.info.metadata
    patch_int(good_ser, FRAME_COUNT_OFFSET, 0)
    with SerReader(good_ser, strict=False) as src:
        assert src.info.metadata["salvaged"] == (
            "header says 0 frames (a capture cut off before it wrote the count); the 4 "
            "complete frames the file holds and their timestamps are read"
        )
        np.testing.assert_allclose(src.timestamps(), [T0 + k for k in range(4)])
    with open(good_ser, "ab") as f:
        f.write(bytes(5))
    with SerReader(good_ser, strict=False) as src:
        assert len(src) == 4
        assert src.timestamps() is None
        assert src.info.metadata["salvaged"] == (
            "header says 0 frames (a capture cut off before it wrote the count); the 4 "
            "complete frames the file holds are read, and 37 bytes of an incomplete frame "
            "after them are ignored"
        )
    patch_int(good_ser, FRAME_COUNT_OFFSET, 9)
    with SerReader(good_ser, strict=False) as src:
        assert len(src) == 4
        assert src.info.metadata["header_frames"] == 9
        assert src.info.metadata["salvaged"] == (
            "header says 9 frames but the file holds 4 complete frames (cut off); 4 frames "
            "are read, and 37 bytes of an incomplete frame after them are ignored"
        )


@pytest.fixture
def cut_ser(tmp_path, make_frames):
    """A recording cut off in its fifth frame (no trailer: it is written at the end)."""
    frames = make_frames(5, H, W)
    path = tmp_path / "cut.ser"
    write_ser(path, frames)
    with open(path, "r+b") as f:
        f.truncate(HEADER_SIZE + 4 * H * W + 100)
    return path, frames[:4]


@pytest.mark.parametrize("claimed", [0, 4, 5, 9])
def test_repair_header(cut_ser, claimed):
    path, frames = cut_ser
    patch_int(path, FRAME_COUNT_OFFSET, claimed)
    assert repair_header(path) == (
        f"{path}: header FrameCount {claimed} -> 4; 100 bytes after the last complete frame "
        "were cut off"
    )
    assert path.stat().st_size == HEADER_SIZE + frames.nbytes
    with SerReader(path) as src:  # strict: valid for every reader now
        np.testing.assert_array_equal(np.stack(list(src)), frames)
    assert repair_header(path) == f"{path}: nothing to repair: the header's 4 frames match the file"


def test_repair_header_keeps_the_timestamps(good_ser):
    patch_int(good_ser, FRAME_COUNT_OFFSET, 0)
    size = good_ser.stat().st_size
    assert repair_header(good_ser) == f"{good_ser}: header FrameCount 0 -> 4"
    assert good_ser.stat().st_size == size
    with SerReader(good_ser) as src:
        np.testing.assert_allclose(src.timestamps(), [T0 + k for k in range(4)])


def test_repair_header_keeps_more_than_a_frame_of_unknown_bytes(good_ser):
    with open(good_ser, "ab") as f:
        f.write(bytes(H * W + 1))
    before = good_ser.read_bytes()
    with pytest.raises(SourceError, match=f"{H * W + 1 + 32} bytes follow the 4 frames"):
        repair_header(good_ser)
    assert good_ser.read_bytes() == before


@pytest.mark.parametrize("layout", ["mono", "rgb"])
@pytest.mark.parametrize("bit_depth", [8, 16])
def test_file_shrinking_while_read_is_an_error_not_a_signal(tmp_path, make_frames, layout,
                                                           bit_depth):
    frames = make_frames(4, H, W, layout=layout, bit_depth=bit_depth)
    path = tmp_path / "shrinks.ser"
    write_ser(path, frames, layout=layout, bit_depth=bit_depth)
    with SerReader(path) as src:
        np.testing.assert_array_equal(src[0], frames[0])
        with open(path, "r+b") as f:
            f.truncate(HEADER_SIZE + frames[0].nbytes + 10)
        np.testing.assert_array_equal(src[0], frames[0])  # still whole in the file
        with pytest.raises(SourceError) as err:
            src[2]
    end = HEADER_SIZE + 3 * frames[0].nbytes
    assert str(err.value) == (
        f"{path}: the file shrank while it was read: frame 2 ends at byte {end}, the file "
        f"had {HEADER_SIZE + frames.nbytes} bytes when it was opened and has "
        f"{HEADER_SIZE + frames[0].nbytes + 10} bytes now (truncated or rewritten by another "
        f"program?)"
    )


def test_file_replaced_while_read_keeps_the_opened_one(tmp_path, make_frames):
    frames = make_frames(3, H, W)
    path = tmp_path / "replaced.ser"
    write_ser(path, frames)
    with SerReader(path) as src:
        path.unlink()  # a capture program writing a new file of the same name
        write_ser(path, frames[:1] // 2)
        np.testing.assert_array_equal(np.stack(list(src)), frames)


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (WIDTH_OFFSET, 0, "ImageWidth is 0, must be positive"),
        (HEIGHT_OFFSET, -5, "ImageHeight is -5, must be positive"),
        (DEPTH_OFFSET, 0, "PixelDepthPerPlane is 0, must be 1..16"),
        (DEPTH_OFFSET, -8, "PixelDepthPerPlane is -8"),
        (DEPTH_OFFSET, 17, "PixelDepthPerPlane is 17"),
        (FRAME_COUNT_OFFSET, -1, "FrameCount is -1"),
        (COLOR_ID_OFFSET, 16, r"colour ID 16 \(CYYM\) is not supported"),
        (COLOR_ID_OFFSET, 19, r"colour ID 19 \(MYYC\) is not supported"),
        (COLOR_ID_OFFSET, 42, r"colour ID 42 \(unknown\) is not supported"),
    ],
)
def test_bad_header_fields(good_ser, offset, value, message):
    patch_int(good_ser, offset, value)
    with pytest.raises(SourceError, match=message) as err:
        SerReader(good_ser, strict=False)
    assert str(good_ser) in str(err.value)


def test_bad_file_id(good_ser):
    data = bytearray(good_ser.read_bytes())
    data[:14] = b"NOT-A-SER-FILE"
    good_ser.write_bytes(bytes(data))
    with pytest.raises(SourceError, match="not a SER file: FileID is b'NOT-A-SER-FILE'"):
        open_source(good_ser)


def test_shorter_than_header(tmp_path):
    path = tmp_path / "tiny.ser"
    path.write_bytes(b"LUCAM-RECORDER" + bytes(20))
    with pytest.raises(SourceError, match="34 bytes is shorter than the 178-byte header"):
        SerReader(path)


def test_missing_file(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        open_source(tmp_path / "nope.ser")
    with pytest.raises(SourceError, match="cannot open"):
        SerReader(tmp_path / "nope.ser")


def test_killed_recording(tmp_path, make_frames):
    """A writer killed mid-frame leaves a file that reads back to its last whole frame."""
    frames = make_frames(5, H, W, bit_depth=16)
    np.save(tmp_path / "frames.npy", frames)
    path = tmp_path / "killed.ser"
    child = textwrap.dedent(
        f"""
        import os, signal
        import numpy as np
        from live_stack.io.ser import SerWriter
        frames = np.load({str(tmp_path / "frames.npy")!r})
        w = SerWriter({str(path)!r}, width={W}, height={H}, bit_depth=16)
        for k, f in enumerate(frames):
            w.write(f, timestamp={T0} + k)
        with open({str(path)!r}, "ab") as f:   # half of a sixth frame reached the disk
            f.write(frames[0].tobytes()[: frames[0].nbytes // 2])
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert path.stat().st_size == HEADER_SIZE + frames.nbytes + frames[0].nbytes // 2
    with pytest.raises(SourceError, match="header says 5 frames"):
        SerReader(path)
    with SerReader(path, strict=False) as src:
        assert len(src) == 5
        np.testing.assert_array_equal(np.stack(list(src)), frames)
        assert src.timestamps() is None


# -- writer argument checks -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 0}, "width must be a positive integer"),
        ({"height": -1}, "height must be a positive integer"),
        ({"layout": "bgr"}, "layout must be one of"),
        ({"bit_depth": 7}, "bit_depth must be 8..16"),
        ({"bit_depth": 17}, "bit_depth must be 8..16"),
        ({"observer": "x" * 41}, "observer is 41 bytes"),
        ({"telescope": "é" * 21}, "telescope is 42 bytes"),
    ],
)
def test_writer_rejects_bad_arguments(tmp_path, kwargs, message):
    args = {"width": W, "height": H} | kwargs
    with pytest.raises(ValueError, match=message):
        SerWriter(tmp_path / "x.ser", **args)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.zeros((H, W + 1), np.uint16), "shape"),
        (np.zeros((H, W, 3), np.uint16), "shape"),
        (np.zeros((H, W), np.uint8), "dtype uint8"),
        (np.zeros((H, W), np.float32), "dtype float32"),
        (np.full((H, W), 4096, np.uint16), "value 4096, above the file's 12-bit range"),
        ([[0]], "numpy array"),
    ],
)
def test_writer_rejects_bad_frames(tmp_path, frame, message):
    with SerWriter(tmp_path / "x.ser", width=W, height=H, bit_depth=12) as sw:
        with pytest.raises(ValueError, match=message):
            sw.write(frame)
        with pytest.raises(ValueError, match="timestamp must be finite"):
            sw.write(np.zeros((H, W), np.uint16), timestamp=float("nan"))
        assert sw.frames_written == 0
    with pytest.raises(ValueError, match="closed"):
        sw.write(np.zeros((H, W), np.uint16))


def test_frame_count_current_after_every_frame(tmp_path, make_frames):
    frames = make_frames(3, H, W)
    path = tmp_path / "live.ser"
    with SerWriter(path, width=W, height=H) as sw:
        for k, f in enumerate(frames, start=1):
            sw.write(f)
            count = struct.unpack_from("<i", path.read_bytes(), FRAME_COUNT_OFFSET)[0]
            assert count == k
            assert os.path.getsize(path) == HEADER_SIZE + k * f.nbytes
            with SerReader(path) as src:  # readable while the recording goes on
                np.testing.assert_array_equal(src[-1], f)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (1, 7), (2, 3), (5, 1)])
@pytest.mark.parametrize("bit_depth", [8, 16])
def test_tiny_frames(tmp_path, height, width, bit_depth):
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    frames = (np.arange(3 * height * width).reshape(3, height, width) * 1009 % 60000).astype(dtype)
    path = tmp_path / "tiny.ser"
    write_ser(path, frames, bit_depth=bit_depth, timestamps=[T0, T0 + 1, T0 + 2])
    with SerReader(path) as src:
        assert src.info.shape == (height, width)
        np.testing.assert_array_equal(np.stack(list(src)), frames)
        np.testing.assert_allclose(src.timestamps(), [T0, T0 + 1, T0 + 2], atol=1e-6)
