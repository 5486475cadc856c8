"""Atmospheric dispersion correction: re-register the red and blue channels on green.

Low in the sky the atmosphere acts as a weak prism: the red image of a planet sits a
little higher than the green one and the blue one a little lower, a fraction of a pixel
to a few pixels apart, which shows as coloured fringes on opposite limbs. On the stacked
image the offsets of red and blue against green are measured by band-limited phase
correlation (:mod:`live_stack.correlate`, sub-pixel) of a central square crop, refined
once on the corrected channel, and removed by shifting the channel (Lanczos
interpolation). A channel whose correlation peak is too weak to trust is left as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from live_stack.correlate import correlate, make_target

#: Largest side (pixels) of the central crop the offsets are measured on.
MAX_CROP = 512
#: Width (pixels) of the low-passed correlation peak.
PEAK_SIGMA = 1.0
#: Measurements per channel: the first, then refinements on the corrected channel.
ITERATIONS = 2
#: Correlation peaks (0..1) weaker than this are not trusted: the channel is left alone.
MIN_STRENGTH = 0.1
#: Channels measured against green, by index, with their names.
MEASURED = ((0, "red"), (2, "blue"))
GREEN = 1


@dataclass(frozen=True)
class RGBAlignParams:
    """Dispersion correction of colour stacks (CLI/config prefix ``rgbalign_``)."""

    enabled: bool = False  # measure and remove the red/blue offsets against green (--rgb-align)
    max_shift: float = 8.0  # largest channel offset (pixels) searched for

    def __post_init__(self) -> None:
        if not 0.5 <= self.max_shift <= 64:
            raise ValueError(f"rgbalign_max_shift must be 0.5..64 pixels, got {self.max_shift}")


@dataclass(frozen=True)
class ChannelOffsets:
    """Result of :func:`measure_offsets`.

    Attributes
    ----------
    red, blue : tuple of float
        ``(dy, dx)``: the channel shows the green image displaced by ``+(dy, dx)``.
    strength : tuple of float
        Correlation peak (0..1) of red and of blue.
    """

    red: tuple[float, float]
    blue: tuple[float, float]
    strength: tuple[float, float]

    def as_dict(self) -> dict[str, list[float]]:
        """Plain values for metadata and statistics."""
        return {"red": [round(v, 4) for v in self.red], "blue": [round(v, 4) for v in self.blue],
                "strength": [round(v, 4) for v in self.strength]}


def shift_channel(channel: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Undo a displacement: return ``channel(y + dy, x + dx)`` (Lanczos, float32)."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    c = channel.astype(np.float32, copy=False)
    return cv2.warpAffine(c, m, (c.shape[1], c.shape[0]),
                          flags=cv2.INTER_LANCZOS4 | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def _crop(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    side = min(h, w, MAX_CROP) // 2 * 2
    y0, x0 = (h - side) // 2, (w - side) // 2
    return image[y0 : y0 + side, x0 : x0 + side]


def _check_colour(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be an (H, W, 3) colour image, got "
                         f"{getattr(image, 'shape', type(image).__name__)}")
    if min(image.shape[:2]) < 16:
        raise ValueError(f"image is too small to measure channel offsets: "
                         f"{image.shape[1]}x{image.shape[0]}")
    return image


def measure_offsets(image: np.ndarray, params: RGBAlignParams = RGBAlignParams()) -> ChannelOffsets:
    """Measure the sub-pixel offsets of the red and blue channels against green.

    Parameters
    ----------
    image : numpy.ndarray
        float ``(H, W, 3)`` RGB image (a stack).
    params : RGBAlignParams
        The search radius.

    Returns
    -------
    ChannelOffsets
    """
    crop = _crop(_check_colour(image)).astype(np.float32)
    target = make_target(crop[:, :, GREEN], peak_sigma=PEAK_SIGMA)
    found: dict[int, tuple[float, float, float]] = {}
    for c, _ in MEASURED:
        channel = crop[:, :, c]
        dy = dx = 0.0
        strength = 0.0
        for _ in range(ITERATIONS):
            moved = shift_channel(channel, dy, dx) if (dy or dx) else channel
            r = correlate(moved, target, max_shift=params.max_shift)
            strength = float(r.strength[0])
            if strength < MIN_STRENGTH:
                break
            dy += float(r.dy[0])
            dx += float(r.dx[0])
        found[c] = (dy, dx, strength)
    return ChannelOffsets(red=found[0][:2], blue=found[2][:2],
                          strength=(found[0][2], found[2][2]))


def remove_offsets(image: np.ndarray, offsets: ChannelOffsets) -> np.ndarray:
    """Shift red and blue onto green (channels with a weak measurement are kept as is)."""
    out = _check_colour(image).astype(np.float32, copy=True)
    for (c, _), (dy, dx), strength in zip(MEASURED, (offsets.red, offsets.blue),
                                          offsets.strength, strict=True):
        if strength >= MIN_STRENGTH and (dy or dx):
            out[:, :, c] = shift_channel(out[:, :, c], dy, dx)
    return out


def rgb_align(
    image: np.ndarray, params: RGBAlignParams = RGBAlignParams()
) -> tuple[np.ndarray, ChannelOffsets | None]:
    """Apply the dispersion correction if enabled and the image is in colour.

    Returns
    -------
    tuple
        ``(image, offsets)``: the corrected image (``image`` itself when there was
        nothing to do) and the offsets measured (``None`` then).
    """
    if not params.enabled or image.ndim != 3:
        return image, None
    offsets = measure_offsets(image, params)
    return remove_offsets(image, offsets), offsets
