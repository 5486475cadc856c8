"""The reference image: the mean of the best globally aligned frames.

It serves three purposes: the AP grid is laid on it, the per-AP shifts are measured
against it, and it fills the parts of the final image that no AP covers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from live_stack.align import GlobalAlignment
from live_stack.frames import to_float32
from live_stack.quality import Ranking


@dataclass(frozen=True)
class ReferenceParams:
    """Parameters of the reference (CLI/config prefix ``reference_``)."""

    fraction: float = 0.1  # share of the aligned frames averaged into the reference
    min_frames: int = 3  # at least this many frames (fewer only if the capture is shorter)
    max_frames: int = 400  # at most this many frames, to bound the work on long captures

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"reference_fraction must be in (0, 1], got {self.fraction}")
        if self.min_frames < 1:
            raise ValueError(f"reference_min_frames must be >= 1, got {self.min_frames}")
        if self.max_frames < self.min_frames:
            raise ValueError(f"reference_max_frames ({self.max_frames}) must be >= "
                             f"reference_min_frames ({self.min_frames})")


@dataclass(frozen=True)
class Reference:
    """Result of :func:`build_reference`.

    Attributes
    ----------
    image : numpy.ndarray
        float32 ``(H, W)`` or ``(H, W, 3)`` mean of the frames, in the target frame's
        coordinates; pixels no frame covers are filled from the nearest covered ones.
    luminance : numpy.ndarray
        float32 ``(H, W)`` luminance of ``image``.
    frames : numpy.ndarray
        Indices of the frames averaged.
    box : tuple
        ``(y0, x0, y1, x1)``: the area every averaged frame covers.
    """

    image: np.ndarray
    luminance: np.ndarray
    frames: np.ndarray
    box: tuple[int, int, int, int]


def shift_frame(frame: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Undo a measured shift: return ``frame(y + dy, x + dx)`` as float32 (bicubic)."""
    f = to_float32(frame) if frame.dtype != np.float32 else frame
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(f, m, (f.shape[1], f.shape[0]),
                          flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def mean_aligned(frames: Iterable[np.ndarray], shifts: np.ndarray) -> np.ndarray:
    """Mean of frames with their global shifts undone (float32 ``[0, 1]``).

    Parameters
    ----------
    frames : iterable of numpy.ndarray
        The frames, in the order of ``shifts``.
    shifts : numpy.ndarray
        ``(k, 2)`` global ``(dy, dx)`` of each frame.
    """
    total = None
    count = 0
    for frame, (dy, dx) in zip(frames, np.asarray(shifts, dtype=np.float64), strict=True):
        warped = shift_frame(frame, float(dy), float(dx))
        total = warped if total is None else cv2.add(total, warped)
        count += 1
    if total is None:
        raise ValueError("frames is empty: nothing to average")
    return (total / np.float32(count)).astype(np.float32)


def covered_box(shifts: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The area of the target's coordinates that every frame with these shifts covers.

    A frame displaced by ``(dy, dx)`` covers ``[-dy, H - dy) x [-dx, W - dx)``.
    """
    h, w = shape
    shifts = np.asarray(shifts, dtype=np.float64).reshape(-1, 2)
    if len(shifts) == 0:
        return 0, 0, h, w
    y0 = int(np.ceil(max(0.0, float((-shifts[:, 0]).max()))))
    x0 = int(np.ceil(max(0.0, float((-shifts[:, 1]).max()))))
    y1 = int(np.floor(min(float(h), float((h - shifts[:, 0]).min()))))
    x1 = int(np.floor(min(float(w), float((w - shifts[:, 1]).min()))))
    if y1 - y0 < 8 or x1 - x0 < 8:
        raise ValueError("the aligned frames have no common area: drift exceeds the frame")
    return y0, x0, y1, x1


def reference_count(usable: int, params: ReferenceParams) -> int:
    """How many frames go into the reference out of ``usable`` aligned ones."""
    want = int(round(params.fraction * usable))
    return max(1, min(usable, max(params.min_frames, min(params.max_frames, want))))


def build_reference(
    frames: Sequence[np.ndarray],
    ranking: Ranking,
    alignment: GlobalAlignment,
    params: ReferenceParams = ReferenceParams(),
) -> Reference:
    """Average the best globally aligned frames.

    Parameters
    ----------
    frames : sequence of numpy.ndarray
        The capture.
    ranking : Ranking
        Frame qualities.
    alignment : GlobalAlignment
        Global shifts; frames that failed to align are never used.
    params : ReferenceParams
        How many frames to average.

    Returns
    -------
    Reference
    """
    usable = [int(i) for i in ranking.order if alignment.ok[i]]
    if not usable:
        raise ValueError("no frame could be aligned")
    chosen = np.array(sorted(usable[: reference_count(len(usable), params)]))
    return make_reference((frames[int(i)] for i in chosen), alignment.shifts[chosen],
                          alignment.shape, chosen=chosen)


def make_reference(frames: Iterable[np.ndarray], shifts: np.ndarray,
                   shape: tuple[int, ...], *, chosen: np.ndarray) -> Reference:
    """The reference made of the chosen frames: their globally aligned mean, its
    luminance, and the area they all cover.

    Parameters
    ----------
    frames : iterable of numpy.ndarray
        The chosen frames, in the order of ``shifts``.
    shifts : numpy.ndarray
        ``(k, 2)`` their global ``(dy, dx)``.
    shape : tuple
        ``(H, W)`` of the frames.
    chosen : numpy.ndarray
        Their indices (kept in :attr:`Reference.frames`).
    """
    image = mean_aligned(frames, shifts)
    box = covered_box(shifts, shape[:2])
    lum = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return Reference(image=image, luminance=lum, frames=np.asarray(chosen), box=box)
