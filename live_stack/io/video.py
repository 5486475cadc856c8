"""Video files (AVI, MP4, MOV, MKV) decoded with OpenCV, with correct random access.

Seeking with ``CAP_PROP_POS_FRAMES`` lands on the wrong frame in many AVI files (MJPEG,
DivX/MPEG-4 with broken or missing timestamps), and ``CAP_PROP_FRAME_COUNT`` is only an
estimate in some containers. :class:`VideoSource` therefore never seeks:

* Opening the file decodes it once from start to end to count the frames exactly. The
  frames decoded on the way are kept in a bounded cache (``cache_mb``) until it is full;
  beyond that the pass only ``grab()``\\ s (decodes without colour conversion).
* ``src[i]`` returns the cached frame if there is one. Otherwise the decoder moves
  forward to ``i`` (skipping frames with ``grab()``), re-opening the file first when
  ``i`` lies behind the decoder. Every frame returned is added to the cache, which drops
  the least recently used frames when it is over its budget.

So a video that fits in the cache is decoded exactly once, however it is accessed; a
longer one costs one decoding pass at open plus one per sequential pass, and random
access behind the decoder costs a re-decode from the start.

A cut-off video (its writer crashed, or another program truncated it) or one still being
written reads as the frames that can be decoded. When that is fewer than the container
claims, or the container claims no count (an AVI whose writer has not finished has 0), or
the file changed size during the counting pass, ``info.metadata["salvaged"]`` says so in
one sentence (:func:`live_stack.io.salvage_warning` shows it). A frame that cannot be
decoded again later (the file was cut after it was opened) is a :class:`SourceError`
naming the file, never a shorter video.

Colour: OpenCV decodes to BGR; frames are returned in RGB order, or as ``(H, W)`` uint8
for mono. With ``colour="auto"`` a video whose three channels carry the same picture
(a mono camera recorded as RGB: the channel differences are nearly constant across the
first frame) is treated as mono; see :func:`looks_mono`.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict

import cv2
import numpy as np

from live_stack.io import FrameSource, SourceError, SourceInfo

__all__ = ["VideoSource", "looks_mono", "COLOUR_MODES"]

#: Accepted values of the ``colour`` option.
COLOUR_MODES = ("auto", "mono", "rgb")

#: Mono detection: a pixel counts as grey when each channel difference is within this
#: many levels of that difference's median over the frame.
MONO_TOLERANCE = 2
#: Mono detection: the fraction of pixels that must be grey.
MONO_FRACTION = 0.999
#: Mono detection: the median channel differences may be at most this many levels (a
#: decoder's chroma offset; a larger constant offset is a deliberately tinted picture).
MONO_MAX_OFFSET = 8

#: Mono detection looks at about this many pixels at most (an even subsample of a larger
#: frame: the test is statistical, and a whole 1280x960 frame cost 80 ms).
MONO_SAMPLE_PIXELS = 250_000

#: Suffixes of containers whose index is written at the end (unreadable when cut off).
_INDEX_LAST_SUFFIXES = (".mp4", ".mov")

#: Default cache size in MiB.
DEFAULT_CACHE_MB = 512

_MIB = 1 << 20


def looks_mono(bgr: np.ndarray) -> bool:
    """Whether a 3-channel 8-bit frame carries the same picture in all three channels.

    Pixels within :data:`MONO_MAX_OFFSET` levels of black or white are left out (an
    offset channel clips there). Of the rest, for each pair of channels, at least
    :data:`MONO_FRACTION` must have a difference within :data:`MONO_TOLERANCE` levels of
    the median difference, and that median must be at most :data:`MONO_MAX_OFFSET`
    levels (video decoders often shift the channels of a grey picture by a few levels).
    A frame with no unclipped pixels counts as mono. Frames larger than
    :data:`MONO_SAMPLE_PIXELS` are tested on every k-th row and column.
    """
    if bgr.ndim == 2:
        return True
    step = max(1, math.isqrt(bgr.shape[0] * bgr.shape[1] // MONO_SAMPLE_PIXELS))
    bgr = bgr[::step, ::step]
    top = np.iinfo(np.uint8).max
    lo, hi = bgr.min(axis=2), bgr.max(axis=2)
    keep = (lo > MONO_MAX_OFFSET) & (hi < top - MONO_MAX_OFFSET)
    if not keep.any():
        return True
    planes = [bgr[..., c][keep].astype(np.int16) for c in range(3)]
    for a, b in ((0, 1), (1, 2)):
        diff = planes[a] - planes[b]
        offset = int(np.median(diff))
        if abs(offset) > MONO_MAX_OFFSET:
            return False
        if np.mean(np.abs(diff - offset) <= MONO_TOLERANCE) < MONO_FRACTION:
            return False
    return True


class VideoSource(FrameSource):
    """Read a video file through OpenCV as a :class:`~live_stack.io.FrameSource`.

    Parameters
    ----------
    path : str or os.PathLike
        The video file.
    colour : {"auto", "mono", "rgb"}
        ``"rgb"`` returns ``(H, W, 3)`` RGB frames; ``"mono"`` returns ``(H, W)``
        luminance; ``"auto"`` picks mono when :func:`looks_mono` holds for the first
        frame, else RGB.
    cache_mb : float
        Budget in MiB for decoded frames kept in memory (0 disables the cache).

    Raises
    ------
    SourceError
        If OpenCV cannot open or decode the file, it has no frames, or a frame has a
        different size from the first.
    ValueError
        If ``colour`` or ``cache_mb`` is invalid.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        colour: str = "auto",
        cache_mb: float = DEFAULT_CACHE_MB,
    ) -> None:
        if colour not in COLOUR_MODES:
            raise ValueError(f"colour must be one of {COLOUR_MODES}, got {colour!r}")
        if not cache_mb >= 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb!r}")
        self._path = os.fspath(path)
        if not os.path.isfile(self._path):
            raise SourceError(f"{self._path}: no such file")
        self._budget = int(cache_mb * _MIB)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_bytes = 0
        self._cap: cv2.VideoCapture | None = None
        self._pos = 0  # index of the frame the next read() of self._cap returns
        self._colour = colour
        self._mono = colour == "mono"
        self._shape: tuple[int, ...] | None = None
        self._size = os.path.getsize(self._path)  # bytes when opened, for the messages

        cap = self._reopen()
        meta = {
            "format": "video",
            "backend": cap.getBackendName(),
            "fourcc": _fourcc(cap.get(cv2.CAP_PROP_FOURCC)),
            "fps": float(cap.get(cv2.CAP_PROP_FPS)),
            "reported_frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
        }
        try:
            frames = self._count_and_fill()
            if frames == 0:
                raise SourceError(f"{self._path}: OpenCV could not decode any frame")
        except BaseException:
            self.close()
            raise
        note = _shortfall(meta["reported_frames"], frames, self._size, _size_now(self._path))
        if note is not None:
            meta["salvaged"] = note
        if len(self._cache) == frames:  # all in memory: the decoder is no longer needed
            cap.release()
            self._cap = None
        assert self._shape is not None
        meta["colour"] = "mono" if self._mono else "rgb"
        self._info = SourceInfo(
            path=self._path,
            width=self._shape[1],
            height=self._shape[0],
            frames=frames,
            bit_depth=8,
            dtype=np.uint8,
            layout="mono" if self._mono else "rgb",
            has_timestamps=False,
            metadata=meta,
        )

    # -- decoding ---------------------------------------------------------------------

    def _reopen(self) -> cv2.VideoCapture:
        if self._cap is not None:
            self._cap.release()
        cap = cv2.VideoCapture(self._path)
        if not cap.isOpened():
            cap.release()
            hint = ""
            if os.path.splitext(self._path)[1].lower() in _INDEX_LAST_SUFFIXES:
                hint = (" (an MP4 or MOV recording that was cut off, or is still being "
                        "written, lacks the index its writer puts at the end)")
            raise SourceError(f"{self._path}: OpenCV cannot open this video{hint}")
        self._cap, self._pos = cap, 0
        return cap

    def _convert(self, bgr: np.ndarray) -> np.ndarray:
        """BGR (or grey) as decoded -> the source's layout; sets the shape on first use."""
        if self._shape is None:
            if self._colour == "auto":
                self._mono = looks_mono(bgr)
            h, w = bgr.shape[:2]
            self._shape = (h, w) if self._mono else (h, w, 3)
        if bgr.ndim == 2:
            out = bgr if self._mono else cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
        else:
            out = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY if self._mono else cv2.COLOR_BGR2RGB)
        if out.shape != self._shape:
            raise SourceError(
                f"{self._path}: frame {self._pos - 1} is {out.shape[1]}x{out.shape[0]}, "
                f"the first frame is {self._shape[1]}x{self._shape[0]}"
            )
        return out

    def _next(self) -> np.ndarray | None:
        """Decode the frame at the decoder position, or None at the end of the video."""
        assert self._cap is not None
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            return None
        self._pos += 1
        return self._convert(bgr)

    def _count_and_fill(self) -> int:
        """Decode the whole file once: count the frames, caching them while there is room."""
        assert self._cap is not None
        n = 0
        while True:
            if n == 0 or self._cache_bytes + self._frame_bytes() <= self._budget:
                frame = self._next()
                if frame is None:
                    break
                self._remember(n, frame)
            elif self._cap.grab():
                self._pos += 1
            else:
                break
            n += 1
        return n

    def _frame_bytes(self) -> int:
        assert self._shape is not None
        return int(np.prod(self._shape))

    def _remember(self, index: int, frame: np.ndarray) -> None:
        """Put a frame in the cache, dropping least recently used frames over budget."""
        if frame.nbytes > self._budget:
            return
        self._cache[index] = frame
        self._cache_bytes += frame.nbytes
        while self._cache_bytes > self._budget:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.nbytes

    def _read(self, index: int) -> np.ndarray:
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            return cached.copy()
        if self._cap is None or index < self._pos:
            self._reopen()
        assert self._cap is not None
        while self._pos < index:
            if not self._cap.grab():
                break
            self._pos += 1
        frame = self._next() if self._pos == index else None
        if frame is None:
            now = _size_now(self._path)
            why = (" (truncated or rewritten by another program?)" if now != self._size
                   else "")
            raise SourceError(
                f"{self._path}: frame {index} cannot be decoded again: the video ended at "
                f"frame {self._pos}, after {len(self)} frames were decoded when it was "
                f"opened; the file had {self._size} bytes then and {_bytes(now)} "
                f"now{why}"
            )
        self._remember(index, frame)
        return frame.copy() if index in self._cache else frame

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        self._cache.clear()
        self._cache_bytes = 0


