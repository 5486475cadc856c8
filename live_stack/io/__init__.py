"""Frame sources and image files.

One interface for every kind of recorded capture:

>>> from live_stack.io import open_source
>>> with open_source("capture.ser") as src:          # doctest: +SKIP
...     print(src.info.width, src.info.height, len(src))
...     first, last = src[0], src[-1]
...     for frame in src:
...         ...

:func:`open_source` picks the reader from the path: a ``.ser`` file
(:class:`live_stack.io.ser.SerReader`), a video file that OpenCV decodes
(:class:`live_stack.io.video.VideoSource`) or a folder of PNG/TIFF/FITS/JPEG images
(:class:`live_stack.io.folder.FolderSource`). Every source is a :class:`FrameSource`:

* ``len(src)`` frames, ``src[i]`` (negative ``i`` counts from the end, out of range
  raises :class:`IndexError`) returns a fresh array in the source's native dtype, shaped
  ``(H, W)`` (mono or raw Bayer) or ``(H, W, 3)`` in RGB order;
* ``iter(src)`` yields the frames in order;
* ``src.info`` is a :class:`SourceInfo`;
* ``src.timestamps()`` returns the frames' capture times as float64 Unix seconds, or
  ``None`` when the source has none;
* ``src.close()`` releases the file; sources are context managers.

Anything wrong with the input raises :class:`SourceError` (a :class:`ValueError`) whose
message names the file and what is wrong with it.

Images (the stacks) are written and read by :mod:`live_stack.io.images`.

The readers are imported only when :func:`open_source` needs them, so importing this
package does not import OpenCV, tifffile or astropy.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

__all__ = [
    "LAYOUTS",
    "BAYER_PATTERNS",
    "FrameSource",
    "SourceError",
    "SourceInfo",
    "open_source",
    "salvage_warning",
    "VIDEO_SUFFIXES",
]

#: The Bayer mosaics a raw colour source may have, named by the top-left 2x2 cell.
BAYER_PATTERNS = ("RGGB", "GRBG", "GBRG", "BGGR")

#: Every pixel layout a source may report: single-plane mono, RGB, or a raw Bayer mosaic.
LAYOUTS = ("mono", "rgb") + BAYER_PATTERNS

#: File suffixes (lower case) that :func:`open_source` hands to the OpenCV video reader.
VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv")

#: The SER suffix.
SER_SUFFIX = ".ser"


class SourceError(ValueError):
    """A frame source or image file that cannot be read; the message names the file."""


@dataclass(frozen=True)
class SourceInfo:
    """What a frame source holds."""

    #: The file or folder the frames come from.
    path: str
    #: Frame width in pixels.
    width: int
    #: Frame height in pixels.
    height: int
    #: Number of frames.
    frames: int
    #: Significant bits per sample (1..16); ``dtype`` is uint8 for up to 8, uint16 above.
    bit_depth: int
    #: The dtype of the frames returned (``numpy.uint8`` or ``numpy.uint16``).
    dtype: np.dtype
    #: ``"mono"``, ``"rgb"`` or a Bayer pattern from :data:`BAYER_PATTERNS`.
    layout: str
    #: Whether :meth:`FrameSource.timestamps` returns capture times.
    has_timestamps: bool = False
    #: Free-form, read-only details (observer, instrument, telescope, codec, ...).
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"SourceInfo.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.frames, (int, np.integer)) or self.frames < 0:
            raise ValueError(
                f"SourceInfo.frames must be a non-negative integer, got {self.frames!r}"
            )
        dtype = np.dtype(self.dtype)
        if dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)):
            raise ValueError(f"SourceInfo.dtype must be uint8 or uint16, got {dtype}")
        object.__setattr__(self, "dtype", dtype)
        if not 1 <= self.bit_depth <= dtype.itemsize * 8:
            raise ValueError(
                f"SourceInfo.bit_depth must be in 1..{dtype.itemsize * 8} for {dtype}, "
                f"got {self.bit_depth!r}"
            )
        if self.layout not in LAYOUTS:
            raise ValueError(f"SourceInfo.layout must be one of {LAYOUTS}, got {self.layout!r}")
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one frame: ``(H, W)`` or ``(H, W, 3)`` for RGB."""
        if self.layout == "rgb":
            return (self.height, self.width, 3)
        return (self.height, self.width)


