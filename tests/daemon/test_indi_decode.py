"""Decoding INDI BLOBs (pure functions), the BLOB handler and the source's options.

Known-answer data built here: raw stream frames, FITS files written with astropy (plain,
tile-compressed, zlib- and gzip-compressed), PNG/JPEG images from OpenCV. None of this
needs an INDI server.
"""

from __future__ import annotations

import gzip
import io
import warnings
import zlib
from datetime import datetime, timezone
from typing import Any

import cv2
import numpy as np
import pytest
import zmq
from astropy.io import fits

from daemon.protocol import decode_image
from daemon.sources.indi import (
    EXIT_USAGE,
    Backoff,
    BlobHandler,
    FrameSender,
    IndiParams,
    SourceCounters,
    main,
)
from daemon.sources.indi_decode import (
    BlobDecodeError,
    RawGeometry,
    ReceivedBlob,
    decode_blob,
    decode_fits,
    decode_raw,
    inflate,
    parse_fits_time,
    shift_bayer,
    split_format,
)

H, W = 10, 14
#: A fixed capture time: 2024-05-01T21:03:04.250 UTC.
T0 = datetime(2024, 5, 1, 21, 3, 4, 250000, tzinfo=timezone.utc).timestamp()
#: Seconds a test waits for a frame on a socket.
WAIT = 5.0


