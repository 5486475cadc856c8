"""The float32 dtype policy at the pipeline's boundary.

Frames enter the pipeline as ``uint8``, ``uint16`` or floating-point arrays of shape
``(H, W)`` (mono or raw Bayer) or ``(H, W, 3)`` (RGB, in that channel order). Inside the
pipeline every image is ``float32`` scaled so that the full range of the input's integer
type maps to ``[0, 1]``; floating-point input is taken to be on that scale already.
"""

from __future__ import annotations

import cv2
import numpy as np

#: The integer dtypes a frame may have, with the value that maps to 1.0.
INTEGER_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}

#: Luminance weights (Rec. 601) used to analyse colour frames.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def check_frame(frame: np.ndarray, *, name: str = "frame") -> np.ndarray:
    """Check that ``frame`` is a 2-D or ``(H, W, 3)`` array of a supported dtype.

    Parameters
    ----------
    frame : numpy.ndarray
        The frame to check.
    name : str
        The argument name used in error messages.

    Returns
    -------
    numpy.ndarray
        ``frame`` itself.

    Raises
    ------
    ValueError
        If the shape or the dtype is not supported, naming ``name``.
    """
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(frame).__name__}")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 3)):
        raise ValueError(f"{name} must have shape (H, W) or (H, W, 3), got {frame.shape}")
    if frame.shape[0] < 8 or frame.shape[1] < 8:
        raise ValueError(f"{name} is too small: {frame.shape[1]}x{frame.shape[0]} pixels")
    if frame.dtype not in INTEGER_SCALE and frame.dtype.kind != "f":
        raise ValueError(f"{name} has unsupported dtype {frame.dtype}; use uint8, uint16 or float")
    return frame


def to_float32(frame: np.ndarray, *, name: str = "frame") -> np.ndarray:
    """Convert a frame to float32 on the ``[0, 1]`` scale of its integer type.

    Parameters
    ----------
    frame : numpy.ndarray
        ``uint8``, ``uint16`` or floating-point frame, ``(H, W)`` or ``(H, W, 3)``.
    name : str
        The argument name used in error messages.

    Returns
    -------
    numpy.ndarray
        A new float32 array (the input is never modified).
    """
    frame = check_frame(frame, name=name)
    scale = INTEGER_SCALE.get(frame.dtype)
    if scale is None:
        return frame.astype(np.float32, copy=True)
    out = frame.astype(np.float32)
    out *= np.float32(1.0 / scale)
    return out


def luminance(frame: np.ndarray) -> np.ndarray:
    """Return the float32 luminance of a frame (the frame itself, as float32, if mono)."""
    f = to_float32(frame) if frame.dtype != np.float32 else frame
    if f.ndim == 2:
        return f
    return np.tensordot(f, LUMA_WEIGHTS, axes=([2], [0])).astype(np.float32, copy=False)


def luminance_u8_or_f32(frame: np.ndarray) -> np.ndarray:
    """Return a single-channel view for fast analysis, keeping ``uint8``/``uint16`` as is.

    OpenCV filters are several times faster on integer input; the analysis phases only
    need relative measures, so they take this and convert with :func:`to_float32` only
    where absolute scale matters.
    """
    frame = check_frame(frame)
    if frame.ndim == 2:
        return frame
    if frame.dtype.kind == "f":
        return luminance(frame)
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
