"""Optional sharpening of the output: multi-level unsharp mask or a trous wavelets.

A stack is sharper than any frame but still blurred by the mean seeing, and lucky
imagers sharpen it. Off by default (``sharpen_method = "none"``), since the stack is the
measurement and sharpening is taste. Two methods, both adding amplified detail to the
image, level by level, ``amount`` at the finest level and ``falloff`` times less at each
coarser one:

* ``unsharp``: a multi-radius unsharp mask. Level ``k`` is the image minus its Gaussian
  blur of sigma ``radius * 2**k``;
* ``wavelet``: the a trous (B3-spline) wavelet decomposition, as in RegiStax. Level
  ``k`` is the detail between scales ``2**k`` and ``2**(k+1)`` pixels. With
  ``denoise > 0``, detail below ``denoise`` times the level's noise (estimated from its
  median absolute value) is not amplified, so sharpening does not bring up the noise.

With every amount 0 both methods return the image unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

METHODS = ("none", "unsharp", "wavelet")
#: The B3-spline smoothing kernel of the a trous transform.
B3_KERNEL = np.array([1.0, 4.0, 6.0, 4.0, 1.0], dtype=np.float32) / 16.0
#: Median absolute deviation of unit Gaussian noise (to turn a MAD into a sigma).
MAD_TO_SIGMA = 0.6745
#: Most detail levels.
MAX_LEVELS = 8


@dataclass(frozen=True)
class SharpenParams:
    """Sharpening of the output (CLI/config prefix ``sharpen_``); off by default."""

    method: str = "none"  # none (off), unsharp (multi-level unsharp mask) or wavelet (a trous)
    amount: float = 1.0  # gain of the amplified detail at the finest level
    levels: int = 3  # detail levels, each twice the scale of the one before
    radius: float = 1.0  # unsharp: Gaussian sigma (pixels) of the finest level
    falloff: float = 0.5  # each coarser level's amount is this share of the finer one's
    denoise: float = 0.0  # wavelet: detail below this many noise sigmas is not amplified

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"sharpen_method must be one of {METHODS}, got {self.method!r}")
        if not 0.0 <= self.amount <= 20.0:
            raise ValueError(f"sharpen_amount must be 0..20, got {self.amount}")
        if not 1 <= self.levels <= MAX_LEVELS:
            raise ValueError(f"sharpen_levels must be 1..{MAX_LEVELS}, got {self.levels}")
        if not 0.3 <= self.radius <= 20.0:
            raise ValueError(f"sharpen_radius must be 0.3..20 pixels, got {self.radius}")
        if not 0.0 <= self.falloff <= 2.0:
            raise ValueError(f"sharpen_falloff must be 0..2, got {self.falloff}")
        if not 0.0 <= self.denoise <= 10.0:
            raise ValueError(f"sharpen_denoise must be 0..10, got {self.denoise}")

    def amounts(self) -> list[float]:
        """The gain of each level, finest first."""
        return [self.amount * self.falloff**k for k in range(self.levels)]


def _atrous_smooth(image: np.ndarray, level: int) -> np.ndarray:
    """Smooth with the B3 kernel dilated by ``2**level`` (holes between the taps)."""
    step = 1 << level
    kernel = np.zeros(4 * step + 1, dtype=np.float32)
    kernel[::step] = B3_KERNEL
    return cv2.sepFilter2D(image, cv2.CV_32F, kernel, kernel, borderType=cv2.BORDER_REFLECT)


def _shrink(detail: np.ndarray, sigmas: float) -> np.ndarray:
    """Soft-threshold ``detail`` at ``sigmas`` times its noise level (MAD estimate)."""
    if sigmas <= 0:
        return detail
    noise = float(np.median(np.abs(detail))) / MAD_TO_SIGMA
    t = np.float32(sigmas * noise)
    return np.sign(detail) * np.maximum(np.abs(detail) - t, 0.0)


def detail_levels(image: np.ndarray, params: SharpenParams) -> list[np.ndarray]:
    """The detail of each level (finest first), as the chosen method defines it."""
    img = image.astype(np.float32, copy=False)
    if params.method == "unsharp":
        return [img - cv2.GaussianBlur(img, (0, 0), params.radius * 2**k,
                                       borderType=cv2.BORDER_REFLECT)
                for k in range(params.levels)]
    out = []
    current = img
    for k in range(params.levels):
        smooth = _atrous_smooth(current, k)
        out.append(current - smooth)
        current = smooth
    return out


def sharpen(image: np.ndarray, params: SharpenParams = SharpenParams()) -> np.ndarray:
    """Sharpen an image (or return it unchanged when the method is ``"none"``).

    Parameters
    ----------
    image : numpy.ndarray
        float ``(H, W)`` or ``(H, W, 3)`` image on the ``[0, 1]`` scale.
    params : SharpenParams
        Method, amounts, levels.

    Returns
    -------
    numpy.ndarray
        float32 sharpened image (not clipped), or ``image`` itself when off.
    """
    if not isinstance(image, np.ndarray) or image.ndim not in (2, 3):
        raise ValueError(f"image must be an (H, W) or (H, W, 3) array, got "
                         f"{getattr(image, 'shape', type(image).__name__)}")
    if params.method == "none":
        return image
    out = image.astype(np.float32, copy=True)
    for gain, detail in zip(params.amounts(), detail_levels(image, params), strict=True):
        if gain:
            if params.method == "wavelet":
                detail = _shrink(detail, params.denoise)
            out += np.float32(gain) * detail
    return out
