"""SER video files: a memory-mapped reader and a crash-safe writer.

The SER format (version 3, as used by Lucam Recorder, FireCapture, SharpCap, PIPP, ...)
is a 178-byte little-endian header, the frames back to back with no padding, and an
optional trailer of one 8-byte little-endian timestamp per frame.

Header layout (offset, size, field):

====== ==== =====================================================================
0      14   FileID, ``b"LUCAM-RECORDER"``
14     4    LuID (unused, 0)
18     4    ColorID: 0 mono, 8..11 Bayer RGGB/GRBG/GBRG/BGGR, 16..19 CMY mosaics,
            100 RGB, 101 BGR
22     4    LittleEndian: byte order of 16-bit samples (see below)
26     4    ImageWidth
30     4    ImageHeight
34     4    PixelDepthPerPlane: 1..8 -> one byte per sample, 9..16 -> two bytes
38     4    FrameCount
42     40   Observer, 82 40 Instrument, 122 40 Telescope (text, NUL padded)
162    8    DateTime (local time), 170 8 DateTime_UTC, both in .NET ticks
====== ==== =====================================================================

Timestamps are .NET ticks: 100 ns intervals since 0001-01-01 00:00 UTC.

**The byte order of 16-bit samples.** The specification says ``LittleEndian = 1`` means
little-endian samples, but many writers set the flag the wrong way round (the data is
almost always little-endian whatever the flag says), so the reader decides from the data
and uses the flag only when the data cannot tell. The rule, applied to a central band of
rows of up to three frames (the first, the middle and the last):

1. *Pixel depth.* With ``PixelDepthPerPlane = d < 16`` a correct reading has either all
   values below ``2**d`` (LSB-aligned) or the ``16 - d`` low bits all zero (MSB-aligned).
   If exactly one of the two byte orders passes, it is taken.
2. *Smoothness.* In a correct reading the high byte of neighbouring samples changes
   slowly while the low byte carries the fine detail and the noise. The mean absolute
   difference of each byte between a row and the row two below it (the same colour in
   every layout) is computed; if one byte changes at least
   :data:`BYTE_ORDER_SMOOTHNESS_RATIO` times less than the other it is the high byte.
3. Otherwise (flat or pure-noise data) the flag is trusted as the specification defines it.

``info.metadata["byte_order"]`` reports the order used and ``["byte_order_rule"]`` which
rule decided.

**Reading.** The reader never reads the whole file and never maps it: each frame is read
with ``preadv`` straight into the array returned (``SerReader[i]`` always returns a new
array; a big-endian or BGR file goes through one reused buffer first), so the resident set
stays flat however large the file (the kernel keeps the pages in its page cache), and no
page of the file is ever touched through memory. A memory-mapped reader turns a file that
shrinks under it (truncated, or re-created in place by a capture program) into SIGBUS,
which kills the process; here a read that ends before the frame does raises
:class:`~live_stack.io.SourceError` naming the file, the frame and both sizes. A file
that is replaced (deleted and written anew under the same name) keeps being read as the
file that was opened.

**Crash-cut recordings.** With ``strict=False`` a file whose header claims more frames
than it holds, or 0 frames (a capture program killed before it wrote the count), reads
as the complete frames it holds; ``info.metadata["salvaged"]`` then says in one sentence
what the header claimed and what was read, for the commands to print, and
:func:`repair_header` rewrites the header's FrameCount (``live-stack repair``).

**Recording safety.** :class:`SerWriter` writes each frame with an unbuffered write and
then rewrites the header's FrameCount in place, so a recording killed at any moment reads
back up to its last complete frame with ``SerReader(path, strict=False)``.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import struct
import sys
import threading
import time
from collections.abc import Sequence

import numpy as np

from live_stack.io import BAYER_PATTERNS, FrameSource, SourceError, SourceInfo

__all__ = [
    "SerReader",
    "SerWriter",
    "HEADER_SIZE",
    "FILE_ID",
    "repair_header",
    "ticks_to_unix",
    "unix_to_ticks",
]

#: The FileID every SER file starts with.
FILE_ID = b"LUCAM-RECORDER"

#: The header's struct layout (little-endian, no padding) and size in bytes.
HEADER_FORMAT = "<14s7i40s40s40sqq"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)
assert HEADER_SIZE == 178

#: Byte offset of the FrameCount field, rewritten by the writer after every frame.
FRAME_COUNT_OFFSET = 38
#: Byte offset of the DateTime and DateTime_UTC fields (two int64).
DATETIME_OFFSET = 162

#: Length of each text field (Observer, Instrument, Telescope) in bytes.
TEXT_FIELD_SIZE = 40

#: Size of one trailer timestamp in bytes.
TIMESTAMP_SIZE = 8

#: .NET ticks per second (a tick is 100 ns).
TICKS_PER_SECOND = 10_000_000
#: .NET ticks at the Unix epoch, 1970-01-01 00:00 UTC.
UNIX_EPOCH_TICKS = 621_355_968_000_000_000

#: Largest PixelDepthPerPlane stored in one byte per sample.
MAX_8BIT_DEPTH = 8
#: Largest PixelDepthPerPlane supported (two bytes per sample).
MAX_DEPTH = 16

#: ColorID -> layout for the supported IDs; BGR (101) is returned in RGB order.
COLOR_ID_MONO = 0
COLOR_ID_RGB = 100
COLOR_ID_BGR = 101
COLOR_IDS: dict[int, str] = {
    COLOR_ID_MONO: "mono",
    8: "RGGB",
    9: "GRBG",
    10: "GBRG",
    11: "BGGR",
    COLOR_ID_RGB: "rgb",
    COLOR_ID_BGR: "rgb",
}
#: layout -> ColorID used by the writer.
LAYOUT_COLOR_IDS: dict[str, int] = {"mono": COLOR_ID_MONO, "rgb": COLOR_ID_RGB} | {
    p: 8 + k for k, p in enumerate(BAYER_PATTERNS)
}
#: Names of the ColorIDs defined by the format but not supported here.
UNSUPPORTED_COLOR_IDS = {16: "CYYM", 17: "YCMY", 18: "YMCY", 19: "MYYC"}

#: Byte-order detection: one byte must vary this many times less than the other to be
#: taken as the high byte (rule 2 in the module docstring).
BYTE_ORDER_SMOOTHNESS_RATIO = 4.0
#: Byte-order detection: at most this many bytes are sampled from each frame.
BYTE_ORDER_SAMPLE_BYTES = 1 << 20

#: Whether ``os.preadv`` (a positioned read into a buffer, safe from any thread) exists;
#: elsewhere the reader seeks and reads under a lock.
_HAVE_PREADV = hasattr(os, "preadv")



def ticks_to_unix(ticks: np.ndarray | int) -> np.ndarray | float:
    """Convert .NET ticks (100 ns since 0001-01-01 UTC) to float64 Unix seconds."""
    t = np.asarray(ticks, dtype=np.int64) - np.int64(UNIX_EPOCH_TICKS)
    out = t.astype(np.float64) / TICKS_PER_SECOND
    return out if out.ndim else float(out)


def unix_to_ticks(seconds: float) -> int:
    """Convert Unix seconds to .NET ticks (100 ns since 0001-01-01 UTC)."""
    return int(round(seconds * TICKS_PER_SECOND)) + UNIX_EPOCH_TICKS


def _decode_text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace").strip()


def _count_complete(nbytes: int, frame_bytes: int) -> int:
    return max(nbytes, 0) // frame_bytes


class SerReader(FrameSource):
    """Read a SER file as a :class:`~live_stack.io.FrameSource`.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.ser`` file.
    strict : bool
        If true (the default) a file whose size does not match its header raises
        :class:`~live_stack.io.SourceError`. If false, a truncated file reads as the
        complete frames it holds, bytes after the last frame that are not a whole
        timestamp trailer are ignored (as are the timestamps), and a header that says
        0 frames is taken to mean every whole frame in the file (a writer that fills in
        the count only when it closes, killed before that).

    Raises
    ------
    SourceError
        If the file cannot be opened, its header is not a SER header or describes an
        unsupported image (colour ID, pixel depth, size), or (``strict``) the file size
        disagrees with the header.

    Notes
    -----
    Frames come back in their stored dtype (uint8 for depths up to 8, else uint16 in
    native byte order) without rescaling: a 12-bit camera's values stay in 0..4095 (or
    wherever the writer put them); ``info.bit_depth`` says how many bits are significant.
    BGR files are returned in RGB order; Bayer files are returned as the raw mosaic with
    the pattern in ``info.layout``.
    """

    def __init__(self, path: str | os.PathLike[str], *, strict: bool = True) -> None:
        self._path = os.fspath(path)
        try:
            fd = os.open(self._path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError as exc:
            raise SourceError(f"{self._path}: cannot open: {exc.strerror or exc}") from exc
        self._fd: int | None = fd
        self._lock = threading.Lock()  # serialises seek + read where there is no preadv
        self._salvaged: str | None = None  # what strict=False recovered, in one sentence
        try:
            self._size = os.fstat(fd).st_size
            if self._size < HEADER_SIZE:
                raise SourceError(
                    f"{self._path}: not a SER file: {self._size} bytes is shorter than the "
                    f"{HEADER_SIZE}-byte header"
                )
            header = self._read_bytes(0, HEADER_SIZE, "the header")
            self._parse_header(header.tobytes())
            self._frames, self._ts_offset = self._check_size(self._size, strict=strict)
            little, rule = self._detect_byte_order()
            self._timestamps = self._read_trailer()
        except BaseException:
            self._fd = None
            os.close(fd)
            raise
        self._swap = self._bytes_per_sample == 2 and little != (sys.byteorder == "little")
        meta = {
            "format": "SER",
            "observer": self._observer,
            "instrument": self._instrument,
            "telescope": self._telescope,
            "color_id": self._color_id,
            "endian_flag": self._endian_flag,
            "header_frames": self._header_frames,
            "start_time": self._start_time,
        }
        if self._bytes_per_sample == 2:
            meta["byte_order"] = "little" if little else "big"
            meta["byte_order_rule"] = rule
        if self._salvaged is not None:
            meta["salvaged"] = self._salvaged
        self._info = SourceInfo(
            path=self._path,
            width=self._width,
            height=self._height,
            frames=self._frames,
            bit_depth=self._depth,
            dtype=np.uint8 if self._bytes_per_sample == 1 else np.uint16,
            layout=self._layout,
            has_timestamps=self._timestamps is not None,
            metadata=meta,
        )

    # -- header and layout ------------------------------------------------------------

    def _parse_header(self, header: bytes) -> None:
        (
            file_id,
            _lu_id,
            color_id,
            endian_flag,
            width,
            height,
            depth,
            frames,
            observer,
            instrument,
            telescope,
            date_local,
            date_utc,
        ) = struct.unpack(HEADER_FORMAT, header)
        p = self._path
        if file_id != FILE_ID:
            raise SourceError(f"{p}: not a SER file: FileID is {file_id!r}, expected {FILE_ID!r}")
        if color_id not in COLOR_IDS:
            name = UNSUPPORTED_COLOR_IDS.get(color_id, "unknown")
            raise SourceError(
                f"{p}: colour ID {color_id} ({name}) is not supported; supported are 0 (mono), "
                f"8..11 (Bayer {', '.join(BAYER_PATTERNS)}), 100 (RGB) and 101 (BGR)"
            )
        for name, value in (("ImageWidth", width), ("ImageHeight", height)):
            if value <= 0:
                raise SourceError(f"{p}: bad header: {name} is {value}, must be positive")
        if not 1 <= depth <= MAX_DEPTH:
            raise SourceError(
                f"{p}: bad header: PixelDepthPerPlane is {depth}, must be 1..{MAX_DEPTH}"
            )
        if frames < 0:
            raise SourceError(f"{p}: bad header: FrameCount is {frames}, must be >= 0")
        self._color_id = color_id
        self._layout = COLOR_IDS[color_id]
        self._bgr = color_id == COLOR_ID_BGR
        self._planes = 3 if self._layout == "rgb" else 1
        self._endian_flag = endian_flag
        self._width, self._height, self._depth = width, height, depth
        self._header_frames = frames
        self._bytes_per_sample = 1 if depth <= MAX_8BIT_DEPTH else 2
        self._frame_samples = width * height * self._planes
        self._frame_bytes = self._frame_samples * self._bytes_per_sample
        self._observer = _decode_text(observer)
        self._instrument = _decode_text(instrument)
        self._telescope = _decode_text(telescope)
        self._start_time = ticks_to_unix(date_utc) if date_utc > 0 else None
        del date_local  # local time: redundant with DateTime_UTC

    def _check_size(self, size: int, *, strict: bool) -> tuple[int, int | None]:
        """Return (frames to read, trailer offset or None) for a file of ``size`` bytes.

        With ``strict`` false, a mismatch is described in ``self._salvaged``.
        """
        p, n, fb = self._path, self._header_frames, self._frame_bytes
        data = size - HEADER_SIZE
        needed = n * fb
        trailer = n * TIMESTAMP_SIZE
        complete = _count_complete(data, fb)
        partial = data - complete * fb
        rest = ""
        if partial:
            rest = f", and {partial} bytes of an incomplete frame after them are ignored"
        if data < needed:
            if strict:
                raise SourceError(
                    f"{p}: truncated: header says {n} frames but only {complete} complete "
                    f"frames fit in {size} bytes (frame size {fb} bytes)"
                )
            self._salvaged = (
                f"header says {n} frames but the file holds {complete} complete frames "
                f"(cut off); {complete} frames are read{rest}"
            )
            return complete, None
        extra = data - needed
        if extra == 0:
            return n, None
        if extra == trailer:
            return n, HEADER_SIZE + needed
        with_trailer = data // (fb + TIMESTAMP_SIZE)
        if n == 0 and not strict and with_trailer and data == with_trailer * (fb + TIMESTAMP_SIZE):
            self._salvaged = (
                f"header says 0 frames (a capture cut off before it wrote the count); the "
                f"{with_trailer} complete frames the file holds and their timestamps are read"
            )
            return with_trailer, HEADER_SIZE + with_trailer * fb
        if n == 0 and not strict:
            self._salvaged = (
                f"header says 0 frames (a capture cut off before it wrote the count); the "
                f"{complete} complete frames the file holds are read{rest}"
            )
            return complete, None
        if strict:
            raise SourceError(
                f"{p}: file size disagrees with header: header says {n} frames of {fb} bytes, "
                f"which leaves {extra} extra bytes; expected 0 or a {trailer}-byte timestamp "
                f"trailer (a recording that was cut off? strict=False reads the complete frames)"
            )
        self._salvaged = (
            f"header says {n} frames and {n} frames are read; the {extra} bytes after them "
            f"are not a {trailer}-byte timestamp trailer (an incomplete frame?) and are ignored"
        )
        return n, None

    def _read_trailer(self) -> np.ndarray | None:
        if self._ts_offset is None or self._frames == 0:
            return None
        raw = self._read_bytes(self._ts_offset, self._frames * TIMESTAMP_SIZE, "the timestamps")
        ticks = raw.view("<i8").astype(np.int64)
        if not np.all(ticks > 0):
            return None  # some writers leave the trailer zeroed
        return np.asarray(ticks_to_unix(ticks), dtype=np.float64)

    # -- byte order -------------------------------------------------------------------

    def _sample_bytes(self, index: int) -> np.ndarray:
        """A central band of rows of frame ``index`` as (rows, samples_per_row, 2) bytes."""
        row_bytes = self._frame_bytes // self._height
        rows = min(self._height, max(2, BYTE_ORDER_SAMPLE_BYTES // row_bytes))
        start_row = ((self._height - rows) // 2) & ~1  # even: keeps the Bayer phase
        offset = HEADER_SIZE + index * self._frame_bytes + start_row * row_bytes
        raw = self._read_bytes(offset, rows * row_bytes, f"frame {index}")
        return raw.reshape(rows, row_bytes // 2, 2)

    def _detect_byte_order(self) -> tuple[bool, str]:
        """Return (little-endian?, rule that decided); see the module docstring."""
        flag_little = self._endian_flag != 0
        if self._bytes_per_sample == 1 or self._frames == 0:
            return flag_little, "flag"
        indices = sorted({0, self._frames // 2, self._frames - 1})
        bands = [self._sample_bytes(i) for i in indices]
        depth = self._depth
        if depth < MAX_DEPTH:
            low_mask = (1 << (MAX_DEPTH - depth)) - 1

            def plausible(v: np.ndarray) -> bool:
                return bool(v.max() < (1 << depth) or not np.any(v & low_mask))

            fits_le = all(plausible(b.view("<u2")) for b in bands)
            fits_be = all(plausible(b.view(">u2")) for b in bands)
            if fits_le != fits_be:
                return fits_le, "pixel depth"
        diff = np.zeros(2)
        for band in bands:
            if band.shape[0] > 2:
                d = np.abs(band[2:].astype(np.int16) - band[:-2].astype(np.int16))
                diff += d.reshape(-1, 2).mean(axis=0)
        var0, var1 = diff  # byte 0 (first in memory) and byte 1
        if var1 * BYTE_ORDER_SMOOTHNESS_RATIO < var0:
            return True, "smoothness"  # byte 1 is the slow high byte: little-endian
        if var0 * BYTE_ORDER_SMOOTHNESS_RATIO < var1:
            return False, "smoothness"
        return flag_little, "flag"

    # -- frames -----------------------------------------------------------------------

    def _read_into(self, buf: memoryview, offset: int, what: str) -> None:
        """Fill ``buf`` with the file's bytes from ``offset`` on.

        The file was checked to hold them when it was opened, so a read that ends early
        means the file shrank since: that is a :class:`~live_stack.io.SourceError`.
        """
        fd = self._fd
        assert fd is not None
        total, done = len(buf), 0
        while done < total:
            try:
                if _HAVE_PREADV:
                    got = os.preadv(fd, [buf[done:]], offset + done)
                else:
                    with self._lock:
                        os.lseek(fd, offset + done, os.SEEK_SET)
                        chunk = os.read(fd, total - done)
                        got = len(chunk)
                        buf[done : done + got] = chunk
            except OSError as exc:
                why = exc.strerror or exc
                raise SourceError(f"{self._path}: cannot read {what}: {why}") from exc
            if got == 0:
                raise SourceError(self._shrunk(what, offset + total))
            done += got

    def _shrunk(self, what: str, end: int) -> str:
        try:
            now = f"{os.fstat(self._fd).st_size} bytes" if self._fd is not None else "?"
        except OSError as exc:
            now = f"unknown size ({exc.strerror})"
        return (
            f"{self._path}: the file shrank while it was read: {what} ends at byte {end}, "
            f"the file had {self._size} bytes when it was opened and has {now} now "
            f"(truncated or rewritten by another program?)"
        )

    def _read_bytes(self, offset: int, length: int, what: str) -> np.ndarray:
        """The file's bytes ``[offset, offset + length)`` as a new uint8 array."""
        out = np.empty(length, dtype=np.uint8)
        self._read_into(memoryview(out), offset, what)
        return out

    def _read(self, index: int) -> np.ndarray:
        shape = (self._height, self._width, 3) if self._planes == 3 else (self._height, self._width)
        out = np.empty(shape, dtype=self._info.dtype)
        offset = HEADER_SIZE + index * self._frame_bytes
        self._read_into(memoryview(out.reshape(-1).view(np.uint8)), offset, f"frame {index}")
        if self._swap:
            out.byteswap(inplace=True)
        if self._bgr:
            out[...] = out[..., ::-1]  # numpy copies overlapping operands first
        return out

    def timestamps(self) -> np.ndarray | None:
        """Trailer timestamps as float64 Unix seconds (a copy), or ``None`` if absent."""
        return None if self._timestamps is None else self._timestamps.copy()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def repair_header(path: str | os.PathLike[str]) -> str:
    """Make a crash-cut SER file valid for every reader: the header counts its frames.

    The header's FrameCount is set to the number of complete frames the file holds and
    the bytes of an incomplete frame after them (which no reader can use) are cut off;
    a timestamp trailer after the frames is kept. A file that is valid already is not
    changed.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.ser`` file, changed in place.

    Returns
    -------
    str
        One sentence saying what was changed (or that nothing needed to be).

    Raises
    ------
    SourceError
        If the file cannot be opened or written, or is not a SER file.
    """
    p = os.fspath(path)
    with SerReader(p, strict=False) as src:
        note = src.info.metadata.get("salvaged")
        claimed = src.info.metadata["header_frames"]
        frames = len(src)
        frame_bytes = src._frame_bytes
        end = HEADER_SIZE + frames * frame_bytes
        if src._ts_offset is not None:
            end += frames * TIMESTAMP_SIZE
        size = src._size
    if note is None:
        return f"{p}: nothing to repair: the header's {claimed} frames match the file"
    if size - end >= frame_bytes:
        raise SourceError(
            f"{p}: {size - end} bytes follow the {frames} frames the header counts, more than "
            f"a frame: not cut off (nothing was changed)"
        )
    try:
        fd = os.open(p, os.O_WRONLY | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise SourceError(f"{p}: cannot open for writing: {exc.strerror or exc}") from exc
    try:
        if os.fstat(fd).st_size != size:
            raise SourceError(f"{p}: the file changed while it was checked; nothing was changed")
        os.pwrite(fd, struct.pack("<i", frames), FRAME_COUNT_OFFSET)
        if size > end:
            os.ftruncate(fd, end)
    except OSError as exc:
        raise SourceError(f"{p}: cannot write: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    cut = f"; {size - end} bytes after the last complete frame were cut off" if size > end else ""
    return f"{p}: header FrameCount {claimed} -> {frames}{cut}"


class SerWriter:
    """Write a SER file frame by frame, keeping it valid after every frame.

    Parameters
    ----------
    path : str or os.PathLike
        The file to create (replaced if it exists).
    width, height : int
        Frame size in pixels.
    layout : str
        ``"mono"``, ``"rgb"`` or a Bayer pattern (``"RGGB"``, ``"GRBG"``, ``"GBRG"``,
        ``"BGGR"``; frames are then the raw mosaic).
    bit_depth : int
        Significant bits per sample: 8 (frames are uint8) or 9..16 (frames are uint16
        with values below ``2**bit_depth``).
    observer, instrument, telescope : str
        Header text fields, at most 40 bytes each in UTF-8.
    little_endian : bool
        Byte order of 16-bit samples; the header flag is set as the specification
        defines it (1 = little-endian).

    Notes
    -----
    Each :meth:`write` appends the frame with unbuffered writes and then rewrites the
    4-byte FrameCount in place (no fsync), so at any moment the file is a valid SER of
    the frames written so far, plus possibly part of a frame that ``SerReader(path,
    strict=False)`` ignores. :meth:`close` appends the timestamp trailer if every frame
    was given a timestamp, and sets the header's DateTime fields to the first frame's
    timestamp (or the time the file was created).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        width: int,
        height: int,
        layout: str = "mono",
        bit_depth: int = 8,
        observer: str = "",
        instrument: str = "",
        telescope: str = "",
        little_endian: bool = True,
    ) -> None:
        for name, value in (("width", width), ("height", height)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if layout not in LAYOUT_COLOR_IDS:
            raise ValueError(f"layout must be one of {tuple(LAYOUT_COLOR_IDS)}, got {layout!r}")
        if isinstance(bit_depth, bool) or bit_depth not in range(MAX_8BIT_DEPTH, MAX_DEPTH + 1):
            raise ValueError(f"bit_depth must be 8..{MAX_DEPTH}, got {bit_depth!r}")
        texts = {}
        for name, value in (
            ("observer", observer),
            ("instrument", instrument),
            ("telescope", telescope),
        ):
            raw = str(value).encode("utf-8")
            if len(raw) > TEXT_FIELD_SIZE:
                raise ValueError(
                    f"{name} is {len(raw)} bytes in UTF-8; the SER header holds {TEXT_FIELD_SIZE}"
                )
            texts[name] = raw
        self.path = os.fspath(path)
        self.width, self.height = int(width), int(height)
        self.layout = layout
        self.bit_depth = int(bit_depth)
        self.little_endian = bool(little_endian)
        self._dtype = np.dtype(np.uint8 if bit_depth == MAX_8BIT_DEPTH else np.uint16)
        order = "<" if little_endian else ">"
        self._file_dtype = self._dtype if self._dtype.itemsize == 1 else np.dtype(order + "u2")
        self._shape: tuple[int, ...] = (
            (self.height, self.width, 3) if layout == "rgb" else (self.height, self.width)
        )
        self._ticks: list[int | None] = []
        self._created = time.time()
        header = struct.pack(
            HEADER_FORMAT,
            FILE_ID,
            0,
            LAYOUT_COLOR_IDS[layout],
            1 if self.little_endian else 0,
            self.width,
            self.height,
            self.bit_depth,
            0,
            texts["observer"],
            texts["instrument"],
            texts["telescope"],
            *self._datetime_ticks(self._created),
        )
        self._fd: int | None = os.open(
            self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o644
        )
        try:
            self._write_all(header)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _datetime_ticks(seconds: float) -> tuple[int, int]:
        """(local-time ticks, UTC ticks) for Unix time ``seconds``."""
        utc = unix_to_ticks(seconds)
        offset = _dt.datetime.fromtimestamp(seconds).astimezone().utcoffset()
        local = utc + (int(offset.total_seconds()) * TICKS_PER_SECOND if offset else 0)
        return local, utc

    @property
    def frames_written(self) -> int:
        """Number of complete frames in the file."""
        return len(self._ticks)

    def _write_all(self, data: bytes | memoryview) -> None:
        assert self._fd is not None
        view = memoryview(data).cast("B")
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def write(self, frame: np.ndarray, timestamp: float | None = None) -> None:
        """Append one frame.

        Parameters
        ----------
        frame : numpy.ndarray
            ``(height, width)`` (mono, Bayer) or ``(height, width, 3)`` RGB, uint8 for
            8-bit files, uint16 with values below ``2**bit_depth`` otherwise.
        timestamp : float, optional
            Capture time in Unix seconds.

        Raises
        ------
        ValueError
            If the frame's shape, dtype or values do not match the file, or the timestamp
            is not finite.
        """
        if self._fd is None:
            raise ValueError(f"{self.path}: the SER writer is closed")
        if not isinstance(frame, np.ndarray):
            raise ValueError(f"frame must be a numpy array, got {type(frame).__name__}")
        if frame.shape != self._shape:
            raise ValueError(f"frame has shape {frame.shape}, the SER file needs {self._shape}")
        if frame.dtype != self._dtype:
            raise ValueError(
                f"frame has dtype {frame.dtype}, the {self.bit_depth}-bit SER file needs "
                f"{self._dtype}"
            )
        if self.bit_depth < MAX_DEPTH and self._dtype.itemsize == 2:
            top = int(frame.max()) if frame.size else 0
            if top >= 1 << self.bit_depth:
                raise ValueError(
                    f"frame has value {top}, above the file's {self.bit_depth}-bit range"
                )
        tick = None
        if timestamp is not None:
            ts = float(timestamp)
            if not math.isfinite(ts):
                raise ValueError(f"timestamp must be finite Unix seconds, got {timestamp!r}")
            tick = unix_to_ticks(ts)
        data = np.ascontiguousarray(frame, dtype=self._file_dtype)
        self._write_all(data.data)
        self._ticks.append(tick)
        os.pwrite(self._fd, struct.pack("<i", len(self._ticks)), FRAME_COUNT_OFFSET)

    def write_frames(
        self, frames: Sequence[np.ndarray], timestamps: Sequence[float] | None = None
    ) -> None:
        """Append several frames (with timestamps, if given, one per frame)."""
        if timestamps is not None and len(timestamps) != len(frames):
            raise ValueError(f"timestamps has {len(timestamps)} entries for {len(frames)} frames")
        for k, frame in enumerate(frames):
            self.write(frame, None if timestamps is None else timestamps[k])

    def close(self) -> None:
        """Write the timestamp trailer (if every frame has one) and close. Idempotent."""
        if self._fd is None:
            return
        fd = self._fd
        try:
            if self._ticks and all(t is not None for t in self._ticks):
                trailer = np.asarray(self._ticks, dtype="<i8")
                self._write_all(trailer.data)
                start = ticks_to_unix(self._ticks[0])
            else:
                start = self._created
            os.pwrite(fd, struct.pack("<qq", *self._datetime_ticks(start)), DATETIME_OFFSET)
        finally:
            self._fd = None
            os.close(fd)

    def __enter__(self) -> SerWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
