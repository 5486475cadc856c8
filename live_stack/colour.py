"""Colour from raw Bayer frames: demosaicing, and a frame source that does it on the fly.

A one-shot colour camera records a raw mosaic: one colour per pixel, in a 2x2 pattern
named by its top-left cell (``RGGB``, ``GRBG``, ``GBRG``, ``BGGR``). :func:`debayer`
interpolates the two missing colours at every pixel with one of OpenCV's demosaicing
methods:

* ``bilinear``: the average of the nearest samples of each colour (fast, a little soft);
* ``vng``: variable number of gradients (sharper, 8-bit frames only: OpenCV's limit);
* ``ea``: edge-aware (interpolates along edges rather than across them).

:func:`debayer_source` wraps a frame source whose layout is a Bayer pattern so that it
yields ``(H, W, 3)`` RGB frames; the pipeline then analyses their luminance (quality,
alignment) and stacks all three channels. The live daemon calls :func:`debayer_frame`
(or :func:`debayer`) on each raw frame before giving it to the live stacker.
:func:`mosaic` is the inverse (sampling an RGB image through a colour filter array), for
simulated raw captures.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from live_stack.frames import INTEGER_SCALE, check_frame
from live_stack.io import BAYER_PATTERNS, FrameSource, SourceInfo

#: Demosaicing methods, see the module docstring.
METHODS = ("bilinear", "vng", "ea")
#: OpenCV code suffix of each method.
_METHOD_SUFFIX = {"bilinear": "", "vng": "_VNG", "ea": "_EA"}
#: OpenCV names a mosaic by the second row's second and third samples: our top-left
#: ``RGGB`` is OpenCV's ``BayerBG``, and so on.
_CV_PATTERN = {"RGGB": "BG", "GRBG": "GB", "GBRG": "GR", "BGGR": "RG"}
#: Values of :attr:`ColourParams.bayer` besides a pattern.
BAYER_AUTO = "auto"
BAYER_NONE = "none"
#: Channel index of each colour letter.
_CHANNEL = {"R": 0, "G": 1, "B": 2}
#: Offsets of the four cells of a 2x2 pattern, in the order its name lists them.
_CELLS = ((0, 0), (0, 1), (1, 0), (1, 1))
#: Methods that OpenCV runs on 8-bit mosaics only.
EIGHT_BIT_ONLY = ("vng",)


@dataclass(frozen=True)
class ColourParams:
    """How raw colour captures become RGB (CLI/config prefix ``colour_``)."""

    debayer: str = "bilinear"  # demosaicing method: bilinear, vng (8-bit only) or ea (edge-aware)
    bayer: str = BAYER_AUTO  # mosaic pattern: auto (from the file), none (keep raw), or RGGB..

    def __post_init__(self) -> None:
        if self.debayer not in METHODS:
            raise ValueError(f"colour_debayer must be one of {METHODS}, got {self.debayer!r}")
        allowed = (BAYER_AUTO, BAYER_NONE) + BAYER_PATTERNS
        if self.bayer not in allowed:
            raise ValueError(f"colour_bayer must be one of {allowed}, got {self.bayer!r}")


def _check_pattern(pattern: str) -> str:
    if pattern not in BAYER_PATTERNS:
        raise ValueError(f"pattern must be one of {BAYER_PATTERNS}, got {pattern!r}")
    return pattern


def debayer(frame: np.ndarray, pattern: str, method: str = "bilinear") -> np.ndarray:
    """Demosaic a raw Bayer frame into RGB.

    Parameters
    ----------
    frame : numpy.ndarray
        ``(H, W)`` raw mosaic: uint8, uint16, or float on the ``[0, 1]`` scale.
    pattern : str
        The mosaic's top-left 2x2 cell: ``"RGGB"``, ``"GRBG"``, ``"GBRG"`` or ``"BGGR"``.
    method : str
        ``"bilinear"``, ``"vng"`` (uint8 frames only) or ``"ea"``.

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` RGB frame of the input's dtype (float input gives float32).

    Raises
    ------
    ValueError
        For a frame that is not a 2-D mosaic, an unknown pattern or method, or ``vng``
        on a frame that is not uint8.
    """
    frame = check_frame(frame)
    if frame.ndim != 2:
        raise ValueError(f"frame must be a 2-D raw mosaic, got shape {frame.shape}")
    _check_pattern(pattern)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    floating = frame.dtype.kind == "f"
    if method in EIGHT_BIT_ONLY and frame.dtype != np.uint8:
        raise ValueError(f"method {method!r} works on uint8 mosaics only (an OpenCV limit), "
                         f"got {frame.dtype}; use 'bilinear' or 'ea'")
    raw = frame
    if floating:
        scale = INTEGER_SCALE[np.dtype(np.uint16)]
        raw = np.rint(np.clip(frame, 0.0, 1.0) * scale).astype(np.uint16)
    code = getattr(cv2, f"COLOR_Bayer{_CV_PATTERN[pattern]}2RGB{_METHOD_SUFFIX[method]}")
    rgb = cv2.cvtColor(np.ascontiguousarray(raw), code)
    if floating:
        return rgb.astype(np.float32) * np.float32(1.0 / scale)
    return rgb


def mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample an RGB image through a Bayer colour filter array (the inverse of debayering).

    Parameters
    ----------
    rgb : numpy.ndarray
        ``(H, W, 3)`` image, any dtype.
    pattern : str
        The mosaic's top-left 2x2 cell.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` raw mosaic of the same dtype.
    """
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be an (H, W, 3) array, got "
                         f"{getattr(rgb, 'shape', type(rgb).__name__)}")
    _check_pattern(pattern)
    out = np.empty(rgb.shape[:2], dtype=rgb.dtype)
    for letter, (dy, dx) in zip(pattern, _CELLS, strict=True):
        out[dy::2, dx::2] = rgb[dy::2, dx::2, _CHANNEL[letter]]
    return out


def channel_masks(pattern: str, shape: tuple[int, int]) -> np.ndarray:
    """bool ``(3, H, W)``: which pixels of a mosaic carry red, green and blue."""
    _check_pattern(pattern)
    masks = np.zeros((3,) + tuple(shape), dtype=bool)
    for letter, (dy, dx) in zip(pattern, _CELLS, strict=True):
        masks[_CHANNEL[letter], dy::2, dx::2] = True
    return masks


def layout_pattern(layout: str, params: ColourParams, *, name: str = "frames") -> str | None:
    """The Bayer pattern to debayer frames of ``layout`` with, or ``None`` to keep them.

    ``colour_bayer = "auto"`` debayers Bayer layouts; ``"none"`` never debayers; a pattern
    debayers mono frames with it (a raw mosaic recorded as mono).

    Raises
    ------
    ValueError
        If a pattern is forced on RGB frames (naming ``name``).
    """
    if params.bayer == BAYER_NONE:
        return None
    if params.bayer == BAYER_AUTO:
        return layout if layout in BAYER_PATTERNS else None
    if layout == "rgb":
        raise ValueError(f"{name}: colour_bayer {params.bayer} given, but the frames are RGB "
                         "already")
    return params.bayer


def source_pattern(info: SourceInfo, params: ColourParams) -> str | None:
    """:func:`layout_pattern` for a frame source (errors name its file)."""
    return layout_pattern(info.layout, params, name=info.path)


def debayer_frame(frame: np.ndarray, layout: str,
                  params: ColourParams = ColourParams()) -> np.ndarray:
    """One frame of a stream whose frames carry their layout (the live daemon's ingest):
    debayered if :func:`layout_pattern` says so, else returned as it is.

    Raises
    ------
    ValueError
        As :func:`debayer` and :func:`layout_pattern`.
    """
    pattern = layout_pattern(layout, params)
    return frame if pattern is None else debayer(frame, pattern, params.debayer)


class DebayeredSource(FrameSource):
    """A frame source that demosaics the raw frames of another on the fly.

    Parameters
    ----------
    source : FrameSource
        The raw source (its frames ``(H, W)`` mosaics).
    pattern : str
        Bayer pattern of the mosaic.
    method : str
        Demosaicing method (see :func:`debayer`).

    Notes
    -----
    ``info`` is the raw source's with the layout ``"rgb"``; closing this source closes
    the raw one.
    """

    def __init__(self, source: FrameSource, pattern: str, method: str = "bilinear") -> None:
        _check_pattern(pattern)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        info = source.info
        if info.layout == "rgb":
            raise ValueError(f"{info.path}: the frames are RGB already; nothing to debayer")
        if method in EIGHT_BIT_ONLY and info.dtype != np.uint8:
            raise ValueError(f"{info.path}: colour_debayer {method!r} works on 8-bit captures "
                             f"only (an OpenCV limit), this one is {info.bit_depth}-bit; use "
                             "'bilinear' or 'ea'")
        self._source = source
        self._pattern = pattern
        self._method = method
        meta = dict(info.metadata)
        meta["debayer"] = {"pattern": pattern, "method": method}
        self._info = SourceInfo(path=info.path, width=info.width, height=info.height,
                                frames=info.frames, bit_depth=info.bit_depth, dtype=info.dtype,
                                layout="rgb", has_timestamps=info.has_timestamps,
                                metadata=meta)

    @property
    def raw(self) -> FrameSource:
        """The wrapped raw source."""
        return self._source

    def _read(self, index: int) -> np.ndarray:
        return debayer(self._source[index], self._pattern, self._method)

    def timestamps(self) -> np.ndarray | None:
        """The raw source's capture times."""
        return self._source.timestamps()

    def _close(self) -> None:
        self._source.close()


def debayer_source(source: FrameSource, params: ColourParams = ColourParams()) -> FrameSource:
    """Wrap ``source`` so that its frames come out in RGB if it is a raw Bayer capture.

    Returns ``source`` itself when there is nothing to debayer (mono or RGB frames, or
    ``colour_bayer = "none"``).
    """
    pattern = source_pattern(source.info, params)
    if pattern is None:
        return source
    return DebayeredSource(source, pattern, params.debayer)