class FrameSource(abc.ABC):
    """A sequence of frames with random access; see the module docstring.

    Subclasses set ``self._info`` and implement :meth:`_read` (one frame by
    non-negative index) and :meth:`_close`. They may override
    :meth:`__iter__` with a faster sequential path and :meth:`timestamps`.
    """

    _info: SourceInfo
    _closed: bool = False

    @property
    def info(self) -> SourceInfo:
        """The source's :class:`SourceInfo`."""
        return self._info

    def __len__(self) -> int:
        return self._info.frames

    def _index(self, index: Any) -> int:
        """Check ``index`` and return it as a non-negative frame number."""
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"frame index must be an integer, got {type(index).__name__}")
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"frame index {int(index)} out of range for {n} frames")
        return i

    def _check_open(self) -> None:
        if self._closed:
            raise SourceError(f"{self._info.path}: the source is closed")

    def __getitem__(self, index: Any) -> np.ndarray:
        i = self._index(index)
        self._check_open()
        return self._read(i)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            self._check_open()
            yield self._read(i)

    @abc.abstractmethod
    def _read(self, index: int) -> np.ndarray:
        """Return frame ``index`` (``0 <= index < len(self)``) as a fresh array."""

    def timestamps(self) -> np.ndarray | None:
        """Capture times as float64 Unix seconds, one per frame, or ``None``."""
        return None

    def close(self) -> None:
        """Release the file; further reads raise :class:`SourceError`. Idempotent."""
        if not self._closed:
            self._closed = True
            self._close()

    @abc.abstractmethod
    def _close(self) -> None:
        """Release the source's resources (called once, by :meth:`close`)."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        i = self._info
        return (
            f"{type(self).__name__}({i.path!r}, {i.width}x{i.height}, {i.frames} frames, "
            f"{i.layout}, {i.bit_depth}-bit)"
        )


def open_source(
    path: str | os.PathLike[str], *, salvage: bool = False, **kwargs: Any
) -> FrameSource:
    """Open a SER file, a video file or a folder of images as a :class:`FrameSource`.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.ser`` file, a video file (``.avi``, ``.mp4``, ``.mov``, ``.mkv``) or a
        folder of image files.
    salvage : bool
        Read what a damaged capture still holds instead of refusing it: a crash-cut SER
        file reads as its complete frames (``strict=False``), a folder leaves out the
        image files it cannot read (``skip_unreadable=True``); :func:`salvage_warning`
        then returns the sentence to show the user. A video always reads as the frames
        that can be decoded; its ``salvaged`` note (shown by :func:`salvage_warning`
        whatever ``salvage`` is) says when that is fewer than its container claims.
    **kwargs
        Passed to the reader: ``strict`` for SER
        (:class:`live_stack.io.ser.SerReader`), ``colour`` and ``cache_mb`` for video
        (:class:`live_stack.io.video.VideoSource`), ``colour`` for folders
        (:class:`live_stack.io.folder.FolderSource`).

    Returns
    -------
    FrameSource

    Raises
    ------
    SourceError
        If the path does not exist, has an unknown suffix, or cannot be read.
    """
    p = os.fspath(path)
    if os.path.isdir(p):
        from live_stack.io.folder import FolderSource

        if salvage:
            kwargs.setdefault("skip_unreadable", True)
        return FolderSource(p, **kwargs)
    if not os.path.exists(p):
        raise SourceError(f"{p}: no such file or folder")
    suffix = os.path.splitext(p)[1].lower()
    if suffix == SER_SUFFIX:
        from live_stack.io.ser import SerReader

        if salvage:
            kwargs.setdefault("strict", False)
        return SerReader(p, **kwargs)
    if suffix in VIDEO_SUFFIXES:
        from live_stack.io.video import VideoSource

        return VideoSource(p, **kwargs)
    known = ", ".join((SER_SUFFIX,) + VIDEO_SUFFIXES)
    what = suffix or "(no suffix)"
    raise SourceError(f"{p}: unknown file type {what!r}; expected {known} or a folder of images")


def salvage_warning(source: FrameSource) -> str | None:
    """What a source opened with ``salvage=True`` recovered, as a warning; None if intact.

    For a SER file the sentence names the file, says how many frames its header claimed
    and how many are read, and that the file is left as it is (``live-stack repair``
    mends its header); for a folder, which files are left out and why; for a video,
    how many frames its container claimed and how many could be decoded.
    """
    note = source.info.metadata.get("salvaged")
    if note is None:
        return None
    path = source.info.path
    if source.info.metadata.get("format") == "SER":
        return f"{path}: {note}; the file is left as it is (live-stack repair {path} mends it)"
    return f"{path}: {note}"
