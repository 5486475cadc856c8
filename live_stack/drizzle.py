"""Drizzle: stacking onto a finer pixel grid than the sensor's, and resampling.

A sensor that undersamples the telescope's image (pixels larger than half the finest
detail) aliases that detail into coarser patterns. The frames of a lucky-imaging capture
are displaced from one another by seeing and drift by random sub-pixel amounts, so
together they sample the image more finely than any one of them. Drizzle (Fruchter &
Hook 2002) puts that to use: each frame pixel is shrunk to ``pixfrac`` of its side and
dropped onto an output grid ``scale`` times finer, at the position its measured shift
says it belongs; every output pixel takes the overlap-weighted mean of the drops that
cover it.

Here every AP patch of a frame has a single shift (``dy, dx``), so the drop of a patch
is separable: along each axis a fine pixel meets only the two or three drops around it,
and a patch's drizzled contribution and weight are two such banded weightings
(:meth:`DrizzleSums.prepare`). The sums per AP can take a frame out again, as the live
stacker needs. The APs' drizzled patches are then blended on the fine grid exactly as
the ordinary stack blends its patches (:func:`live_stack.stack.blend`, with the grid,
the AP boxes and the reference scaled), and fine pixels no drop reached (possible with
few frames and a small ``pixfrac``) are filled from their neighbours.

``method = "resample"`` is the plain alternative: the stack is made at the sensor's
scale and interpolated up (Lanczos) by ``scale``, which enlarges but cannot recover
detail beyond the sensor's Nyquist limit. ``scale = 1`` (the default) leaves the
stacking exactly as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np

from live_stack.apgrid import APGrid
from live_stack.stack import Blend, BlendParams, PatchSums, blend

#: Output scales offered.
SCALES = (1.0, 1.5, 2.0, 3.0)
METHODS = ("drizzle", "resample")
#: Fine pixels whose drop weight is below this share of the patch's median weight are
#: holes, filled from their neighbours.
HOLE_SHARE = 0.05
#: Gaussian sigma (fine pixels, per unit of scale) of the hole filling.
FILL_SIGMA = 1.0
#: Overlaps (fine pixels) below this are rounding slivers, taken as none.
MIN_OVERLAP = 1e-6
#: Tolerance when scaling pixel coordinates to whole fine pixels.
_EPS = 1e-9


@dataclass(frozen=True)
class DrizzleParams:
    """Drizzle or resampling of the stack (CLI/config prefix ``drizzle_``)."""

    scale: float = 1.0  # output scale: 1 (sensor pixels), 1.5, 2 or 3
    method: str = "drizzle"  # drizzle (frame pixels dropped on the fine grid) or resample
    pixfrac: float = 0.5  # drizzle: dropped pixel side, share of a frame pixel (less: sharper)

    def __post_init__(self) -> None:
        if self.scale not in SCALES:
            raise ValueError(f"drizzle_scale must be one of {SCALES}, got {self.scale}")
        if self.method not in METHODS:
            raise ValueError(f"drizzle_method must be one of {METHODS}, got {self.method!r}")
        if not 0.1 <= self.pixfrac <= 1.0:
            raise ValueError(f"drizzle_pixfrac must be 0.1..1, got {self.pixfrac}")

    @property
    def drizzles(self) -> bool:
        """Stacking itself happens on the fine grid."""
        return self.scale != 1.0 and self.method == "drizzle"


def fine_shape(shape: tuple[int, ...], scale: float) -> tuple[int, int]:
    """``(H, W)`` of the fine grid over an image of ``shape``: whole fine pixels only."""
    return (int(math.floor(scale * shape[0] + _EPS)), int(math.floor(scale * shape[1] + _EPS)))


def scale_box(box: tuple[int, int, int, int], scale: float) -> tuple[int, int, int, int]:
    """A ``(y0, x0, y1, x1)`` box in sensor pixels as whole fine pixels inside it."""
    y0, x0, y1, x1 = box
    return (math.ceil(scale * y0 - _EPS), math.ceil(scale * x0 - _EPS),
            math.floor(scale * y1 + _EPS), math.floor(scale * x1 + _EPS))


def scale_points(points: np.ndarray, box: tuple[int, int, int, int], scale: float) -> np.ndarray:
    """Integer ``(y, x)`` sensor-pixel points as fine pixels relative to the scaled ``box``."""
    fy0, fx0, _, _ = scale_box(box, scale)
    pts = np.asarray(points, dtype=np.float64) * scale
    return np.rint(pts - np.array([fy0, fx0])).astype(np.intp)


def upscale(image: np.ndarray, scale: float, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Interpolate an image ``scale`` times larger (Lanczos), pixel edges kept in place.

    Fine pixel ``Y`` covers sensor coordinates ``[Y / scale, (Y + 1) / scale)``.
    """
    h, w = shape if shape is not None else fine_shape(image.shape, scale)
    off = 0.5 / scale - 0.5
    m = np.float32([[1.0 / scale, 0, off], [0, 1.0 / scale, off]])
    return cv2.warpAffine(image.astype(np.float32, copy=False), m, (w, h),
                          flags=cv2.INTER_LANCZOS4 | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)