def _size_now(path: str) -> int | None:
    """The file's size in bytes now; None if it is gone."""
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _bytes(size: int | None) -> str:
    """``"has N bytes"`` or ``"is gone"``, for the messages."""
    return "is gone" if size is None else f"has {size} bytes"


def _shortfall(claimed: int, decoded: int, size_then: int, size_now: int | None) -> str | None:
    """The sentence saying why a video reads as fewer frames than it should; None if none.

    ``claimed`` is the container's frame count (0 or less: none stated), ``decoded`` the
    frames the counting pass decoded, ``size_then``/``size_now`` the file's size in bytes
    before and after that pass.
    """
    if claimed <= 0:
        said = (f"the container states no frame count (a recording still being written, "
                f"or cut off before its writer finished); the {decoded} frames that could "
                f"be decoded are read")
    elif decoded < claimed:
        said = (f"the container says {claimed} frames but only {decoded} could be decoded "
                f"(cut off, or still being written); the {decoded} frames are read")
    else:
        said = None
    if size_now != size_then:
        changed = (f"the file had {size_then} bytes when it was opened and "
                   f"{_bytes(size_now)} after its frames were counted (is another program "
                   f"writing it?)")
        said = f"{said}; {changed}" if said else f"{changed}; {decoded} frames are read"
    return said


def _fourcc(value: float) -> str:
    code = int(value)
    return "".join(chr((code >> (8 * k)) & 0xFF) for k in range(4)).strip("\0")