def _ramp(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    top = np.iinfo(dtype).max
    return (np.arange(int(np.prod(shape)), dtype=np.int64) * 997 % (top + 1)).astype(
        dtype).reshape(shape)


def _fits_bytes(data: np.ndarray, **cards: Any) -> bytes:
    hdu = fits.PrimaryHDU(data)
    for key, value in cards.items():
        hdu.header[key.replace("_", "-")] = value
    buf = io.BytesIO()
    hdu.writeto(buf)
    return buf.getvalue()


# --- raw stream frames ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("bayer", [None, "RGGB", "GBRG"])
def test_raw_mono_and_bayer(dtype: Any, bayer: str | None) -> None:
    image = _ramp((H, W), dtype)
    frame = decode_raw(image.astype(np.dtype(dtype).newbyteorder("<")).tobytes(),
                       RawGeometry(W, H, bayer))
    np.testing.assert_array_equal(frame.image, image)
    assert frame.image.dtype == dtype
    assert frame.bayer == bayer
    assert frame.bit_depth == np.dtype(dtype).itemsize * 8
    assert frame.capture_time is None and frame.exposure is None


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_raw_rgb_ignores_the_bayer_pattern(dtype: Any) -> None:
    image = _ramp((H, W, 3), dtype)
    frame = decode_blob(image.astype(np.dtype(dtype).newbyteorder("<")).tobytes(), ".stream",
                        geometry=RawGeometry(W, H, "RGGB"))
    np.testing.assert_array_equal(frame.image, image)
    assert frame.bayer is None  # a debayered (RGB) frame is no mosaic


@pytest.mark.parametrize("length", [0, 1, W * H - 1, W * H * 4, W * H * 5 + 3])
def test_raw_of_the_wrong_length_is_an_error(length: int) -> None:
    with pytest.raises(BlobDecodeError, match=r"14x10|empty"):
        decode_blob(bytes(length), ".stream", geometry=RawGeometry(W, H))


def test_raw_without_geometry_is_an_error() -> None:
    with pytest.raises(BlobDecodeError, match="frame size"):
        decode_blob(bytes(W * H), ".stream")


def test_compressed_stream_with_trailing_padding() -> None:
    """indiserver 1.9 sends the compressor's whole buffer: bytes after the end count not."""
    image = _ramp((H, W), np.uint8)
    packed = zlib.compress(image.tobytes()) + b"\x00\x17" * 100
    frame = decode_blob(packed, ".stream.z", size=image.nbytes, geometry=RawGeometry(W, H))
    np.testing.assert_array_equal(frame.image, image)


def test_compressed_stream_errors() -> None:
    image = _ramp((H, W), np.uint8)
    packed = zlib.compress(image.tobytes())
    with pytest.raises(BlobDecodeError, match="truncated"):
        decode_blob(packed[:-4], ".stream.z", geometry=RawGeometry(W, H))
    with pytest.raises(BlobDecodeError, match="announced"):
        decode_blob(packed, ".stream.z", size=image.nbytes + 1, geometry=RawGeometry(W, H))
    with pytest.raises(BlobDecodeError, match="does not decompress"):
        decode_blob(b"not zlib at all", ".stream.z", geometry=RawGeometry(W, H))


# --- FITS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_fits_with_header(dtype: Any) -> None:
    image = _ramp((H, W), np.uint16).astype(dtype)
    blob = _fits_bytes(image, EXPTIME=0.005, DATE_OBS="2024-05-01T21:03:04.250",
                       ROWORDER="TOP-DOWN")
    frame = decode_blob(blob, ".fits")
    np.testing.assert_array_equal(frame.image, image)
    assert frame.image.dtype == dtype and frame.image.dtype.isnative
    assert frame.exposure == pytest.approx(0.005)
    assert frame.capture_time == pytest.approx(T0, abs=1e-6)
    assert frame.bayer is None


@pytest.mark.parametrize(("pattern", "xoff", "yoff", "expected"), [
    ("RGGB", 0, 0, "RGGB"), ("RGGB", 1, 0, "GRBG"), ("RGGB", 0, 1, "GBRG"),
    ("RGGB", 1, 1, "BGGR"), ("bggr", 0, 0, "BGGR"),
])
def test_fits_bayer_pattern_and_offsets(pattern: str, xoff: int, yoff: int,
                                        expected: str) -> None:
    blob = _fits_bytes(_ramp((H, W), np.uint16), BAYERPAT=pattern, XBAYROFF=xoff,
                       YBAYROFF=yoff)
    assert decode_blob(blob, ".fits").bayer == expected


def test_fits_bottom_up_rows_are_flipped_and_rgb_cubes_interleaved() -> None:
    image = _ramp((H, W), np.uint16)
    assert np.array_equal(decode_fits(_fits_bytes(image, ROWORDER="BOTTOM-UP")).image,
                          image[::-1])
    rgb = _ramp((H, W, 3), np.uint8)
    frame = decode_fits(_fits_bytes(np.moveaxis(rgb, -1, 0).copy(), BAYERPAT="RGGB"))
    np.testing.assert_array_equal(frame.image, rgb)
    assert frame.bayer is None


def test_fits_exposure_keyword_and_date_plus_time() -> None:
    blob = _fits_bytes(_ramp((H, W), np.uint8), EXPOSURE=2.5, DATE_OBS="2024-05-01",
                       TIME_OBS="21:03:04.25")
    frame = decode_blob(blob, ".fit")
    assert frame.exposure == 2.5
    assert frame.capture_time == pytest.approx(T0, abs=1e-6)


def test_fits_signed_integers_are_kept_when_in_range() -> None:
    image = _ramp((H, W), np.uint8).astype(np.int32)
    frame = decode_fits(_fits_bytes(image))
    assert frame.image.dtype == np.uint16
    np.testing.assert_array_equal(frame.image, image)
    with pytest.raises(BlobDecodeError, match="outside 0..65535"):
        decode_fits(_fits_bytes(image - 5))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_tile_compressed_fits_with_padding(dtype: Any) -> None:
    image = _ramp((H * 4, W * 4), dtype)
    comp = fits.CompImageHDU(image, compression_type="RICE_1")
    comp.header["BAYERPAT"] = "GRBG"
    comp.header["EXPTIME"] = 0.01
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy notes on unsigned integer compression
        fits.HDUList([fits.PrimaryHDU(), comp]).writeto(buf)
    blob = buf.getvalue() + bytes(5000)  # indiserver 1.9 pads it to its buffer size
    frame = decode_blob(blob, ".fits.fz", size=image.nbytes)
    np.testing.assert_array_equal(frame.image, image)
    assert frame.bayer == "GRBG" and frame.exposure == pytest.approx(0.01)


@pytest.mark.parametrize(("fmt", "pack"), [(".fits.z", zlib.compress),
                                           (".fits.gz", gzip.compress)])
def test_compressed_whole_fits(fmt: str, pack: Any) -> None:
    image = _ramp((H, W), np.uint16)
    frame = decode_blob(pack(_fits_bytes(image, EXPTIME=1.0)), fmt)
    np.testing.assert_array_equal(frame.image, image)


@pytest.mark.parametrize("blob", [b"SIMPLE  =  garbage" + bytes(3000), b"\x00" * 2880,
                                  b"NAXIS   = 2"])
def test_corrupt_fits_is_an_error(blob: bytes) -> None:
    with pytest.raises(BlobDecodeError, match="FITS"):
        decode_blob(blob, ".fits")


def test_fits_without_image_is_an_error() -> None:
    buf = io.BytesIO()
    fits.PrimaryHDU().writeto(buf)
    with pytest.raises(BlobDecodeError, match="no image"):
        decode_blob(buf.getvalue(), ".fits")


# --- encoded images ---------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "dtype"), [((H, W), np.uint8), ((H, W), np.uint16),
                                              ((H, W, 3), np.uint8)])
