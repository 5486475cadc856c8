"""Dark and flat calibration: master frames, and applying them before anything else.

A *master dark* is the per-pixel combination (median or mean) of frames taken with the
sensor covered, at the exposure, gain and temperature of the capture: it holds the
bias, the dark current and the hot pixels, which calibration subtracts. A *master flat*
is the combination of frames of an evenly lit field through the same optics, with its
own dark subtracted: it holds the vignetting and the dust shadows, which calibration
divides out. Both are built from a video or a folder of frames
(``live-stack master-dark``, ``live-stack master-flat``) and stored as 16-bit images on
the ``[0, 1]`` scale of the camera's samples, with metadata saying what they are.

Calibration works on the raw frames, before debayering and before any analysis::

    calibrated = (frame - dark) * gain,   gain = mean(flat) / flat

For a raw Bayer flat the mean is taken per colour of the mosaic, and for an RGB flat
per channel, so that the flat corrects the illumination without changing the colour
balance. Calibrated frames keep their dtype (uint8/uint16, rounded and clipped to the
type's range; float input stays float32), so every later phase runs as on raw frames.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from live_stack.frames import INTEGER_SCALE, check_frame
from live_stack.io import BAYER_PATTERNS, FrameSource, SourceError, SourceInfo

#: Ways of combining frames into a master.
COMBINE_METHODS = ("median", "mean")
#: Kinds of master frame, as recorded in their metadata (``"master"``).
MASTER_KINDS = ("dark", "flat")
#: Flat pixels darker than this share of their colour's mean are left uncorrected
#: (dead pixels, deep dust shadows: dividing by them would only amplify noise).
MIN_FLAT_SHARE = 0.1
#: Pixels per strip when a median is computed (bounds the temporary memory).
MEDIAN_STRIP_PIXELS = 1 << 18
#: Offsets of the four cells of a 2x2 Bayer pattern.
_BAYER_CELLS = ((0, 0), (0, 1), (1, 0), (1, 1))


@dataclass(frozen=True)
class CalibParams:
    """Calibration of the raw frames (CLI/config prefix ``calib_``; also ``--dark/--flat``)."""

    dark: str = ""  # master dark file (live-stack master-dark), subtracted first; "" = none
    flat: str = ""  # master flat file (live-stack master-flat), divided out next; "" = none

    def __post_init__(self) -> None:
        for name in ("dark", "flat"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"calib_{name} must be a file name, got "
                                 f"{getattr(self, name)!r}")

    @property
    def enabled(self) -> bool:
        """A dark or a flat is given."""
        return bool(self.dark or self.flat)


@dataclass(frozen=True)
class MasterParams:
    """How a master frame is combined from its frames."""

    method: str = "median"  # "median" (rejects outliers: cosmic rays, noise) or "mean"
    max_frames: int = 50  # frames combined at most, evenly spread over the input

    def __post_init__(self) -> None:
        if self.method not in COMBINE_METHODS:
            raise ValueError(f"method must be one of {COMBINE_METHODS}, got {self.method!r}")
        if not 1 <= self.max_frames <= 100_000:
            raise ValueError(f"max_frames must be 1..100000, got {self.max_frames}")


@dataclass(frozen=True)
class Master:
    """A combined master frame.

    Attributes
    ----------
    image : numpy.ndarray
        float32 ``(H, W)`` or ``(H, W, 3)`` on the ``[0, 1]`` scale of the samples.
    kind : str
        ``"dark"`` or ``"flat"``.
    frames : int
        Frames combined.
    metadata : dict
        What to store in the file (kind, layout, size, method, frames, ...).
    """

    image: np.ndarray
    kind: str
    frames: int
    metadata: dict[str, Any]


def _scale_of(dtype: np.dtype) -> float:
    return INTEGER_SCALE.get(np.dtype(dtype), 1.0)


def combine(source: FrameSource, params: MasterParams = MasterParams()) -> tuple[np.ndarray, int]:
    """Combine a source's frames pixel by pixel.

    Parameters
    ----------
    source : FrameSource
        The frames (at most ``params.max_frames`` are used, evenly spread).
    params : MasterParams
        Median or mean.

    Returns
    -------
    tuple
        ``(image, count)``: float32 ``[0, 1]`` combination and the frames used.

    Raises
    ------
    ValueError
        If the source has no frames (naming it).
    """
    n = len(source)
    if n == 0:
        raise ValueError(f"{source.info.path}: no frames to combine")
    count = min(n, params.max_frames)
    picks = np.unique(np.linspace(0, n - 1, count).round().astype(np.intp))
    scale = np.float32(1.0 / _scale_of(source.info.dtype))
    if params.method == "mean":
        total = None
        for i in picks:
            frame = source[int(i)].astype(np.float64)
            total = frame if total is None else total + frame
        return (total / len(picks) * scale).astype(np.float32), len(picks)
    stack = np.stack([source[int(i)] for i in picks])
    flat = stack.reshape(len(picks), -1)
    out = np.empty(flat.shape[1], dtype=np.float32)
    for start in range(0, flat.shape[1], MEDIAN_STRIP_PIXELS):
        stop = start + MEDIAN_STRIP_PIXELS
        out[start:stop] = np.median(flat[:, start:stop].astype(np.float32), axis=0)
    return out.reshape(stack.shape[1:]) * scale, len(picks)


def _describe(info: SourceInfo, kind: str, params: MasterParams, frames: int) -> dict[str, Any]:
    return {"master": kind, "input": os.path.basename(info.path.rstrip("/\\")),
            "frames": frames, "method": params.method, "layout": info.layout,
            "width": info.width, "height": info.height, "bit_depth": info.bit_depth,
            "dtype": np.dtype(info.dtype).name}


def master_dark(source: FrameSource, params: MasterParams = MasterParams()) -> Master:
    """Build a master dark from dark frames.

    Parameters
    ----------
    source : FrameSource
        Raw dark frames (mono, RGB or a Bayer mosaic, as the captures it will calibrate).
    params : MasterParams
        How to combine them.

    Returns
    -------
    Master
    """
    image, used = combine(source, params)
    return Master(image=image, kind="dark", frames=used,
                  metadata=_describe(source.info, "dark", params, used))


def master_flat(
    source: FrameSource,
    params: MasterParams = MasterParams(),
    *,
    dark: np.ndarray | None = None,
) -> Master:
    """Build a master flat from flat-field frames.

    Parameters
    ----------
    source : FrameSource
        Raw frames of an evenly lit field.
    params : MasterParams
        How to combine them.
    dark : numpy.ndarray, optional
        float32 ``[0, 1]`` master dark of the flat frames (their exposure), subtracted.

    Returns
    -------
    Master
        The flat, not normalised (its level is the flat frames' own), clipped at 0.

    Raises
    ------
    ValueError
        If ``dark`` is not the flat frames' shape, or the flat is black.
    """
    image, used = combine(source, params)
    if dark is not None:
        if dark.shape != image.shape:
            raise ValueError(f"dark is {_shape_text(dark.shape)}, the flat frames are "
                             f"{_shape_text(image.shape)}")
        image = np.maximum(image - dark, 0.0).astype(np.float32)
    if not float(image.max()) > 0.0:
        raise ValueError(f"{source.info.path}: the flat is black (no light above the dark)")
    meta = _describe(source.info, "flat", params, used)
    meta["dark_subtracted"] = dark is not None
    return Master(image=image, kind="flat", frames=used, metadata=meta)


def _shape_text(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}" + (" RGB" if len(shape) == 3 else "")


def flat_gain(flat: np.ndarray, layout: str | None = None) -> np.ndarray:
    """The per-pixel gain that divides a flat out: ``mean / flat`` per colour.

    Parameters
    ----------
    flat : numpy.ndarray
        float32 master flat, ``(H, W)`` or ``(H, W, 3)``.
    layout : str, optional
        The flat's layout; for a Bayer pattern each of the four mosaic cells is
        normalised by its own mean (each RGB channel by its own for ``(H, W, 3)``).

    Returns
    -------
    numpy.ndarray
        float32 gain of the flat's shape; 1 where the flat is too dark to trust.
    """
    flat = np.asarray(flat, dtype=np.float32)
    gain = np.ones_like(flat)
    if flat.ndim == 3:
        parts = [(slice(None), slice(None), c) for c in range(flat.shape[2])]
    elif layout in BAYER_PATTERNS:
        parts = [(slice(dy, None, 2), slice(dx, None, 2)) for dy, dx in _BAYER_CELLS]
    else:
        parts = [(slice(None), slice(None))]
    for part in parts:
        values = flat[part]
        mean = float(values.mean())
        if not mean > 0.0:
            continue
        ok = values > MIN_FLAT_SHARE * mean
        gain[part] = np.where(ok, mean / np.where(ok, values, 1.0), 1.0)
    return gain


@dataclass(frozen=True)
class Calibration:
    """Loaded master frames, ready to apply to raw frames.

    Attributes
    ----------
    dark : numpy.ndarray or None
        float32 ``[0, 1]`` master dark.
    gain : numpy.ndarray or None
        float32 flat gain (see :func:`flat_gain`).
    dark_path, flat_path : str
        Where they came from (for messages and metadata).
    """

    dark: np.ndarray | None = None
    gain: np.ndarray | None = None
    dark_path: str = ""
    flat_path: str = ""

    def __post_init__(self) -> None:
        if self.dark is not None and self.gain is not None and self.dark.shape != self.gain.shape:
            raise ValueError(f"{self.dark_path} is {_shape_text(self.dark.shape)} but "
                             f"{self.flat_path} is {_shape_text(self.gain.shape)}")

    @property
    def shape(self) -> tuple[int, ...] | None:
        """The frame shape the masters fit, or ``None`` if there are none."""
        for image in (self.dark, self.gain):
            if image is not None:
                return image.shape
        return None

    def describe(self) -> dict[str, str]:
        """The master files used, for metadata."""
        return {"dark": os.path.basename(self.dark_path) if self.dark_path else "",
                "flat": os.path.basename(self.flat_path) if self.flat_path else ""}

    def check(self, shape: tuple[int, ...], *, name: str = "frame") -> None:
        """Raise ``ValueError`` (naming the master file) if frames of ``shape`` do not fit."""
        mine = self.shape
        if mine is not None and tuple(shape) != mine:
            path = self.dark_path if self.dark is not None else self.flat_path
            raise ValueError(f"{path}: master is {_shape_text(mine)}, but the {name} is "
                             f"{_shape_text(tuple(shape))}")

    def apply(self, frame: np.ndarray) -> np.ndarray:
        """Calibrate one raw frame: subtract the dark, divide out the flat.

        Parameters
        ----------
        frame : numpy.ndarray
            uint8, uint16 or float ``[0, 1]`` frame of the masters' shape.

        Returns
        -------
        numpy.ndarray
            The calibrated frame in the input's dtype (float input: float32), clipped to
            the type's range.

        Raises
        ------
        ValueError
            If the frame is malformed or not the masters' shape (naming the master).
        """
        frame = check_frame(frame)
        self.check(frame.shape)
        if self.dark is None and self.gain is None:
            return frame
        scale = _scale_of(frame.dtype)
        f = frame.astype(np.float32)
        if self.dark is not None:
            f -= self.dark * np.float32(scale)
        if self.gain is not None:
            f *= self.gain
        if frame.dtype.kind == "f":
            return np.maximum(f, 0.0, out=f)
        np.clip(f, 0.0, scale, out=f)
        return np.rint(f, out=f).astype(frame.dtype)


def _load(path: str, kind: str) -> tuple[np.ndarray, Mapping[str, Any]]:
    from live_stack.io.images import read_image

    if not os.path.isfile(path):
        raise SourceError(f"{path}: no such master {kind} file")
    image, meta = read_image(path)
    recorded = meta.get("master") if isinstance(meta, Mapping) else None
    if recorded in MASTER_KINDS and recorded != kind:
        raise ValueError(f"{path}: this is a master {recorded}, given as the master {kind}")
    return image, meta


def load_calibration(params: CalibParams) -> Calibration | None:
    """Read the master dark and flat that ``params`` names.

    Returns
    -------
    Calibration or None
        ``None`` when neither is given.

    Raises
    ------
    ValueError
        (:class:`~live_stack.io.SourceError` for unreadable files) naming the file that
        is missing, unreadable, of the other kind, or of another size than the other
        master.
    """
    if not params.enabled:
        return None
    dark = gain = None
    if params.dark:
        dark, _ = _load(params.dark, "dark")
    if params.flat:
        flat, meta = _load(params.flat, "flat")
        layout = meta.get("layout") if isinstance(meta, Mapping) else None
        gain = flat_gain(flat, layout if isinstance(layout, str) else None)
    return Calibration(dark=dark, gain=gain, dark_path=params.dark, flat_path=params.flat)


class CalibratedSource(FrameSource):
    """A frame source whose frames are calibrated on the fly (see :class:`Calibration`).

    Raises
    ------
    ValueError
        At once if the masters do not fit the source's frames (naming the master).
    """

    def __init__(self, source: FrameSource, calibration: Calibration) -> None:
        info = source.info
        calibration.check(info.shape, name=f"capture {info.path}")
        self._source = source
        self._calibration = calibration
        meta = dict(info.metadata)
        meta["calibration"] = calibration.describe()
        self._info = SourceInfo(path=info.path, width=info.width, height=info.height,
                                frames=info.frames, bit_depth=info.bit_depth, dtype=info.dtype,
                                layout=info.layout, has_timestamps=info.has_timestamps,
                                metadata=meta)

    def _read(self, index: int) -> np.ndarray:
        return self._calibration.apply(self._source[index])

    def timestamps(self) -> np.ndarray | None:
        """The raw source's capture times."""
        return self._source.timestamps()

    def _close(self) -> None:
        self._source.close()


def calibrate_source(source: FrameSource, calibration: Calibration | None) -> FrameSource:
    """Wrap ``source`` so that its frames are calibrated; ``source`` itself if no masters."""
    if calibration is None or calibration.shape is None:
        return source
    return CalibratedSource(source, calibration)
