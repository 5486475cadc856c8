"""Stacking the shifted AP patches, and blending them into one image.

Each AP keeps the *sum of the spectra* of its selected patches, every patch multiplied by
the phase ramp that undoes its measured shift. Shifting in the Fourier domain is exact
(no interpolation blur, which a stack of hundreds of sub-pixel shifts would otherwise
accumulate), and a sum can take a patch out again as easily as put it in, which the live
stacker does when a frame leaves its buffer. The patch is cut with a margin of the search
radius on every side, so the circular wrap-around of the shift stays in the margin, which
is cropped away.

Blending: every AP's mean patch is weighted by a smooth bump (``sin^2`` in x times
``sin^2`` in y, zero at the box edge); the weighted patches are summed and divided by
the summed weights. Where the APs' weights fade out (the edge of the AP area, dropped
APs) the globally aligned reference takes over, with a weight that falls continuously
from 1 to 0 as the AP coverage rises. No weight has a step, so there are no seams.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from live_stack.apgrid import APGrid
from live_stack.correlate import fourier_shift
from live_stack.fft import ALL_THREADS, irfft2, rfft2
from live_stack.frames import INTEGER_SCALE, LUMA_WEIGHTS
from live_stack.local import extract

#: AP coverage (summed bump weights) at and above which the reference gets no weight.
FULL_COVERAGE = 0.5


@dataclass(frozen=True)
class BlendParams:
    """Parameters of the blending (CLI/config prefix ``blend_``)."""

    full_coverage: float = FULL_COVERAGE  # AP weight at which the reference fades to nothing

    def __post_init__(self) -> None:
        if not 0.0 < self.full_coverage <= 4.0:
            raise ValueError(f"blend_full_coverage must be in (0, 4], got {self.full_coverage}")


class PatchSums:
    """Per-AP sums of shifted patch spectra (one stack size).

    Parameters
    ----------
    aps : int
        Number of APs.
    channels : int
        1 for mono, 3 for colour.
    size : int
        Side of the measured patch (AP box plus search margin on each side).
    """

    def __init__(self, aps: int, channels: int, size: int) -> None:
        self.size = size
        self.channels = channels
        self.spectra = np.zeros((aps, channels, size, size // 2 + 1), dtype=np.complex64)
        self.counts = np.zeros(aps, dtype=np.int64)
        self.shift_sums = np.zeros((aps, 2))  # summed (dy, dx) undone, per AP

    def add(self, aps: np.ndarray, spectra: np.ndarray, dy: np.ndarray, dx: np.ndarray,
            sign: int = 1) -> None:
        """Add (``sign=1``) or take out (``sign=-1``) shifted spectra ``(k, C, N, N//2+1)``.

        ``aps`` holds each AP at most once (one frame's patches); ``dy, dx`` are the
        shifts that were undone on them.
        """
        if sign not in (1, -1):
            raise ValueError(f"sign must be 1 or -1, got {sign}")
        if len(np.unique(aps)) != len(aps):
            raise ValueError("aps must not repeat an AP within one call")
        if sign == 1:
            self.spectra[aps] += spectra
        else:
            self.spectra[aps] -= spectra
        self.counts[aps] += sign
        self.shift_sums[aps, 0] += sign * np.asarray(dy, dtype=np.float64)
        self.shift_sums[aps, 1] += sign * np.asarray(dx, dtype=np.float64)

    def prepare(self, aps: np.ndarray, patches: np.ndarray, dy: np.ndarray,
                dx: np.ndarray, *, spectra: np.ndarray | None = None,
                overwrite: bool = False) -> np.ndarray:
        """What :meth:`add` takes for patches ``(k, C, N, N)``: their shifted spectra.

        ``spectra``, the patches' ``rfft2`` if the caller has it (see
        :func:`patch_spectra`), saves transforming them again; with ``overwrite`` the
        shifted spectra are written into it (the caller no longer needs it). ``aps`` (each
        patch's AP) is not needed here; the drizzle accumulator with the same interface
        (:class:`live_stack.drizzle.DrizzleSums`) needs it.
        """
        if spectra is None:
            return shifted_spectra(patches, dy, dx)
        return fourier_shift(spectra, dy, dx, overwrite=overwrite)

    def mean_patches(self, box: int) -> np.ndarray:
        """float32 ``(m, C, box, box)``: each AP's mean patch, margin cropped (NaN if empty).

        Each patch is placed at the mean position of its frames: the shifts measured
        against the reference are undone frame by frame, then their mean is put back.
        Atmospheric tilt averages to zero over many frames, so the mean position is the
        object's true one, while the reference's own position at an AP is off by the
        average warp of the few frames it was made of.
        """
        m = len(self.counts)
        out = np.full((m, self.channels, box, box), np.nan, dtype=np.float32)
        have = np.flatnonzero(self.counts > 0)
        if len(have):
            mean = self.shift_sums[have] / self.counts[have, None]
            spectra = fourier_shift(self.spectra[have], -mean[:, 0], -mean[:, 1])
            pix = irfft2(spectra, (self.size, self.size), threads=ALL_THREADS)
            pix /= self.counts[have, None, None, None]
            mg = (self.size - box) // 2
            out[have] = pix[:, :, mg : mg + box, mg : mg + box]
        return out

    def to_image(self, grid: APGrid, reference: np.ndarray,
                 params: BlendParams = BlendParams(), *,
                 crop: tuple[int, int, int, int] | None = None) -> Blend:
        """Blend the APs' mean patches into one image (see :func:`blend`)."""
        return blend(self.mean_patches(grid.size), grid, reference, params, crop=crop)


def frame_spectra(
    frame: np.ndarray, centres: np.ndarray, size: int, dy: np.ndarray, dx: np.ndarray
) -> np.ndarray:
    """Cut patches from every channel of a frame and undo their measured shifts.

    Parameters
    ----------
    frame : numpy.ndarray
        The frame in its native dtype, ``(H, W)`` or ``(H, W, 3)``.
    centres : numpy.ndarray
        ``(k, 2)`` integer patch centres in the frame (inside it).
    size : int
        Patch side.
    dy, dx : numpy.ndarray
        ``(k,)`` measured residual shifts of the patches.

    Returns
    -------
    numpy.ndarray
        complex64 ``(k, C, size, size // 2 + 1)`` spectra on the float32 ``[0, 1]`` scale.
    """
    return shifted_spectra(frame_patches(frame, centres, size), dy, dx)


def frame_patches(frame: np.ndarray, centres: np.ndarray, size: int) -> np.ndarray:
    """float32 ``[0, 1]`` patches ``(k, C, size, size)`` of every channel of a frame."""
    patches = extract(frame, centres, size)
    patches = patches[:, None] if patches.ndim == 3 else patches.transpose(0, 3, 1, 2)
    scale = np.float32(1.0 / INTEGER_SCALE.get(frame.dtype, 1.0))
    return patches.astype(np.float32) * scale


def patch_spectra(patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``rfft2`` of patches ``(k, C, N, N)``, and the spectra of their luminance.

    The transform is linear, so the luminance spectrum is the weighted sum of the
    channels' spectra; one transform serves both measuring and stacking.

    Returns
    -------
    tuple
        complex64 ``(k, C, N, N // 2 + 1)`` and ``(k, N, N // 2 + 1)``.
    """
    spec = rfft2(patches.astype(np.float32, copy=False))  # complex64
    if spec.shape[1] == 1:
        return spec, spec[:, 0]
    lum = np.tensordot(spec, LUMA_WEIGHTS.astype(np.complex64), axes=([1], [0]))
    return spec, lum


def shifted_spectra(patches: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Spectra of patches ``(k, C, N, N)`` with the shifts ``(dy, dx)`` undone."""
    spec = rfft2(patches.astype(np.float32, copy=False))
    return fourier_shift(spec, dy, dx, overwrite=True)  # complex64, as rfft2 gives


def bump(size: int, overlap: int | None = None, overlap_x: int | None = None) -> np.ndarray:
    """The blending weight of an AP box (float32 ``(size, size)``, cached; read-only).

    Flat (1) in the middle, falling as ``sin^2`` to 0 at the box edges over ``overlap``
    pixels on each side (default: half the box, a plain ``sin^2`` bump), or over
    ``overlap`` at the top and bottom and ``overlap_x`` at the left and right. Boxes
    whose neighbours overlap them by exactly that much have weights that add up to 1
    (``sin^2 + cos^2``) and whose slopes never jump.
    """
    return _bump(size, overlap, overlap if overlap_x is None else overlap_x)


@lru_cache(maxsize=64)
def _bump(size: int, overlap_y: int | None, overlap_x: int | None,
          flat: tuple[bool, bool, bool, bool] = (False, False, False, False)) -> np.ndarray:
    half = size // 2

    def axis(overlap: int | None, flat_low: bool, flat_high: bool) -> np.ndarray:
        ramp_len = half if overlap is None else int(min(max(overlap, 1), half))
        u = np.ones(size)
        k = np.arange(ramp_len) + 0.5
        ramp = np.sin(0.5 * np.pi * k / ramp_len) ** 2
        if not flat_low:
            u[:ramp_len] = ramp
        if not flat_high:
            u[size - ramp_len :] = ramp[::-1]
        return u

    top, bottom, left, right = flat
    w = np.outer(axis(overlap_y, top, bottom), axis(overlap_x, left, right)).astype(np.float32)
    w.setflags(write=False)
    return w


def grid_bump(grid: APGrid, flat: tuple[bool, bool, bool, bool] = (False,) * 4) -> np.ndarray:
    """:func:`bump` for a grid's boxes, ramping over the overlap of neighbouring boxes
    along each axis; not at all on the ``flat`` sides (top, bottom, left, right)."""
    if not grid.step:
        return _bump(grid.size, None, None, tuple(flat))
    sy, sx = (s or grid.step for s in grid.steps)
    return _bump(grid.size, grid.size - sy, grid.size - sx, tuple(flat))


def open_sides(grid: APGrid, crop: tuple[int, int, int, int] | None) -> np.ndarray:
    """bool ``(m, 4)``: which sides (top, bottom, left, right) of each AP box lie at or
    beyond the edge of the output's ``crop`` (nothing of the output lies past them)."""
    if crop is None or not len(grid):
        return np.zeros((len(grid), 4), dtype=bool)
    half = grid.size // 2
    cy, cx = grid.centres[:, 0], grid.centres[:, 1]
    y0, x0, y1, x1 = crop
    return np.column_stack([cy - half <= y0, cy + half >= y1, cx - half <= x0, cx + half >= x1])


@dataclass(frozen=True)
class Blend:
    """Result of :func:`blend`.

    Attributes
    ----------
    image : numpy.ndarray
        float32 ``(H, W)`` or ``(H, W, 3)`` blended image in reference coordinates.
    ap_weight : numpy.ndarray
        float32 ``(H, W)`` summed AP weights.
    reference_weight : numpy.ndarray
        float32 ``(H, W)`` weight given to the reference.
    """

    image: np.ndarray
    ap_weight: np.ndarray
    reference_weight: np.ndarray


def blend(
    patches: np.ndarray,
    grid: APGrid,
    reference: np.ndarray,
    params: BlendParams = BlendParams(),
    *,
    crop: tuple[int, int, int, int] | None = None,
) -> Blend:
    """Blend the AP mean patches into one image, the reference filling the rest.

    Parameters
    ----------
    patches : numpy.ndarray
        ``(m, C, size, size)`` from :meth:`PatchSums.mean_patches` (NaN patches skipped).
    grid : APGrid
        The APs.
    reference : numpy.ndarray
        float32 ``(H, W)`` or ``(H, W, 3)`` globally aligned reference.
    params : BlendParams
        Blending parameters.
    crop : tuple, optional
        ``(y0, x0, y1, x1)``: the part of the image that will be kept. A box whose side
        lies at or past its edge (the grid's rim boxes, which reach the edge of the area
        every frame covers) does not fade out towards that side: the AP's stack, not the
        blurrier reference, reaches the output's edge, and the seam the fade avoids
        would lie outside the output.

    Returns
    -------
    Blend
    """
    ref = reference if reference.ndim == 3 else reference[:, :, None]
    h, w, c = ref.shape
    if patches.shape[1:] != (c, grid.size, grid.size):
        raise ValueError(f"patches must be (m, {c}, {grid.size}, {grid.size}), "
                         f"got {patches.shape}")
    acc = np.zeros((h, w, c), dtype=np.float32)
    wsum = np.zeros((h, w), dtype=np.float32)
    sides = open_sides(grid, crop)
    half = grid.size // 2
    for a, (cy, cx) in enumerate(grid.centres):
        p = patches[a]
        if not np.isfinite(p[0, 0, 0]):
            continue
        wb = grid_bump(grid, tuple(bool(v) for v in sides[a]))
        y0, x0 = int(cy) - half, int(cx) - half
        acc[y0 : y0 + grid.size, x0 : x0 + grid.size] += (p * wb).transpose(1, 2, 0)
        wsum[y0 : y0 + grid.size, x0 : x0 + grid.size] += wb
    wref = np.clip(1.0 - wsum / np.float32(params.full_coverage), 0.0, 1.0).astype(np.float32)
    out = (acc + ref * wref[:, :, None]) / (wsum + wref)[:, :, None]
    image = out[:, :, 0] if reference.ndim == 2 else out
    return Blend(image=image.astype(np.float32, copy=False), ap_weight=wsum,
                 reference_weight=wref)
