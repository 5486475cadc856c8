"""A folder of image files (PNG, TIFF, FITS, JPEG) as one frame source.

The frames are the folder's image files (by extension, case-insensitive; hidden files
and everything else are ignored) in natural order, so ``frame2.png`` comes before
``frame10.png``. Opening the folder reads only each file's header, to check that all
frames have the same size, number of channels and sample type; the pixels are decoded
when a frame is asked for (:func:`live_stack.io.images.read_native`), and, when files
that cannot be read are to be left out (``skip_unreadable``), once more at opening, so
that a file whose pixels do not decode is left out too instead of failing a read later.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass

import cv2
import numpy as np
import tifffile

from live_stack.io import BAYER_PATTERNS, FrameSource, SourceError, SourceInfo
from live_stack.io.images import (
    FITS_SUFFIXES,
    JPEG_SUFFIXES,
    PNG_SUFFIXES,
    READ_SUFFIXES,
    TIFF_SUFFIXES,
    bayer_pattern,
    read_native,
)
from live_stack.io.video import looks_mono

__all__ = ["FolderSource", "natural_key", "list_images", "COLOUR_MODES"]

#: Accepted values of the ``colour`` option.
COLOUR_MODES = ("auto", "mono", "rgb")

#: PNG colour type -> channels returned (grey, RGB, palette, grey+alpha, RGBA).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 1, 6: 3}
#: PNG bit depth at and above which samples are uint16.
_PNG_16_BIT = 16
#: JPEG start-of-frame markers (SOF0..SOF15 without DHT, JPG and DAC).
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
#: JPEG markers that stand alone (no length field): TEM, RST0..7, SOI, EOI.
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xDA)})
#: FITS header block size and card size.
_FITS_BLOCK = 2880
_FITS_CARD = 80
#: Bits per sample of an 8-bit FITS image.
_FITS_BITPIX_8 = 8

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[tuple[int, int, str], ...], str]:
    """Sort key that orders digit runs by value: ``frame2`` before ``frame10``.

    Text compares case-insensitively; names that still tie (``f02``, ``f2``) are
    ordered by the name itself.
    """
    parts = tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part.lower())
        for part in _DIGITS.split(name)
        if part
    )
    return parts, name


def list_images(folder: str | os.PathLike[str]) -> list[str]:
    """The image files in ``folder`` (not hidden, readable suffix) in natural order."""
    folder = os.fspath(folder)
    names = [
        entry.name
        for entry in os.scandir(folder)
        if entry.is_file()
        and not entry.name.startswith(".")
        and os.path.splitext(entry.name)[1].lower() in READ_SUFFIXES
    ]
    return [os.path.join(folder, name) for name in sorted(names, key=natural_key)]


@dataclass(frozen=True)
class _Probe:
    """What an image file's header says about the array read_native returns."""

    height: int  # rows
    width: int  # columns
    channels: int  # 1 or 3
    dtype: np.dtype  # uint8 or uint16
    bayer: str | None = None  # FITS BAYERPAT, if any


def _probe_png(path: str, f) -> _Probe:
    head = f.read(33)
    if len(head) < 33 or head[12:16] != b"IHDR":
        raise SourceError(f"{path}: not a PNG file (no IHDR header)")
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    if colour not in _PNG_CHANNELS:
        raise SourceError(f"{path}: PNG colour type {colour} is not valid")
    dtype = np.uint16 if depth >= _PNG_16_BIT else np.uint8
    return _Probe(height, width, _PNG_CHANNELS[colour], np.dtype(dtype))


def _probe_jpeg(path: str, f) -> _Probe:
    if f.read(2) != b"\xff\xd8":
        raise SourceError(f"{path}: not a JPEG file (no SOI marker)")
    while True:
        byte = f.read(1)
        if not byte:
            break
        if byte != b"\xff":
            continue
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes
            marker = f.read(1)
        if not marker:
            break
        code = marker[0]
        if code in _JPEG_STANDALONE or code == 0:
            continue
        raw = f.read(2)
        if len(raw) < 2:
            break
        (length,) = struct.unpack(">H", raw)
        if code in _JPEG_SOF:
            seg = f.read(6)
            if len(seg) < 6:
                break
            _precision, height, width, components = struct.unpack(">BHHB", seg)
            return _Probe(height, width, 1 if components == 1 else 3, np.dtype(np.uint8))
        f.seek(length - 2, os.SEEK_CUR)
    raise SourceError(f"{path}: JPEG file has no frame header (truncated or corrupt)")


