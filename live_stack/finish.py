"""Finishing a stacked image: dispersion correction, normalisation, sharpening.

The three optional steps that follow the blend, in this order, for the offline pipeline
and the live snapshots alike:

1. :func:`live_stack.dispersion.rgb_align` (colour only): red and blue onto green;
2. :func:`live_stack.normalize.normalize`: sky background, fixed maximum brightness;
3. :func:`live_stack.sharpen.sharpen`: multi-level unsharp mask or wavelets.

With the defaults every step is off and the image is returned untouched.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from live_stack.dispersion import RGBAlignParams, rgb_align
from live_stack.normalize import NormalizeParams, normalize
from live_stack.sharpen import SharpenParams, sharpen


def finish(
    image: np.ndarray,
    *,
    rgbalign: RGBAlignParams,
    normalize_params: NormalizeParams,
    sharpen_params: SharpenParams,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Apply the enabled finishing steps to a stacked image.

    Parameters
    ----------
    image : numpy.ndarray
        float32 ``[0, 1]`` stack, ``(H, W)`` or ``(H, W, 3)``.
    rgbalign, normalize_params, sharpen_params
        The steps' parameters.

    Returns
    -------
    tuple
        ``(image, notes)``: the finished image, clipped to ``[0, 1]`` if any step ran
        (``image`` itself if none did), and plain values describing what was done
        (``rgb_offsets``, ``normalize``), for metadata and statistics.
    """
    notes: dict[str, Any] = {}
    out, offsets = rgb_align(image, rgbalign)
    if offsets is not None:
        notes["rgb_offsets"] = offsets.as_dict()
    out, norm = normalize(out, normalize_params)
    if norm:
        notes["normalize"] = norm
    out = sharpen(out, sharpen_params)
    if out is image:
        return image, notes
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False), notes
