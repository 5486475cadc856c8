"""The alignment-point (AP) grid laid over the reference image.

APs sit on a regular grid over the area every used frame covers, the outer boxes on its
edges (their patches' search margins reach past it; where that leaves the frame, the
missing part is mirrored in, see :func:`live_stack.local.extract`), so that the stack
reaches the edges of the output (:func:`live_stack.stack.blend`). An AP is
dropped when its box is dim (dark sky around a planet) or has too little structure in
both directions to measure a shift (a flat mare, a featureless limb segment); its area
is then filled by the globally aligned reference when the patches are blended.

How far apart the APs are (``ap_step`` 0) follows from the frames' signal-to-noise. Where
a single frame's detail in the AP boxes is at or below its noise (a low-contrast mare in
poor light), the stack is limited by noise, not by blur: the grid is laid twice as
dense, so that every pixel is blended from more overlapping AP stacks, each of its own
best frames, and so from more distinct frames (:func:`detail_to_noise`). A grid that
keeps only a few APs (a small planet) is laid twice as dense too: more of them reach the
disk's limb and each is chosen more locally, for a cost that is small in any case.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from live_stack.correlate import noise_floor
from live_stack.fft import rfft2

#: An AP is lit when at least this many pixels of its box reach the brightness threshold
#: (a 4x4 area: a small moon beside a planet gets its AP, a hot pixel does not; the mean
#: brightness of the box, the earlier test, dropped a 7-pixel moon as dim sky).
MIN_LIT_PIXELS = 16

#: The band of spatial frequencies (cycles per pixel) whose power is a box's detail in
#: :func:`detail_to_noise`: above the box's slow shading, below the frequencies that seeing
#: leaves to the noise alone.
DETAIL_BAND = (0.03, 0.2)


@dataclass(frozen=True)
class APParams:
    """Parameters of the AP grid (CLI/config prefix ``ap_``)."""

    size: int = 64  # side of an AP's box in pixels (the patch that is stacked), even
    step: int = 0  # largest distance between neighbouring APs; 0 = automatic (see dense_below)
    search: int = 8  # largest local shift, in pixels, measured around each AP
    min_brightness: float = 0.1  # drop APs with under 16 pixels at this share of the bright end
    min_structure: float = 0.02  # drop APs with less structure than this share of the 90th pct
    dense_below: float = 2.0  # step 0: APs twice as dense under this detail-to-noise (0: never)
    dense_under: int = 16  # step 0: a grid keeping fewer APs is laid twice as dense (0: never)

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 512 or self.size % 2:
            raise ValueError(f"ap_size must be an even number of pixels 16..512, got {self.size}")
        if self.step and not 4 <= self.step <= self.size:
            raise ValueError(f"ap_step must be 0 (automatic) or 4..ap_size, got {self.step}")
        if not 1 <= self.search <= self.size // 2:
            raise ValueError(f"ap_search must be 1..ap_size/2, got {self.search}")
        if not 0.0 <= self.min_brightness < 1.0:
            raise ValueError(f"ap_min_brightness must be in [0, 1), got {self.min_brightness}")
        if not 0.0 <= self.min_structure < 1.0:
            raise ValueError(f"ap_min_structure must be in [0, 1), got {self.min_structure}")
        if not 0.0 <= self.dense_below <= 1000.0:  # NaN too
            raise ValueError(f"ap_dense_below must be 0..1000, got {self.dense_below}")
        if isinstance(self.dense_under, bool) or not isinstance(self.dense_under, int) \
                or not 0 <= self.dense_under <= 10000:
            raise ValueError(f"ap_dense_under must be 0..10000 APs, got {self.dense_under}")

    @property
    def spacing(self) -> int:
        """The largest step between neighbouring APs: three quarters of the box by
        default.

        The grid spaces its APs evenly (to a pixel), at most this far apart, from one
        edge of the area to the other (:func:`lay_grid`); neighbouring boxes then overlap
        by at least a quarter and the blending weights ramp over each axis's overlap (see
        :func:`live_stack.stack.bump`), so no pixel of the AP area takes any of the
        blurrier reference.
        """
        return self.step or max(4, (self.size * 3) // 4)

    def spacing_at(self, detail: float) -> int:
        """The step for frames whose detail is ``detail`` times their noise
        (:func:`detail_to_noise`): :attr:`spacing`, or half of it (three eighths of the
        box) when ``ap_step`` is 0 and ``detail`` is under ``ap_dense_below``."""
        if self.step or not detail < self.dense_below:  # NaN: not measured
            return self.spacing
        return self.dense_spacing

    @property
    def dense_spacing(self) -> int:
        """The step of a grid laid twice as dense: three eighths of the box."""
        return max(4, (self.size * 3) // 8)

    @property
    def fft_size(self) -> int:
        """Side of the patch measured and stacked: the box plus the search margin."""
        return self.size + 2 * self.search


@dataclass(frozen=True)
class APGrid:
    """Result of :func:`lay_grid`.

    Attributes
    ----------
    centres : numpy.ndarray
        int ``(m, 2)`` ``(y, x)`` of each kept AP (the box spans ``centre - size/2`` to
        ``centre + size/2``).
    size : int
        Box side.
    search : int
        Search radius in pixels.
    shape : tuple
        ``(H, W)`` of the reference.
    dropped_dim, dropped_flat : int
        How many candidate APs were dropped, and why.
    neighbours : numpy.ndarray
        int ``(m, 8)`` indices of each AP's grid neighbours (up to 8, padded with -1).
    step : int
        Distance between neighbouring APs, the larger of the two axes' (0: unknown, blend
        as for half a box).
    steps : tuple of int
        ``(y, x)`` distance between neighbouring APs along each axis (0: as ``step``); the
        boxes' blending ramps span each axis's overlap.
    detail : float
        A frame's detail over its noise in the AP boxes (:func:`detail_to_noise`), which
        chose the step; NaN where not measured.
    dense : bool
        Laid twice as dense as :attr:`APParams.spacing`: because of that, or because the
        usual grid keeps fewer than ``ap_dense_under`` APs (a small disk: at hardly any
        cost, more APs reach its limb and each is chosen more locally).
    dense_reason : str
        Why, in words ("" when not dense).
    faint : bool
        Laid dense because a frame's detail is under its noise (``ap_dense_below``): the
        APs' frames are then chosen by the coarser quality measure
        (:attr:`live_stack.quality.QualityParams.faint`), which noise fools less.
    """

    centres: np.ndarray
    size: int
    search: int
    shape: tuple[int, int]
    dropped_dim: int = 0
    dropped_flat: int = 0
    neighbours: np.ndarray = field(default_factory=lambda: np.zeros((0, 8), dtype=np.intp))
    step: int = 0
    steps: tuple[int, int] = (0, 0)
    detail: float = float("nan")
    dense: bool = False
    dense_reason: str = ""
    faint: bool = False

    def __len__(self) -> int:
        return len(self.centres)

    @property
    def boxes(self) -> np.ndarray:
        """float ``(m, 4)`` boxes ``(y0, x0, y1, x1)``."""
        h = self.size / 2
        c = self.centres.astype(np.float64)
        return np.column_stack([c[:, 0] - h, c[:, 1] - h, c[:, 0] + h, c[:, 1] + h])

    @property
    def fft_size(self) -> int:
        """Side of the measured and stacked patch (box plus search margin)."""
        return self.size + 2 * self.search


def structure(lum: np.ndarray, centres: np.ndarray, size: int) -> np.ndarray:
    """Smaller eigenvalue of the structure tensor summed over each AP box, per pixel.

    The tensor is summed box by box (on a box and a one-pixel rim, for the gradient), so
    no full-frame temporaries are made: a few hundred boxes cost far less memory than
    integral images of a large frame.
    """
    h = size // 2
    out = np.zeros(len(centres))
    for i, (cy, cx) in enumerate(centres):
        y0, x0 = max(int(cy) - h - 1, 0), max(int(cx) - h - 1, 0)
        box = lum[y0 : int(cy) + h + 1, x0 : int(cx) + h + 1].astype(np.float32)
        gx = cv2.Sobel(box, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8)[1:-1, 1:-1]
        gy = cv2.Sobel(box, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8)[1:-1, 1:-1]
        jxx, jyy, jxy = float((gx * gx).sum()), float((gy * gy).sum()), float((gx * gy).sum())
        tr, det = jxx + jyy, jxx * jyy - jxy * jxy
        out[i] = tr / 2 - np.sqrt(max(tr * tr / 4 - det, 0.0))
    return out / float(size * size)


def lay_grid(
    reference: np.ndarray,
    params: APParams = APParams(),
    *,
    box: tuple[int, int, int, int] | None = None,
    frame: np.ndarray | None = None,
    frame_shift: tuple[float, float] = (0.0, 0.0),
) -> APGrid:
    """Lay the AP grid on a reference image.

    Parameters
    ----------
    reference : numpy.ndarray
        float32 luminance of the reference, ``(H, W)``.
    params : APParams
        Grid parameters.
    box : tuple, optional
        ``(y0, x0, y1, x1)`` area the APs' boxes stay in, the outer ones on its edges
        (their patches' search margins reach past it); default the whole image.
    frame : numpy.ndarray, optional
        float32 luminance of one frame on the reference's scale (the best), whose noise
        decides the step when ``params.step`` is 0 (:meth:`APParams.spacing_at`); without
        it only the number of APs does (``ap_dense_under``).
    frame_shift : tuple
        ``(dy, dx)`` global shift of ``frame``: the reference's point ``p`` is the frame's
        ``p + frame_shift``.

    Returns
    -------
    APGrid
    """
    if reference.ndim != 2:
        raise ValueError(f"reference must be a 2-D luminance image, got shape {reference.shape}")
    grid = _lay(reference, params, params.spacing, box)
    if params.step or not len(grid):
        return grid
    detail = float("nan")
    if frame is not None and params.dense_below:
        if frame.ndim != 2:
            raise ValueError(f"frame must be a 2-D luminance image, got shape {frame.shape}")
        detail = detail_to_noise(reference, frame, grid.centres, params.size,
                                 frame_shift=frame_shift)
    faint = params.spacing_at(detail) != params.spacing
    if faint:
        reason = (f"a frame's detail is {detail:.3g}x its noise (under ap_dense_below "
                  f"{params.dense_below:g})")
    elif len(grid) < params.dense_under:
        reason = f"the usual grid keeps {len(grid)} APs (under ap_dense_under {params.dense_under})"
    else:
        return replace(grid, detail=detail)
    return replace(_lay(reference, params, params.dense_spacing, box), detail=detail,
                   dense=True, dense_reason=reason, faint=faint)


def _lay(reference: np.ndarray, params: APParams, step: int,
         box: tuple[int, int, int, int] | None) -> APGrid:
    """The grid of APs at most ``step`` apart (see :func:`lay_grid`)."""
    h, w = reference.shape
    y0, x0, y1, x1 = box if box is not None else (0, 0, h, w)
    # the boxes reach the edges of the area; their patches' search margins may lie
    # outside it (or outside the image, then mirrored in: live_stack.local.extract)
    half = params.size // 2
    lo_y, hi_y, lo_x, hi_x = y0 + half, y1 - half, x0 + half, x1 - half
    empty = APGrid(np.zeros((0, 2), dtype=np.intp), params.size, params.search, (h, w),
                   step=step)
    if hi_y < lo_y or hi_x < lo_x:
        return empty
    ys = _axis(lo_y, hi_y, step)
    xs = _axis(lo_x, hi_x, step)
    # the spacing the boxes actually have along each axis (at most the step): their
    # blending ramps span the whole overlap, and the neighbour table reaches the neighbours
    steps = (int(max(np.diff(ys), default=step)), int(max(np.diff(xs), default=step)))
    step = max(steps)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    centres = np.column_stack([gy.ravel(), gx.ravel()]).astype(np.intp)
    ref = reference.astype(np.float32, copy=False)
    bright = float(np.percentile(ref, 99.5)) or 1.0
    hs = params.size // 2
    cy, cx = centres[:, 0], centres[:, 1]
    mask = (ref >= params.min_brightness * bright).astype(np.uint8)
    sat = cv2.integral(mask, sdepth=cv2.CV_32S)
    count = (sat[cy + hs, cx + hs] - sat[cy - hs, cx + hs] - sat[cy + hs, cx - hs]
             + sat[cy - hs, cx - hs])
    lit = count >= MIN_LIT_PIXELS
    struct = structure(ref, centres, params.size)
    ref_level = float(np.percentile(struct[lit], 90)) if lit.any() else 0.0
    textured = struct >= params.min_structure * ref_level if ref_level > 0 else np.zeros_like(lit)
    keep = lit & textured
    kept = centres[keep]
    return APGrid(centres=kept, size=params.size, search=params.search, shape=(h, w),
                  dropped_dim=int((~lit).sum()), dropped_flat=int((lit & ~textured).sum()),
                  neighbours=neighbour_table(kept, step), step=step, steps=steps)


def neighbour_table(centres: np.ndarray, step: int) -> np.ndarray:
    """Indices of the up to 8 grid neighbours of each AP (within 1.5 steps), -1 padded."""
    m = len(centres)
    table = np.full((m, 8), -1, dtype=np.intp)
    if m < 2:
        return table
    pos = centres.astype(np.float64)
    d2 = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(d2, np.inf)
    limit = (1.5 * step) ** 2
    cols = min(8, m - 1)
    order = np.argsort(d2, axis=1)[:, :cols]
    near = np.take_along_axis(d2, order, axis=1) <= limit
    table[:, :cols][near] = order[near]
    return table


def _axis(lo: int, hi: int, step: int) -> list[int]:
    """Positions from ``lo`` to ``hi`` (both ends exactly), at most ``step`` apart and as
    evenly as whole pixels allow (two gaps differ by at most one pixel); one in the
    middle where the span is shorter than a step."""
    if hi - lo < step:
        return [(lo + hi) // 2]
    # as many APs as it takes to reach the ends at most ``step`` apart, so that the boxes
    # cover the area up to its edges, the rim boxes' outer sides on them (those need not
    # fade out: see live_stack.stack.blend); the blending weights ramp over the largest
    # gap's overlap, and are divided by their sum, so a gap a pixel shorter does no harm
    count = -(-(hi - lo) // step) + 1
    return [lo + int(round(k * (hi - lo) / (count - 1))) for k in range(count)]


def detail_to_noise(reference: np.ndarray, frame: np.ndarray, centres: np.ndarray,
                    size: int, *, frame_shift: tuple[float, float] = (0.0, 0.0)) -> float:
    """How far a single frame's detail stands above its noise in the AP boxes.

    In each box (side ``size``, at ``centres``; the frame's at ``centres`` moved by the
    whole-pixel ``frame_shift``), both windowed: the reference's power in
    :data:`DETAIL_BAND` less its own noise, over the frame's white-noise power in the same
    frequencies (both noise floors from the corner of the spectrum, see
    :func:`live_stack.correlate.noise_floor`). The reference holds the frames' detail
    with little of their noise, the frame the noise of one. Under about 1 the frames'
    detail is buried in their noise.

    Returns
    -------
    float
        The median over the boxes lying wholly inside both images; NaN if none does.
    """
    if reference.ndim != 2 or frame.ndim != 2:
        raise ValueError("reference and frame must be 2-D luminance images, got shapes "
                         f"{reference.shape} and {frame.shape}")
    centres = np.asarray(centres, dtype=np.intp).reshape(-1, 2)
    moved = centres + np.rint(np.asarray(frame_shift, dtype=np.float64)).astype(np.intp)
    h = size // 2
    ok = (_fits(centres, h, reference.shape) & _fits(moved, h, frame.shape))
    if not ok.any():
        return float("nan")

    def boxes(image: np.ndarray, at: np.ndarray) -> np.ndarray:
        out = np.stack([image[y - h : y + h, x - h : x + h] for y, x in at]).astype(np.float32)
        out -= out.mean(axis=(1, 2), keepdims=True)
        out *= _hann2d(2 * h)
        return out

    ref_spec = rfft2(boxes(reference, centres[ok]))
    frame_spec = rfft2(boxes(frame, moved[ok]))
    fy = np.fft.fftfreq(2 * h)[:, None]
    fx = np.fft.rfftfreq(2 * h)[None, :]
    f = np.hypot(fy, fx)
    band = (f >= DETAIL_BAND[0]) & (f < DETAIL_BAND[1])
    power = np.square(np.abs(ref_spec[:, band]), dtype=np.float64).sum(axis=1)
    count = int(band.sum())
    detail = np.maximum(power - noise_floor(ref_spec) * count, 0.0)
    noise = noise_floor(frame_spec) * count
    ratio = detail / np.maximum(noise, np.finfo(np.float64).tiny)
    return float(np.median(ratio))


def _fits(centres: np.ndarray, half: int, shape: tuple[int, ...]) -> np.ndarray:
    """Which boxes of side ``2 * half`` at ``centres`` lie wholly inside ``shape``."""
    y, x = centres[:, 0], centres[:, 1]
    return (y - half >= 0) & (x - half >= 0) & (y + half <= shape[0]) & (x + half <= shape[1])


def _hann2d(n: int) -> np.ndarray:
    """float32 ``(n, n)`` Hann window."""
    win = np.hanning(n).astype(np.float32)
    return np.outer(win, win)