def _probe_tiff(path: str) -> _Probe:
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            height, width = page.imagelength, page.imagewidth
            spp, dtype = page.samplesperpixel, page.dtype
    except OSError:
        raise
    except Exception as exc:  # tifffile raises many types on corrupt files
        raise SourceError(
            f"{path}: cannot read TIFF (corrupt or not a TIFF file): {type(exc).__name__}: {exc}"
        ) from exc
    if dtype is None:
        raise SourceError(f"{path}: TIFF sample format is not supported")
    out = np.uint8 if np.dtype(dtype) == np.uint8 else np.uint16
    return _Probe(height, width, 1 if spp <= 2 else 3, np.dtype(out))


def _fits_header_cards(path: str, f) -> dict[str, str]:
    """The primary header's cards as raw value strings (keyword -> text)."""
    cards: dict[str, str] = {}
    while True:
        block = f.read(_FITS_BLOCK)
        if not cards and not block.startswith(b"SIMPLE  ="):
            raise SourceError(f"{path}: not a FITS file (it does not start with SIMPLE)")
        if len(block) < _FITS_BLOCK:
            raise SourceError(f"{path}: FITS header is truncated (no END card)")
        for k in range(0, _FITS_BLOCK, _FITS_CARD):
            card = block[k : k + _FITS_CARD].decode("ascii", errors="replace")
            key = card[:8].strip()
            if key == "END":
                return cards
            if card[8:10] == "= ":
                cards[key] = card[10:].split("/", 1)[0].strip().strip("'").strip()


def _probe_fits(path: str, f) -> _Probe:
    cards = _fits_header_cards(path, f)
    if cards.get("SIMPLE") != "T":
        raise SourceError(f"{path}: not a FITS file (SIMPLE = T missing)")
    try:
        naxis = int(cards.get("NAXIS", "0"))
        if naxis == 0:  # image in an extension: let astropy find it
            arr, meta = read_native(path)
            ch = 3 if arr.ndim == 3 else 1
            return _Probe(arr.shape[0], arr.shape[1], ch, arr.dtype, bayer_pattern(meta))
        width, height = int(cards["NAXIS1"]), int(cards["NAXIS2"])
        planes = int(cards.get("NAXIS3", "1")) if naxis >= 3 else 1
        bitpix = int(cards["BITPIX"])
    except (KeyError, ValueError) as exc:
        raise SourceError(f"{path}: FITS header lacks a valid {exc} card") from exc
    if naxis > 3 or planes not in (1, 3):
        raise SourceError(
            f"{path}: FITS image with NAXIS={naxis}, NAXIS3={planes} is not supported"
        )
    dtype = np.uint8 if bitpix == _FITS_BITPIX_8 else np.uint16
    bayer = cards.get("BAYERPAT", "").upper() or None
    return _Probe(height, width, planes, np.dtype(dtype), bayer)


def _probe(path: str) -> _Probe:
    suffix = os.path.splitext(path)[1].lower()
    try:
        if suffix in TIFF_SUFFIXES:
            return _probe_tiff(path)
        with open(path, "rb") as f:
            if suffix in PNG_SUFFIXES:
                return _probe_png(path, f)
            if suffix in JPEG_SUFFIXES:
                return _probe_jpeg(path, f)
            assert suffix in FITS_SUFFIXES
            return _probe_fits(path, f)
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from exc