def test_png_blob_known_answer(shape: tuple[int, ...], dtype: Any) -> None:
    image = _ramp(shape, dtype)  # RGB order
    bgr = image[..., ::-1] if image.ndim == 3 else image
    ok, png = cv2.imencode(".png", np.ascontiguousarray(bgr))
    assert ok
    frame = decode_blob(png.tobytes(), ".png")
    np.testing.assert_array_equal(frame.image, image)


def test_mjpeg_stream_frame() -> None:
    image = np.full((16, 16, 3), (200, 40, 10), np.uint8)
    ok, jpg = cv2.imencode(".jpg", image[..., ::-1].copy())
    frame = decode_blob(jpg.tobytes(), ".stream_jpg")
    assert frame.image.shape == (16, 16, 3)
    assert np.abs(frame.image.astype(int) - image).max() < 8  # lossy, but red stays red
    with pytest.raises(BlobDecodeError, match="not a readable"):
        decode_blob(b"\xff\xd8 not a jpeg", ".stream_jpg")


# --- formats, times, patterns -----------------------------------------------------------


@pytest.mark.parametrize(("fmt", "expected"), [
    (".fits", ("fits", None)), (".FITS.Z", ("fits", "zlib")), (".stream.z", ("stream", "zlib")),
    (".fits.fz", ("fits.fz", None)), (".fits.gz", ("fits", "gzip")), ("bin", ("bin", None)),
])
def test_split_format(fmt: str, expected: tuple[str, str | None]) -> None:
    assert split_format(fmt) == expected


@pytest.mark.parametrize("fmt", ["", ".", ".avi", ".ser"])
def test_unknown_formats_are_errors(fmt: str) -> None:
    with pytest.raises(BlobDecodeError, match="format"):
        decode_blob(b"data", fmt, geometry=RawGeometry(2, 2))


@pytest.mark.parametrize(("text", "expected"), [
    ("2024-05-01T21:03:04.250", T0), ("2024-05-01T21:03:04.25Z", T0),
    ("2024-05-01 21:03:04.250000", T0), ("2024-05-01T21:03:04", T0 - 0.25),
    ("not a date", None), ("2024-13-01T00:00:00", None), ("", None),
])
def test_parse_fits_time(text: str, expected: float | None) -> None:
    got = parse_fits_time(text)
    assert got == (pytest.approx(expected, abs=1e-6) if expected is not None else None)


def test_inflate_rejects_unknown_methods() -> None:
    with pytest.raises(ValueError, match="method"):
        inflate(b"", method="lzma")


