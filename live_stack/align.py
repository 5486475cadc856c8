"""Global alignment: the translation of each frame against a target frame.

Two modes, chosen automatically from the target image by default:

``surface``
    For the Moon and the Sun, whose surface fills the frame. A square patch with strong
    structure in both x and y (largest smaller eigenvalue of the structure tensor) is
    chosen in the target. Each frame is first aligned coarsely on the whole central
    field, downsampled, which survives drift of a large fraction of the frame; the
    estimate is then refined on the full-resolution patch, twice, re-extracting the
    patch at the current estimate so that the window does not bias the result.

``planet``
    For a planet on black sky. The coarse estimate is the displacement of the disk's
    centre of gravity (the largest bright component, so a moon beside the planet is
    ignored); the refinement correlates a patch around the disk, which stays right when
    the disk touches the frame edge and the centre of gravity does not.

Each estimate carries its correlation peak in standard deviations of the noise
(:attr:`~live_stack.correlate.Shifts.snr`). The refinement is kept only where its peak
stands clearly above noise (``refine_snr``; a whitened full-resolution patch of pure
noise reaches about 7, the window making the tail heavier than a Gaussian's) and it
locates the frame more precisely than the coarse field (its peak is ``coarse_downsample``
times narrower, so its signal-to-noise may be that many times lower): on a faint, blurred
surface (a low-contrast mare at a few hundred electrons) the full-resolution patch holds
little but photon noise and its peak lands anywhere, while the downsampled field still
locates the frame to about a pixel; the coarse estimate then stands. A frame whose
deciding peak (the coarse field's in surface mode, the disk patch's in planet mode) is not
clearly above noise (clouds, a frame off target) is marked failed and is left out of
everything downstream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from live_stack.correlate import Target, correlate, make_target
from live_stack.frames import luminance, luminance_u8_or_f32
from live_stack.parallel import run_in_order
from live_stack.quality import Progress, Ranking

MODES = ("auto", "surface", "planet")

#: Frames measured together (amortises per-call FFT overhead).
BATCH = 8

#: Fraction of the frame that must be dark sky for ``auto`` to choose ``planet`` mode.
SKY_FRACTION_FOR_PLANET = 0.35
#: Brightness, relative to the bright end of the image, under which a pixel counts as sky.
SKY_LEVEL = 0.12
#: :func:`disk_centroid` looks for the disk on every this-many-th pixel first.
DISK_SEARCH_STEP = 4

#: A frame aligns "too weakly" below this share of the typical (median) peak
#: signal-to-noise of the frames around it (see :func:`accepts`).
WEAK_SHARE = 0.4


@dataclass(frozen=True)
class AlignParams:
    """Parameters of global alignment (CLI/config prefix ``align_``)."""

    mode: str = "auto"  # "auto", "surface" (Moon, Sun) or "planet" (disk on black sky)
    patch: int = 128  # side in pixels of the full-resolution patch used for refinement
    coarse_downsample: int = 4  # downsampling of the coarse whole-field search
    iterations: int = 1  # refinement passes on the full-resolution patch
    min_strength: float = 0.0  # correlation peak (0..1) under which a frame is rejected
    min_snr: float = 6.0  # deciding peak, in noise standard deviations, under which one is rejected
    refine_snr: float = 12.0  # refinement peak (noise std) under which the coarse estimate stands
    peak_sigma: float = 1.2  # width in pixels of the low-passed correlation peak

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"align_mode must be one of {MODES}, got {self.mode!r}")
        if not 32 <= self.patch <= 1024 or self.patch % 2:
            raise ValueError(f"align_patch must be an even size 32..1024, got {self.patch}")
        if not 1 <= self.coarse_downsample <= 16:
            raise ValueError(f"align_coarse_downsample must be 1..16, got {self.coarse_downsample}")
        if not 1 <= self.iterations <= 5:
            raise ValueError(f"align_iterations must be 1..5, got {self.iterations}")
        if not 0.0 <= self.min_strength < 1.0:
            raise ValueError(f"align_min_strength must be in [0, 1), got {self.min_strength}")
        if not 0.0 <= self.min_snr <= 100.0:
            raise ValueError(f"align_min_snr must be in [0, 100], got {self.min_snr}")
        if not 0.0 <= self.refine_snr <= 100.0:
            raise ValueError(f"align_refine_snr must be in [0, 100], got {self.refine_snr}")
        if not 0.3 <= self.peak_sigma <= 5.0:
            raise ValueError(f"align_peak_sigma must be 0.3..5, got {self.peak_sigma}")


def choose_mode(image: np.ndarray) -> str:
    """Choose ``"planet"`` when much of the image is dark sky around one bright object.

    Parameters
    ----------
    image : numpy.ndarray
        A frame (any supported dtype) or a float32 luminance image.

    Returns
    -------
    str
        ``"planet"`` or ``"surface"``.
    """
    lum = luminance(image)
    small = cv2.resize(lum, (max(8, lum.shape[1] // 4), max(8, lum.shape[0] // 4)),
                       interpolation=cv2.INTER_AREA)
    top = float(np.percentile(small, 99.5))
    if top <= 0:
        return "surface"
    sky = small < SKY_LEVEL * top
    return "planet" if sky.mean() >= SKY_FRACTION_FOR_PLANET else "surface"


def disk_centroid(lum: np.ndarray) -> tuple[float, float, tuple[int, int, int, int]] | None:
    """Centre of gravity and bounding box of the largest bright object.

    The object is found on every :data:`DISK_SEARCH_STEP`-th pixel of the blurred frame
    (the threshold and the search cost a sixteenth), then delimited and weighed at full
    resolution within its box and a margin.

    Returns ``(cy, cx, (y0, x0, y1, x1))`` or ``None`` if nothing stands out of the sky.
    """
    blurred = cv2.GaussianBlur(lum, (5, 5), 0)
    d = DISK_SEARCH_STEP if min(lum.shape) >= 16 * DISK_SEARCH_STEP else 1
    coarse = blurred[::d, ::d]
    top = float(np.percentile(coarse, 99.5))
    if top <= 0:
        return None
    level = SKY_LEVEL * top
    found = _largest_component(coarse > level)
    if found is None:
        return None
    y, x, h, w = found
    hh, ww = lum.shape
    y0, x0 = max(0, (y - 1) * d), max(0, (x - 1) * d)
    y1, x1 = min(hh, (y + h + 1) * d), min(ww, (x + w + 1) * d)
    found = _largest_component(blurred[y0:y1, x0:x1] > level, labels=True)
    if found is None:
        return None
    y, x, h, w, sel = found
    region = lum[y0 + y : y0 + y + h, x0 + x : x0 + x + w]
    weights = np.where(sel, region, 0).astype(np.float32)
    m = cv2.moments(weights)
    if m["m00"] <= 0:
        return None
    cy, cx = y0 + y + m["m01"] / m["m00"], x0 + x + m["m10"] / m["m00"]
    return float(cy), float(cx), (y0 + y, x0 + x, y0 + y + h, x0 + x + w)


def _largest_component(mask: np.ndarray, *, labels: bool = False):
    """``(y, x, h, w)`` of the largest 8-connected component of ``mask`` (and, with
    ``labels``, its own pixels within that box), or ``None`` if the mask is empty."""
    count, lab, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8),
                                                              connectivity=8)
    if count < 2:
        return None
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x, y, w, h = (int(v) for v in stats[biggest, :4])
    if not labels:
        return y, x, h, w
    return y, x, h, w, lab[y : y + h, x : x + w] == biggest


@dataclass(frozen=True)
class GlobalTarget:
    """A target frame prepared for :func:`measure_shift` (reused for every frame).

    Attributes
    ----------
    mode : str
        ``"surface"`` or ``"planet"``.
    shape : tuple
        ``(H, W)`` of the frames.
    centre : tuple
        ``(cy, cx)`` of the refinement patch in the target (patch-centre convention of
        :func:`cv2.getRectSubPix`).
    fine : Target
        The refinement patch.
    coarse : Target or None
        Downsampled central field (surface mode).
    coarse_box : tuple
        ``(y0, x0, side)`` of the coarse field in full-resolution pixels.
    disk : tuple or None
        ``(cy, cx)`` of the disk's centre of gravity in the target (planet mode).
    params : AlignParams
    """

    mode: str
    shape: tuple[int, int]
    centre: tuple[float, float]
    fine: Target
    coarse: Target | None
    coarse_box: tuple[int, int, int]
    disk: tuple[float, float] | None
    params: AlignParams


def _structure_patch(lum: np.ndarray, side: int) -> tuple[float, float]:
    """Centre of the ``side``-square patch with the most two-directional structure."""
    d = 4
    small = cv2.resize(lum, (lum.shape[1] // d, lum.shape[0] // d), interpolation=cv2.INTER_AREA)
    eig = cv2.cornerMinEigenVal(small, blockSize=5, ksize=3)
    k = max(3, side // d)
    score = cv2.boxFilter(eig, -1, (k, k), normalize=True, borderType=cv2.BORDER_CONSTANT)
    # keep the patch (plus an eighth of it as room for drift) inside the frame
    margin = (side // 2 + side // 8) // d + 1
    h, w = score.shape
    if h > 2 * margin and w > 2 * margin:
        inner = score[margin : h - margin, margin : w - margin]
        iy, ix = np.unravel_index(int(np.argmax(inner)), inner.shape)
        iy, ix = iy + margin, ix + margin
    else:
        iy, ix = h // 2, w // 2
    return (iy + 0.5) * d - 0.5, (ix + 0.5) * d - 0.5


def make_global_target(
    frame: np.ndarray, params: AlignParams = AlignParams()
) -> GlobalTarget:
    """Prepare a target frame (usually the best one) for global alignment.

    Parameters
    ----------
    frame : numpy.ndarray
        The target frame, ``(H, W)`` or ``(H, W, 3)``.
    params : AlignParams
        Alignment parameters; ``mode="auto"`` is resolved here with :func:`choose_mode`.

    Returns
    -------
    GlobalTarget
    """
    lum = luminance(frame)
    h, w = lum.shape
    mode = choose_mode(lum) if params.mode == "auto" else params.mode
    side = min(params.patch, (min(h, w) // 2) * 2)
    disk = None
    coarse = None
    cside = (min(h, w) // params.coarse_downsample // 2) * 2
    span = cside * params.coarse_downsample
    cy0, cx0 = (h - span) // 2, (w - span) // 2
    if mode == "planet":
        found = disk_centroid(lum)
        if found is None:
            mode = "surface"
        else:
            cy, cx, (y0, x0, y1, x1) = found
            disk = (cy, cx)
            centre = ((y0 + y1 - 1) / 2.0, (x0 + x1 - 1) / 2.0)
            # a patch covering the disk, if it fits the patch size; else the disk's centre
            side = min(params.patch * 2, (min(h, w) // 2) * 2)
    if mode == "surface":
        centre = _structure_patch(lum, side)
        small = _coarse_field(lum, params.coarse_downsample, cy0, cx0, cside)
        coarse = make_target(small, peak_sigma=params.peak_sigma)
    patch = cv2.getRectSubPix(lum, (side, side), (centre[1], centre[0]))
    fine = make_target(patch, peak_sigma=params.peak_sigma)
    return GlobalTarget(mode=mode, shape=(h, w), centre=centre, fine=fine, coarse=coarse,
                        coarse_box=(cy0, cx0, cside), disk=disk, params=params)


def _analysis_luminance(frame: np.ndarray) -> np.ndarray:
    """Luminance as uint8 (kept: fast) or float32 (anything else; getRectSubPix takes no
    16-bit input)."""
    lum = luminance_u8_or_f32(frame)
    return lum if lum.dtype in (np.uint8, np.float32) else lum.astype(np.float32)


def _coarse_field(lum: np.ndarray, d: int, y0: int, x0: int, side: int) -> np.ndarray:
    crop = lum[y0 : y0 + side * d, x0 : x0 + side * d]
    # integer input is averaged in its own type (fast) and converted once small
    return cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)


def measure_shift(frame: np.ndarray,
                  target: GlobalTarget) -> tuple[float, float, float, float]:
    """Measure one frame's translation against the target.

    Parameters
    ----------
    frame : numpy.ndarray
        A frame of the target's size.
    target : GlobalTarget
        The prepared target.

    Returns
    -------
    tuple
        ``(dy, dx, strength, snr)``: the frame shows the target displaced by ``(dy, dx)``;
        ``strength`` is the kept estimate's correlation peak (0..1), ``snr`` the deciding
        peak in noise standard deviations (see :func:`measure_shifts`).
    """
    out = measure_shifts([frame], target)
    return float(out[0, 0]), float(out[0, 1]), float(out[0, 2]), float(out[0, 3])


def measure_shifts(frames: Sequence[np.ndarray], target: GlobalTarget) -> np.ndarray:
    """Measure the translation of a batch of frames against the target.

    Batching amortises the per-call cost of the FFTs over the frames. In surface mode
    the refinement on the full-resolution patch replaces the coarse estimate only where
    its peak reaches ``refine_snr`` noise standard deviations and ``coarse_downsample``
    times its signal-to-noise reaches the coarse field's (the module docstring), and the
    deciding peak is the coarse field's: the whole central field, measured the same way
    on every frame.
    In planet mode it is the refinement's (the disk's centre of gravity has none).

    Parameters
    ----------
    frames : sequence of numpy.ndarray
        Frames of the target's size.
    target : GlobalTarget
        The prepared target.

    Returns
    -------
    numpy.ndarray
        float64 ``(k, 4)``: ``(dy, dx, strength, snr)`` per frame, as in
        :func:`measure_shift`; all zero where planet mode finds no disk.
    """
    lums = [_analysis_luminance(f) for f in frames]
    for lum in lums:
        if lum.shape != target.shape:
            raise ValueError(f"frame is {lum.shape[1]}x{lum.shape[0]}, the target is "
                             f"{target.shape[1]}x{target.shape[0]}")
    k = len(lums)
    p = target.params
    out = np.zeros((k, 4))
    coarse_snr = None
    if target.mode == "planet":
        for j, lum in enumerate(lums):
            found = disk_centroid(lum)
            if found is None:
                out[j] = np.nan
            else:
                out[j, :2] = found[0] - target.disk[0], found[1] - target.disk[1]
    else:
        cy0, cx0, cside = target.coarse_box
        small = np.stack([_coarse_field(lum, p.coarse_downsample, cy0, cx0, cside)
                          for lum in lums])
        r = correlate(small, target.coarse, index=np.zeros(k, dtype=np.intp))
        out[:, 0] = r.dy * p.coarse_downsample
        out[:, 1] = r.dx * p.coarse_downsample
        out[:, 2] = r.strength
        out[:, 3] = coarse_snr = r.snr
    side = target.fine.size
    good = np.flatnonzero(np.isfinite(out[:, 0]))
    zero = np.zeros(len(good), dtype=np.intp)
    for _ in range(p.iterations):
        if not len(good):
            break
        patches = np.stack([
            cv2.getRectSubPix(lums[j], (side, side),
                              (target.centre[1] + out[j, 1], target.centre[0] + out[j, 0]),
                              patchType=cv2.CV_32F)
            for j in good])
        r = correlate(patches, target.fine, index=zero)
        keep = np.ones(len(good), bool)
        if coarse_snr is not None:
            # its peak is clearly above noise, and it locates the frame more precisely
            # than the coarse field (a peak ``coarse_downsample`` times narrower)
            keep = (r.snr >= p.refine_snr) & (r.snr * p.coarse_downsample >= coarse_snr[good])
        at = good[keep]
        out[at, 0] += r.dy[keep]
        out[at, 1] += r.dx[keep]
        out[at, 2] = r.strength[keep]
        if coarse_snr is None:
            out[at, 3] = r.snr[keep]
        good = at
        zero = zero[: len(good)]
    out[~np.isfinite(out[:, 0])] = 0.0
    return out


@dataclass(frozen=True)
class GlobalAlignment:
    """Result of :func:`align`.

    Attributes
    ----------
    shifts : numpy.ndarray
        float64 ``(n, 2)`` ``(dy, dx)`` of each frame against the target frame.
    strength : numpy.ndarray
        float64 ``(n,)`` correlation peak (0..1) of each frame's kept estimate.
    ok : numpy.ndarray
        bool ``(n,)``: aligned well enough to be used.
    target_index : int
        The frame everything is aligned to.
    mode : str
        The mode used (``"surface"`` or ``"planet"``).
    shape : tuple
        ``(H, W)`` of the frames.
    snr : numpy.ndarray or None
        float64 ``(n,)`` each frame's deciding peak in noise standard deviations
        (:func:`measure_shifts`).
    """

    shifts: np.ndarray
    strength: np.ndarray
    ok: np.ndarray
    target_index: int
    mode: str
    shape: tuple[int, int]
    snr: np.ndarray | None = None

    @property
    def failed(self) -> int:
        """Number of frames that could not be aligned."""
        return int((~self.ok).sum())


def align(
    frames: Sequence[np.ndarray],
    ranking: Ranking,
    params: AlignParams = AlignParams(),
    *,
    progress: Progress | None = None,
    threads: int = 2,
) -> GlobalAlignment:
    """Align every frame of a capture to its best frame.

    Parameters
    ----------
    frames : sequence of numpy.ndarray
        The capture.
    ranking : Ranking
        Result of :func:`live_stack.quality.rank` on the same frames.
    params : AlignParams
        Alignment parameters.
    progress : callable, optional
        ``progress(done, total)``.
    threads : int
        Worker threads.

    Returns
    -------
    GlobalAlignment
    """
    n = len(frames)
    if len(ranking.quality) != n:
        raise ValueError(f"ranking has {len(ranking.quality)} frames, frames has {n}")
    best = int(ranking.order[0])
    target = make_global_target(frames[best], params)
    shifts = np.zeros((n, 2))
    strength = np.zeros(n)
    snr = np.zeros(n)

    def work(batch: tuple[int, list[np.ndarray]]) -> None:
        start, chunk = batch
        res = measure_shifts(chunk, target)
        shifts[start : start + len(chunk)] = res[:, :2]
        strength[start : start + len(chunk)] = res[:, 2]
        snr[start : start + len(chunk)] = res[:, 3]

    run_in_order(work, _batches(frames, BATCH), threads=threads,
                 progress=None if progress is None else
                 (lambda done, total: progress(min(n, done * BATCH), n)),
                 total=(n + BATCH - 1) // BATCH)
    ok = accepts(strength, snr, params, float(np.median(snr)))
    ok[best] = True
    return GlobalAlignment(shifts=shifts, strength=strength, ok=ok, target_index=best,
                           mode=target.mode, shape=target.shape, snr=snr)


def accepts(strength: np.ndarray | float, snr: np.ndarray | float, params: AlignParams,
            typical: float | None = None) -> np.ndarray:
    """The one test of whether frames aligned well enough to be used, for both drivers.

    A frame is used when its deciding peak stands ``params.min_snr`` noise standard
    deviations above a pure-noise correlation (:func:`measure_shifts`), its kept peak
    reaches ``params.min_strength``, and, where the ``typical`` (median) signal-to-noise
    of the frames around it is known, its own reaches :data:`WEAK_SHARE` of it as well
    (a frame off target, or through cloud).
    """
    snr = np.asarray(snr)
    ok = (snr >= params.min_snr) & (np.asarray(strength) >= params.min_strength)
    if typical is not None:
        ok &= snr >= WEAK_SHARE * typical
    return ok


def _batches(frames: Sequence[np.ndarray], size: int):
    """Yield ``(start, [frames...])`` chunks, reading the frames in the calling thread."""
    n = len(frames)
    for start in range(0, n, size):
        yield start, [frames[i] for i in range(start, min(n, start + size))]