class FolderSource(FrameSource):
    """The image files of a folder as a :class:`~live_stack.io.FrameSource`.

    Parameters
    ----------
    path : str or os.PathLike
        The folder.
    colour : {"auto", "mono", "rgb"}
        ``"auto"`` keeps the files' layout, except that 8-bit colour images whose
        channels carry the same picture (see :func:`live_stack.io.video.looks_mono`,
        applied to the first file) are returned as mono, and a mono FITS with a
        ``BAYERPAT`` card reports that Bayer pattern. ``"mono"`` converts colour to
        luminance; ``"rgb"`` repeats grey into three channels.
    skip_unreadable : bool
        Leave out the files that cannot be read (empty, not an image, a corrupt header,
        or an intact header with pixel data that does not decode) instead of refusing
        the folder: every file is then decoded once when the folder is opened.
        ``info.metadata["salvaged"]`` names the files left out and why, and
        ``info.metadata["left_out"]`` counts them. The folder is refused if no file can
        be read.

    Raises
    ------
    SourceError
        If the folder does not exist or holds no image files, a file cannot be read
        (naming it; unless ``skip_unreadable``), or a file differs from the first in
        size, channels or sample type (naming it and both values).
    ValueError
        If ``colour`` is invalid.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, colour: str = "auto", skip_unreadable: bool = False
    ) -> None:
        if colour not in COLOUR_MODES:
            raise ValueError(f"colour must be one of {COLOUR_MODES}, got {colour!r}")
        self._path = os.fspath(path)
        if not os.path.isdir(self._path):
            raise SourceError(f"{self._path}: not a folder")
        self._files = list_images(self._path)
        if not self._files:
            raise SourceError(
                f"{self._path}: no image files in this folder "
                f"(looked for {', '.join(READ_SUFFIXES)})"
            )
        probes, skipped = self._probe_all(skip_unreadable=skip_unreadable)
        self._files = [name for name, _ in probes]
        first = probes[0][1]
        for name, probe in probes[1:]:
            self._check_same(name, probe, first, self._files[0])
        self._probe = first
        self._to_mono = colour == "mono" and first.channels == 3
        self._to_rgb = colour == "rgb" and first.channels == 1
        layout = "rgb" if (first.channels == 3 or self._to_rgb) and not self._to_mono else "mono"
        if colour == "auto" and first.channels == 3 and first.dtype == np.uint8:
            self._to_mono = looks_mono(self._decode(0))
            layout = "mono" if self._to_mono else "rgb"
        if colour == "auto" and layout == "mono" and first.bayer in BAYER_PATTERNS:
            layout = first.bayer
        suffixes = sorted({os.path.splitext(f)[1].lower() for f in self._files})
        self._info = SourceInfo(
            path=self._path,
            width=first.width,
            height=first.height,
            frames=len(self._files),
            bit_depth=first.dtype.itemsize * 8,
            dtype=first.dtype,
            layout=layout,
            has_timestamps=False,
            metadata={"format": "folder", "suffixes": suffixes}
            | ({"salvaged": self._skipped_note(skipped), "left_out": len(skipped)}
               if skipped else {}),
        )

    def _probe_all(self, *, skip_unreadable: bool) -> tuple[list[tuple[str, _Probe]], list[str]]:
        """(file, probe) of every readable file, and the errors of the files left out."""
        probes, skipped = [], []
        for name in self._files:
            try:
                probe = _probe(name)
                if skip_unreadable:  # an intact header can hide pixels that do not decode
                    read_native(name)
                probes.append((name, probe))
            except SourceError as exc:
                if not skip_unreadable:
                    raise
                skipped.append(str(exc))
        if not probes:
            raise SourceError(
                f"{self._path}: none of the {len(skipped)} image files can be read "
                f"({skipped[0]})"
            )
        return probes, skipped

    def _skipped_note(self, skipped: list[str]) -> str:
        total = len(self._files) + len(skipped)
        return (
            f"{len(skipped)} of {total} image files cannot be read and are left out "
            f"({'; '.join(skipped)})"
        )

    @staticmethod
    def _check_same(name: str, probe: _Probe, first: _Probe, first_name: str) -> None:
        ref = f"the first frame ({os.path.basename(first_name)})"
        if (probe.width, probe.height) != (first.width, first.height):
            raise SourceError(
                f"{name}: frame is {probe.width}x{probe.height} pixels but {ref} "
                f"is {first.width}x{first.height}"
            )
        if probe.channels != first.channels:
            raise SourceError(
                f"{name}: frame has {probe.channels} channel(s) but {ref} has {first.channels}"
            )
        if probe.dtype != first.dtype:
            raise SourceError(
                f"{name}: frame has {probe.dtype.itemsize * 8}-bit samples but {ref} "
                f"has {first.dtype.itemsize * 8}-bit"
            )

    @property
    def files(self) -> list[str]:
        """The image files, in frame order."""
        return list(self._files)

    def _decode(self, index: int) -> np.ndarray:
        """Read file ``index`` as stored, checking it against the header probe."""
        name = self._files[index]
        arr, _ = read_native(name)
        p = self._probe
        channels = 3 if arr.ndim == 3 else 1
        got = _Probe(arr.shape[0], arr.shape[1], channels, arr.dtype)
        try:
            self._check_same(name, got, p, self._files[0])
        except SourceError as exc:
            raise SourceError(f"{exc} (the file changed or its header is misleading)") from None
        return arr

    def _read(self, index: int) -> np.ndarray:
        arr = self._decode(index)
        if self._to_mono:
            return cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
        if self._to_rgb:
            return cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
        return arr

    def _close(self) -> None:
        """Nothing to release: each frame's file is opened and closed when read."""