@pytest.mark.parametrize(("pattern", "dx", "dy", "expected"), [
    ("RGGB", 0, 0, "RGGB"), ("RGGB", 1, 0, "GRBG"), ("RGGB", 0, 1, "GBRG"),
    ("RGGB", 1, 1, "BGGR"), ("GRBG", 1, 0, "RGGB"), ("BGGR", 2, 3, "GRBG"),
])
def test_shift_bayer(pattern: str, dx: int, dy: int, expected: str) -> None:
    assert shift_bayer(pattern, dx, dy) == expected


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"width": 0, "height": 4}, "width"), ({"width": 4, "height": -1}, "height"),
    ({"width": 4, "height": 4, "bayer": "CYYM"}, "bayer"), ({"width": 4.0, "height": 4}, "width"),
])
def test_raw_geometry_checks(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RawGeometry(**kwargs)


# --- the BLOB handler: decode, count, push ------------------------------------------------


@pytest.fixture
def pull_and_sender() -> Any:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.bind("tcp://127.0.0.1:*")
    sender = FrameSender(ctx, pull.getsockopt_string(zmq.LAST_ENDPOINT), hwm=4)
    yield pull, sender
    sender.close()
    pull.close(linger=0)
    ctx.term()


def _blob(data: bytes, fmt: str, seq: int, size: int = 0) -> ReceivedBlob:
    return ReceivedBlob(data=data, fmt=fmt, size=size or len(data), arrival=T0 + 1, seq=seq)


def test_handler_skips_and_counts_undecodable_blobs(pull_and_sender: Any) -> None:
    pull, sender = pull_and_sender
    counters = SourceCounters()
    handler = BlobHandler(sender.send, source_id="indi:test", counters=counters)
    geometry = RawGeometry(W, H, "BGGR")
    assert not handler.handle(_blob(b"garbage", ".fits", 0))
    assert not handler.handle(_blob(bytes(7), ".stream", 1), geometry=geometry)
    assert not handler.handle(_blob(b"x", ".avi", 2))
    image = _ramp((H, W), np.uint8)
    assert handler.handle(_blob(image.tobytes(), ".stream", 3), geometry=geometry,
                          exposure=0.002, meta={"mode": "stream"})
    assert counters.received == 4 and counters.undecodable == 3 and counters.sent == 1
    assert pull.poll(WAIT * 1000)
    header, got = decode_image(pull.recv_multipart())
    np.testing.assert_array_equal(got, image)
    assert header["seq"] == 3  # the skipped BLOBs show as a gap
    assert header["layout"] == "BGGR" and header["exposure"] == pytest.approx(0.002)
    assert header["time"] == pytest.approx(T0 + 1)  # a stream frame: its arrival time
    assert header["source"] == "indi:test"
    assert header["meta"]["undecodable"] == 3 and header["meta"]["mode"] == "stream"
    assert not pull.poll(100)  # nothing was sent for the bad BLOBs


def test_handler_takes_time_and_exposure_from_fits(pull_and_sender: Any) -> None:
    pull, sender = pull_and_sender
    handler = BlobHandler(sender.send, source_id="s", counters=SourceCounters())
    image = _ramp((H, W), np.uint16)
    blob = _fits_bytes(image, EXPTIME=0.5, DATE_OBS="2024-05-01T21:03:04.250", BAYERPAT="RGGB")
    assert handler.handle(_blob(blob, ".fits", 0), exposure=9.0)
    assert pull.poll(WAIT * 1000)
    header, got = decode_image(pull.recv_multipart())
    np.testing.assert_array_equal(got, image)
    assert header["time"] == pytest.approx(T0, abs=1e-6)
    assert header["exposure"] == pytest.approx(0.5)
    assert header["layout"] == "RGGB" and header["dtype"] == "uint16"


def test_handler_counts_frames_the_socket_cannot_take() -> None:
    """No daemon: the PUSH socket fills up to its high-water mark, then frames are dropped."""
    ctx = zmq.Context()
    sender = FrameSender(ctx, "tcp://127.0.0.1:9", hwm=2)  # nothing listens on port 9
    try:
        counters = SourceCounters()
        handler = BlobHandler(sender.send, source_id="s", counters=counters)
        image = _ramp((H, W), np.uint8).tobytes()
        results = [handler.handle(_blob(image, ".stream", k), geometry=RawGeometry(W, H))
                   for k in range(10)]
        # a couple of frames are queued for the absent peer, the rest dropped, none blocked
        assert results[:2] == [True, True] and not any(results[4:])
        assert counters.sent == sum(results) and counters.dropped_send == 10 - sum(results)
    finally:
        sender.close()
        ctx.term()


# --- options ------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"port": 0}, "port"), ({"port": 70000}, "port"), ({"host": ""}, "host"),
    ({"mode": "video"}, "mode"), ({"exposure": 0.0}, "exposure"), ({"gain": -1.0}, "gain"),
    ({"binning": 0}, "binning"), ({"roi": (0, 0, 0, 10)}, "roi"), ({"roi": (1, 2, 3)}, "roi"),
    ({"device_timeout": 0}, "device_timeout"), ({"queue_size": 0}, "queue_size"),
    ({"backoff_initial": 2.0, "backoff_max": 1.0}, "backoff_max"),
    ({"endpoint": "nowhere"}, "endpoint"),
])
def test_params_checks_name_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        IndiParams(**kwargs)


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    b = Backoff(0.5, 3.0)
    assert [b.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    b.reset()
    assert b.next() == 0.5
    with pytest.raises(ValueError, match="initial"):
        Backoff(0.0, 1.0)


@pytest.mark.parametrize("argv", [
    ["--binning", "0"], ["--roi", "0", "0", "-5", "10"], ["--exposure", "-1"],
    ["--to", "not-an-endpoint"], ["--port", "0"], ["--keys", "/nonexistent/keys"],
])
def test_bad_command_lines_exit_with_usage_status(argv: list[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "error:" in err


def test_unknown_mode_is_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--mode", "video"])
    assert exc.value.code == EXIT_USAGE
    assert "--mode" in capsys.readouterr().err