def downscale(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Area-average a fine image back to sensor pixels of ``shape``."""
    return cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def _spread(values: np.ndarray, first: float, scale: float, pixfrac: float,
            size: int) -> tuple[np.ndarray, np.ndarray]:
    """Drop the rows of ``values`` (``(C, n, m)``) onto ``size`` fine rows.

    Row ``i`` is dropped centred on fine coordinate ``first + scale * i``,
    ``scale * pixfrac`` fine rows wide; each fine row gets the overlap-weighted sum of
    the rows that reach it. With ``scale = p / q`` the rows ``rho, rho + q, ...`` land
    ``p`` fine rows apart, all with the same overlaps: a few strided sums per residue
    ``rho`` do the whole drop.

    Returns
    -------
    tuple
        ``(fine, weight)``: float32 ``(C, size, m)`` weighted sums and ``(size,)`` summed
        overlaps (fine rows).
    """
    ratio = Fraction(scale)
    p, q = ratio.numerator, ratio.denominator
    n = values.shape[1]
    half = 0.5 * scale * pixfrac
    fine = np.zeros((values.shape[0], size) + values.shape[2:], dtype=np.float32)
    weight = np.zeros(size, dtype=np.float32)
    for rho in range(min(q, n)):
        centre = first + scale * rho
        lo, hi = centre - half, centre + half
        for y in range(math.floor(lo), math.ceil(hi)):
            w = min(hi, y + 1.0) - max(lo, y)
            if w < MIN_OVERLAP:  # a rounding sliver where drop and pixel edges meet
                continue
            # fine row y + p*j gets row rho + q*j, for the j that keep both inside
            j0 = max(0, -(y // p))
            j1 = min((n - 1 - rho) // q, (size - 1 - y) // p)
            if j1 < j0:
                continue
            src = values[:, rho + q * j0 : rho + q * j1 + 1 : q]
            fine[:, y + p * j0 : y + p * j1 + 1 : p] += np.float32(w) * src
            weight[y + p * j0 : y + p * j1 + 1 : p] += np.float32(w)
    return fine, weight


class DrizzleSums:
    """Per-AP drizzle sums on the fine grid (one stack size); see the module docstring.

    The same interface as :class:`live_stack.stack.PatchSums`: :meth:`prepare` a
    frame's patches, :meth:`add` (or take out) the result, :meth:`to_image`.

    Parameters
    ----------
    grid : APGrid
        The APs (sensor pixels).
    channels : int
        1 for mono, 3 for colour.
    params : DrizzleParams
        Scale and pixfrac.
    """

    def __init__(self, grid: APGrid, channels: int, params: DrizzleParams) -> None:
        s = params.scale
        self.scale = s
        self.pixfrac = params.pixfrac
        self.channels = channels
        self.size = grid.fft_size
        self.box = int(round(s * grid.size))
        self.margin = int(math.ceil(s * grid.search))
        self.fine = self.box + 2 * self.margin
        centres = np.asarray(grid.centres, dtype=np.float64).reshape(-1, 2)
        self.box_start = np.floor(s * (centres - grid.size / 2) + 0.5).astype(np.intp)
        origin = self.box_start - self.margin
        # sensor coordinate of patch pixel 0, relative to the fine patch's origin
        self.starts = centres - self.size // 2 - origin / s
        m = len(centres)
        self.sums = np.zeros((m, channels + 1, self.fine, self.fine), dtype=np.float32)
        self.counts = np.zeros(m, dtype=np.int64)
        self.shift_sums = np.zeros((m, 2))

    def prepare(self, aps: np.ndarray, patches: np.ndarray, dy: np.ndarray,
                dx: np.ndarray, *, spectra: np.ndarray | None = None,
                overwrite: bool = False) -> np.ndarray:
        """Drizzle frame patches: ``(k, C + 1, F, F)``, weighted values then the weight.

        ``spectra`` (the patches' transforms, which :class:`~live_stack.stack.PatchSums`
        can reuse) and ``overwrite`` (whether it may be overwritten) are not needed here.

        Parameters
        ----------
        aps : numpy.ndarray
            ``(k,)`` AP of each patch.
        patches : numpy.ndarray
            float32 ``(k, C, N, N)`` patches (:func:`live_stack.stack.frame_patches`).
        dy, dx : numpy.ndarray
            ``(k,)`` measured shifts of the patches (undone by where they are dropped).
        """
        aps = np.asarray(aps, dtype=np.intp)
        k = len(aps)
        if patches.shape != (k, self.channels, self.size, self.size):
            raise ValueError(f"patches must be ({k}, {self.channels}, {self.size}, "
                             f"{self.size}), got {patches.shape}")
        dy = np.asarray(dy, dtype=np.float64).reshape(k)
        dx = np.asarray(dx, dtype=np.float64).reshape(k)
        s, f, c = self.scale, self.fine, self.channels
        first_y = s * (self.starts[aps, 0] + 0.5 - dy)  # fine centre of each patch's row 0
        first_x = s * (self.starts[aps, 1] + 0.5 - dx)
        out = np.empty((k, c + 1, f, f), dtype=np.float32)
        values = patches.astype(np.float32, copy=False)
        for j in range(k):
            rows, wy = _spread(values[j], first_y[j], s, self.pixfrac, f)
            cols, wx = _spread(rows.transpose(0, 2, 1), first_x[j], s, self.pixfrac, f)
            out[j, :c] = cols.transpose(0, 2, 1)
            out[j, c] = np.outer(wy, wx)
        return out

    def add(self, aps: np.ndarray, data: np.ndarray, dy: np.ndarray, dx: np.ndarray,
            sign: int = 1) -> None:
        """Add (``sign=1``) or take out (``sign=-1``) prepared patches (each AP once)."""
        if sign not in (1, -1):
            raise ValueError(f"sign must be 1 or -1, got {sign}")
        if len(np.unique(aps)) != len(aps):
            raise ValueError("aps must not repeat an AP within one call")
        if sign == 1:
            self.sums[aps] += data
        else:
            self.sums[aps] -= data
        self.counts[aps] += sign
        self.shift_sums[aps, 0] += sign * np.asarray(dy, dtype=np.float64)
        self.shift_sums[aps, 1] += sign * np.asarray(dx, dtype=np.float64)

    def mean_patches(self) -> np.ndarray:
        """float32 ``(m, C, B, B)`` drizzled box of each AP on the fine grid (NaN if empty).

        As for :meth:`live_stack.stack.PatchSums.mean_patches`, each patch is put at
        the mean position of its frames.
        """
        m = len(self.counts)
        c, mg, b = self.channels, self.margin, self.box
        out = np.full((m, c, b, b), np.nan, dtype=np.float32)
        for a in np.flatnonzero(self.counts > 0):
            values = _normalise(self.sums[a, :c], self.sums[a, c], self.scale)
            my, mx = self.shift_sums[a] / self.counts[a] * self.scale
            # the box of the patch moved by the mean shift, interpolated in one go
            mat = np.float32([[1, 0, mg - mx], [0, 1, mg - my]])
            moved = cv2.warpAffine(np.ascontiguousarray(values.transpose(1, 2, 0)), mat, (b, b),
                                   flags=cv2.INTER_LANCZOS4 | cv2.WARP_INVERSE_MAP,
                                   borderMode=cv2.BORDER_REPLICATE)
            out[a] = moved.reshape(b, b, c).transpose(2, 0, 1)
        return out

    def fine_grid(self, grid: APGrid) -> APGrid:
        """The AP grid on the fine pixels (boxes where :meth:`mean_patches` puts them)."""
        return APGrid(centres=self.box_start + self.box // 2, size=self.box,
                      search=self.margin, shape=fine_shape(grid.shape, self.scale),
                      dropped_dim=grid.dropped_dim, dropped_flat=grid.dropped_flat,
                      neighbours=grid.neighbours,
                      step=self._fine_step(grid, grid.step),
                      steps=(self._fine_step(grid, grid.steps[0] or grid.step),
                             self._fine_step(grid, grid.steps[1] or grid.step)),
                      detail=grid.detail, dense=grid.dense, dense_reason=grid.dense_reason)

    def _fine_step(self, grid: APGrid, step: int) -> int:
        """A step of the grid on the fine pixels: the boxes overlap as much (scaled)."""
        return self.box - int(round((grid.size - step) * self.scale)) if step else 0

    def to_image(self, grid: APGrid, reference: np.ndarray,
                 params: BlendParams = BlendParams(), *,
                 crop: tuple[int, int, int, int] | None = None) -> Blend:
        """Blend the drizzled APs on the fine grid; the upscaled reference fills the rest
        (``crop``: the output's crop in sensor pixels, see :func:`live_stack.stack.blend`)."""
        fine = self.fine_grid(grid)
        return blend(self.mean_patches(), fine, upscale(reference, self.scale, fine.shape),
                     params, crop=None if crop is None else scale_box(crop, self.scale))


def _normalise(acc: np.ndarray, weight: np.ndarray, scale: float) -> np.ndarray:
    """Weighted sums ``(C, F, F)`` over weights ``(F, F)``, holes filled from neighbours."""
    positive = weight[weight > 0]
    if not len(positive):
        return np.zeros_like(acc)
    good = weight > HOLE_SHARE * float(np.median(positive))
    safe = np.where(good, weight, 1.0).astype(np.float32)
    values = np.where(good, acc / safe, 0.0).astype(np.float32)
    if good.all():
        return values
    sigma = FILL_SIGMA * scale
    w_good = np.where(good, weight, 0.0).astype(np.float32)
    w_blur = cv2.GaussianBlur(w_good, (0, 0), sigma)
    holes = ~good
    for ch in range(len(acc)):
        a_blur = cv2.GaussianBlur(np.where(good, acc[ch], 0.0).astype(np.float32), (0, 0),
                                  sigma)
        values[ch][holes] = a_blur[holes] / np.maximum(w_blur[holes], np.float32(1e-12))
    return values


def make_sums(grid: APGrid, channels: int, params: DrizzleParams = DrizzleParams()
              ) -> PatchSums | DrizzleSums:
    """The per-AP accumulator for these parameters: drizzle sums, or the ordinary ones."""
    if params.drizzles:
        return DrizzleSums(grid, channels, params)
    return PatchSums(len(grid), channels, grid.fft_size)


def crop_output(result: Blend, box: tuple[int, int, int, int],
                params: DrizzleParams = DrizzleParams()) -> tuple[np.ndarray, np.ndarray]:
    """Crop a blend to the covered ``box`` (sensor pixels), upscaling it if resampling.

    Returns
    -------
    tuple
        ``(image, ap_weight)``, contiguous, on the output grid (``scale`` times the
        sensor's); with ``scale = 1`` exactly ``result``'s crop to ``box``.
    """
    image, weight = result.image, result.ap_weight
    s = params.scale
    if s != 1.0 and params.method == "resample":
        shape = fine_shape(image.shape, s)
        image, weight = upscale(image, s, shape), upscale(weight, s, shape)
    y0, x0, y1, x1 = scale_box(box, s)
    return np.ascontiguousarray(image[y0:y1, x0:x1]), weight[y0:y1, x0:x1]
