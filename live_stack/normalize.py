"""Normalising a stack: background compensation and a fixed maximum brightness.

Two optional steps on the stacked image, in this order:

* **background compensation** (``normalize_background``): in twilight or daylight the
  sky behind a planet is bright, and brighter towards the horizon or the Sun. A plane
  ``a + b*y + c*x`` is fitted, per colour channel, to the darkest share of the image
  (the sky) and subtracted, which takes out both the level and the colour cast of the
  sky;
* **fixed maximum brightness** (``normalize_enabled``): the image is scaled so that its
  bright end (a high percentile of the luminance, so that a few hot or saturated pixels
  do not count) sits at ``normalize_maximum``; every stack of a series then comes out
  equally bright. All channels get the same gain, so the colour balance is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from live_stack.frames import LUMA_WEIGHTS

#: Side (pixels) the image is area-downsampled to, at most, to fit the background.
FIT_SIDE = 128
#: Fewest sample pixels a background fit needs.
MIN_FIT_PIXELS = 16


@dataclass(frozen=True)
class NormalizeParams:
    """Normalisation of the stack (CLI/config prefix ``normalize_``)."""

    enabled: bool = False  # scale the stack so that its bright end is at normalize_maximum
    maximum: float = 0.9  # brightness (0..1] the bright end is scaled to
    percentile: float = 99.9  # the bright end: this percentile of the luminance
    background: bool = False  # subtract a sky background plane fitted per channel (twilight)
    background_share: float = 0.25  # darkest share of the image the background is fitted to

    def __post_init__(self) -> None:
        if not 0.0 < self.maximum <= 1.0:
            raise ValueError(f"normalize_maximum must be in (0, 1], got {self.maximum}")
        if not 50.0 <= self.percentile <= 100.0:
            raise ValueError(f"normalize_percentile must be 50..100, got {self.percentile}")
        if not 0.01 <= self.background_share <= 0.9:
            raise ValueError(f"normalize_background_share must be 0.01..0.9, got "
                             f"{self.background_share}")

    @property
    def active(self) -> bool:
        """Either step is switched on."""
        return self.enabled or self.background


def _luma(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    return np.tensordot(image, LUMA_WEIGHTS, axes=([2], [0])).astype(np.float32)


def fit_background(image: np.ndarray, share: float) -> np.ndarray:
    """Plane coefficients ``(C, 3)`` (``a, b, c`` of ``a + b*y + c*x``, in full-size pixels)
    fitted per channel to the darkest ``share`` of the image."""
    img = image if image.ndim == 3 else image[:, :, None]
    h, w, channels = img.shape
    step = max(1, int(np.ceil(max(h, w) / FIT_SIDE)))
    small_w, small_h = max(1, w // step), max(1, h // step)
    small = cv2.resize(img, (small_w, small_h), interpolation=cv2.INTER_AREA)
    small = small.reshape(small_h, small_w, channels)
    ys = (np.arange(small_h) + 0.5) * (h / small_h) - 0.5
    xs = (np.arange(small_w) + 0.5) * (w / small_w) - 0.5
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    lum = _luma(small if channels == 3 else small[:, :, 0])
    dark = lum <= np.quantile(lum, share)
    if dark.sum() < MIN_FIT_PIXELS:
        dark = np.ones_like(dark)
    design = np.column_stack([np.ones(dark.sum()), gy[dark], gx[dark]])
    coeffs = np.empty((channels, 3))
    for c in range(channels):
        coeffs[c], *_ = np.linalg.lstsq(design, small[:, :, c][dark].astype(np.float64),
                                        rcond=None)
    return coeffs


def normalize(image: np.ndarray, params: NormalizeParams = NormalizeParams()
              ) -> tuple[np.ndarray, dict[str, Any]]:
    """Apply the enabled normalisation steps.

    Parameters
    ----------
    image : numpy.ndarray
        float32 ``(H, W)`` or ``(H, W, 3)`` stack.
    params : NormalizeParams
        Which steps, and their settings.

    Returns
    -------
    tuple
        ``(image, notes)``: the normalised image (``image`` itself if no step is
        enabled) and what was done (``background`` plane per channel, ``gain``), as
        plain values.
    """
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        raise ValueError(f"image must be an (H, W) or (H, W, 3) array, got "
                         f"{getattr(image, 'shape', type(image).__name__)}")
    if not params.active:
        return image, {}
    out = image.astype(np.float32, copy=True)
    notes: dict[str, Any] = {}
    if params.background:
        coeffs = fit_background(out, params.background_share)
        h, w = out.shape[:2]
        ys = np.arange(h, dtype=np.float32)[:, None]
        xs = np.arange(w, dtype=np.float32)[None, :]
        view = out if out.ndim == 3 else out[:, :, None]
        for c, (a, b, cx) in enumerate(coeffs):
            view[:, :, c] -= np.float32(a) + np.float32(b) * ys + np.float32(cx) * xs
        notes["background"] = np.round(coeffs, 6).tolist()
    if params.enabled:
        bright = float(np.percentile(_luma(out), params.percentile))
        gain = params.maximum / bright if bright > 0 else 1.0
        out *= np.float32(gain)
        notes["gain"] = round(gain, 6)
    return out, notes
