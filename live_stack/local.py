"""Per-AP frame selection and local shifts.

Seeing is anisoplanatic: a frame can be sharp in one part of the field and blurred in
another, and each part is displaced differently. So the frames are ranked again at every
alignment point by the detail energy inside the AP's box (looked up from the per-frame
quality cells, at the box's globally aligned position), the best ones are selected per
AP, and each selected frame's residual shift at the AP is measured against the
reference by band-limited phase correlation. A shift is not trusted when its
correlation peak is weak against the noise, when it reaches the search limit, or when it
disagrees with the shifts of the neighbouring APs in the same frame (local warps are
smooth; a lone outlier is a mis-measurement); an untrusted shift is not a reason to
leave the frame out of the AP's stack (which would give boxes of different frame
counts, and so of different noise): :func:`resolve` replaces it by its neighbours'
shifts, or the frame's global shift.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from live_stack.align import GlobalAlignment
from live_stack.apgrid import APGrid
from live_stack.correlate import Target, make_target
from live_stack.quality import Ranking, box_quality

#: Frames whose box-quality table is built at once (bounds memory on long captures).
QUALITY_CHUNK = 256


#: The window of the wide measuring box (:func:`make_wide_targets`), frame's and
#: reference's: a Tukey window tapered over this share of the side (a Hann window, 1,
#: would leave a seventh of the box's pixels any weight).
WIDE_TAPER = 0.3

#: Ways an untrusted local shift is replaced (``LocalParams.fallback``).
FALLBACKS = ("neighbours", "global")


@dataclass(frozen=True)
class LocalParams:
    """Parameters of per-AP alignment (CLI/config prefix ``local_``)."""

    peak_sigma: float = 1.2  # width in pixels of the low-passed correlation peak
    min_strength: float = 0.0  # weaker AP correlation peaks (0..1) are not trusted
    min_snr: float = 5.0  # peaks lower than this many noise standard deviations are not trusted
    snr_weights: bool = True  # weight the correlation's frequencies by signal-to-noise
    outlier: float = 3.0  # px: shifts further than this from their neighbours' median are left out
    min_neighbours: int = 3  # the outlier test needs at least this many neighbouring APs
    fallback: str = "neighbours"  # an untrusted shift becomes: "neighbours" or "global"
    wide_margin: int = 0  # px each side of a wider box weak peaks are measured on again (0: off)
    wide_below: float = 8.0  # peaks under this many noise std devs are measured on the wide box

    def __post_init__(self) -> None:
        if not 0.3 <= self.peak_sigma <= 5.0:
            raise ValueError(f"local_peak_sigma must be 0.3..5, got {self.peak_sigma}")
        if not 0.0 <= self.min_strength < 1.0:
            raise ValueError(f"local_min_strength must be in [0, 1), got {self.min_strength}")
        if not 0.0 <= self.min_snr <= 100.0:  # NaN too
            raise ValueError(f"local_min_snr must be 0..100, got {self.min_snr}")
        if not self.outlier > 0:  # NaN too
            raise ValueError(f"local_outlier must be > 0 pixels, got {self.outlier}")
        if self.min_neighbours < 1:
            raise ValueError(f"local_min_neighbours must be >= 1, got {self.min_neighbours}")
        if isinstance(self.wide_margin, bool) or not isinstance(self.wide_margin, int) \
                or not 0 <= self.wide_margin <= 256:
            raise ValueError(f"local_wide_margin must be 0..256 pixels, got {self.wide_margin}")
        if not 0.0 <= self.wide_below <= 100.0:  # NaN too
            raise ValueError(f"local_wide_below must be 0..100, got {self.wide_below}")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"local_fallback must be one of {FALLBACKS}, got "
                             f"{self.fallback!r}")


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


def parse_stack_size(text: str | int | float) -> tuple[float, bool]:
    """Parse a stack size: ``"10%"`` (a share of the frames) or ``"200"`` (a count).

    Returns
    -------
    tuple
        ``(value, is_percent)``.

    Raises
    ------
    ValueError
        Naming the bad size.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, pct = float(text), False
    else:
        m = _SIZE_RE.match(str(text))
        if not m:
            raise ValueError(f"stack size {text!r} is neither a count (200) nor a share (10%)")
        value, pct = float(m.group(1)), bool(m.group(2))
    if pct and not 0 < value <= 100:
        raise ValueError(f"stack size {text!r}: a share must be in (0, 100]%")
    if not pct and (value < 1 or value != int(value)):
        raise ValueError(f"stack size {text!r}: a count must be a whole number >= 1")
    return value, pct


def stack_count(size: str | int | float, usable: int) -> int:
    """Number of frames per AP for a stack size, given ``usable`` aligned frames."""
    value, pct = parse_stack_size(size)
    count = int(round(value / 100.0 * usable)) if pct else int(value)
    return max(1, min(usable, count))


@dataclass(frozen=True)
class Selection:
    """The best frames at each AP, as the engine selected them (:func:`best_per_ap`).

    Attributes
    ----------
    rank : numpy.ndarray
        int32 ``(n, m)``: the rank (0 = best) of frame ``f`` at AP ``a``, or ``-1`` if the
        frame is not among the ``max(counts)`` best there.
    counts : tuple of int
        The frames per AP of each requested stack size.
    quality : numpy.ndarray
        float32 ``(n, m)`` local quality table (``-inf`` where the frame may not be
        selected: not aligned, or its patch not wholly inside it).
    """

    rank: np.ndarray
    counts: tuple[int, ...]
    quality: np.ndarray


def ap_quality(ranking: Ranking, alignment: GlobalAlignment, grid: APGrid) -> np.ndarray:
    """Local quality of every frame at every AP, ``(n, m)`` float32.

    On a grid laid for a faint capture (``grid.faint``) by the ranking's coarser measure.
    Frames that failed global alignment get ``-inf``.
    """
    n = len(ranking.quality)
    table = np.empty((n, len(grid)), dtype=np.float32)
    boxes = grid.boxes
    maps = ranking.selection_maps(grid.faint)
    for start in range(0, n, QUALITY_CHUNK):
        stop = min(n, start + QUALITY_CHUNK)
        table[start:stop] = box_quality(maps[start:stop], ranking.scale, boxes,
                                        alignment.shifts[start:stop])
    table[~alignment.ok] = -np.inf
    return table


def best_per_ap(quality: np.ndarray, top: int) -> np.ndarray:
    """The rank of each frame at each AP among the best ``top`` there.

    Parameters
    ----------
    quality : numpy.ndarray
        ``(n, m)`` quality of frame ``f`` at AP ``a``; ``-inf`` where the frame may not be
        selected.
    top : int
        Frames ranked per AP at most.

    Returns
    -------
    numpy.ndarray
        int32 ``(n, m)``: 0 for the best frame at the AP, ``-1`` below the best ``top``
        and where the quality is not finite.
    """
    n, m = quality.shape
    top = min(int(top), n)
    rank = np.full((n, m), -1, dtype=np.int32)
    if m and top > 0:
        best = np.argpartition(-quality, top - 1, axis=0)[:top] if top < n else \
            np.tile(np.arange(n)[:, None], (1, m))
        qbest = np.take_along_axis(quality, best, axis=0)
        order = np.argsort(-qbest, axis=0, kind="stable")
        best = np.take_along_axis(best, order, axis=0)
        cols = np.broadcast_to(np.arange(m), best.shape)
        rank[best, cols] = np.arange(top, dtype=np.int32)[:, None]
        rank[~np.isfinite(quality)] = -1
    return rank


def make_ap_targets(reference: np.ndarray, grid: APGrid, params: LocalParams) -> Target:
    """Prepare the reference patch of every AP for correlation (computed once, reused)."""
    patches = extract(reference, grid.centres, grid.fft_size)
    return make_target(patches, peak_sigma=params.peak_sigma, weighted=params.snr_weights)


def wide_size(grid: APGrid, params: LocalParams) -> int:
    """Side of the wide measuring box (:func:`make_wide_targets`); 0: none."""
    return grid.fft_size + 2 * params.wide_margin if params.wide_margin else 0


def make_wide_targets(reference: np.ndarray, grid: APGrid,
                      params: LocalParams) -> tuple[Target, np.ndarray] | None:
    """The reference's wide measuring box of every AP, prepared for correlation, and
    which APs have one (their box lies wholly inside the reference); None when
    ``params.wide_margin`` is 0 or no AP's does.

    A peak weak against the noise (a faint, low-contrast patch) is measured again on a
    box ``wide_margin`` pixels wider on each side than the stacked patch, both boxes
    windowed (:data:`WIDE_TAPER`): more pixels of the same structure, so a higher peak
    and a more precise shift, at the cost of one more, larger transform for those pairs
    only (and of the wide targets' memory).
    """
    size = wide_size(grid, params)
    if not size or not len(grid):
        return None
    fits = inside(grid.centres, size, reference.shape)
    if not fits.any():
        return None
    half = size // 2
    padded = np.pad(reference, half, mode="reflect")  # the APs without a box: unused
    patches = extract(padded, grid.centres + half, size)
    return make_target(patches, peak_sigma=params.peak_sigma, weighted=params.snr_weights,
                       taper=WIDE_TAPER), fits


def extract(image: np.ndarray, centres: np.ndarray, size: int) -> np.ndarray:
    """Square patches of ``size`` centred at integer ``centres`` (``(k, 2)``).

    The patch of centre ``c`` spans ``c - size/2 .. c + size/2 - 1``. Works on ``(H, W)``
    (giving ``(k, size, size)``) and ``(H, W, C)`` images (giving ``(k, size, size, C)``).
    A patch that reaches past the image's edge (an AP box at the edge of the area, whose
    search margin lies outside) has the part outside mirrored from the part inside
    (:func:`inside` says which patches lie wholly inside); at most half of a patch may
    lie outside along each axis.
    """
    h = size // 2
    centres = np.asarray(centres)
    if len(centres):
        over = max(0, int(-(centres - h).min()),
                   int((centres[:, 0] - h + size - image.shape[0]).max()),
                   int((centres[:, 1] - h + size - image.shape[1]).max()))
    else:
        over = 0
    if over:
        if over > h:
            raise ValueError(f"a patch of {size} reaches {over} pixels past the "
                             f"{image.shape[1]}x{image.shape[0]} image (at most {h} may)")
        # the whole image mirrored out once: cheaper than patch by patch for the many
        # patches of a frame at the rim of a grid
        image = _mirror_pad(image, over)
        centres = centres + over
    if image.ndim == 2:
        windows = sliding_window_view(image, (size, size))
        return windows[centres[:, 0] - h, centres[:, 1] - h]
    windows = sliding_window_view(image, (size, size), axis=(0, 1))
    return windows[centres[:, 0] - h, centres[:, 1] - h].transpose(0, 2, 3, 1)


def _mirror_pad(image: np.ndarray, pad: int) -> np.ndarray:
    """``image`` with ``pad`` pixels mirrored out at every side (the edge pixel not
    repeated)."""
    if image.ndim == 2 or image.shape[2] in (3, 4):
        return cv2.copyMakeBorder(np.ascontiguousarray(image), pad, pad, pad, pad,
                                  cv2.BORDER_REFLECT_101)
    return np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")


def inside(centres: np.ndarray, size: int, shape: tuple[int, ...]) -> np.ndarray:
    """Which patches of :func:`extract` lie wholly inside an image of ``shape``."""
    h = size // 2
    return ((centres[:, 0] - h >= 0) & (centres[:, 1] - h >= 0)
            & (centres[:, 0] - h + size <= shape[0]) & (centres[:, 1] - h + size <= shape[1]))


def judge(dy: np.ndarray, dx: np.ndarray, strength: np.ndarray, aps: np.ndarray, grid: APGrid,
          params: LocalParams, *, snr: np.ndarray | None = None) -> np.ndarray:
    """Which of one frame's measured AP shifts to trust.

    A shift is not trusted when its correlation peak is weak (below
    ``params.min_strength``, or, given ``snr``, below ``params.min_snr`` noise standard
    deviations: see :attr:`live_stack.correlate.Shifts.snr`), when it reaches the search
    limit, or when it is further than ``params.outlier`` from the median of its grid
    neighbours' shifts in the same frame.
    """
    ok = ((strength >= params.min_strength) & (np.abs(dy) < grid.search)
          & (np.abs(dx) < grid.search))
    if snr is not None:
        ok &= snr >= params.min_snr
    return ok & _consistent(grid, aps, dy, dx, ok, params)


def resolve(dy: np.ndarray, dx: np.ndarray, strength: np.ndarray, aps: np.ndarray,
            grid: APGrid, params: LocalParams, *, snr: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame's AP shifts to stack with: the trusted ones as measured, the others
    replaced, so that no frame leaves an AP's stack.

    The shifts are judged by :func:`judge`. An untrusted shift becomes, with
    ``params.fallback == "neighbours"``, the median of the trusted shifts of its grid
    neighbours in the same frame (local warps are smooth), filled in twice over so that
    a small gap is bridged from its rim; where no neighbour is trusted, and with
    ``"global"``, it becomes 0: the frame's global shift.

    Parameters
    ----------
    dy, dx, strength : numpy.ndarray
        ``(k,)`` measured shifts and peak strengths at ``aps``.
    aps : numpy.ndarray
        ``(k,)`` their APs (each at most once).
    grid : APGrid
        The APs.
    params : LocalParams
        Thresholds and the fallback.
    snr : numpy.ndarray, optional
        ``(k,)`` peaks in noise standard deviations.

    Returns
    -------
    tuple of numpy.ndarray
        ``(dy, dx, fell_back)``: the shifts to stack with (new arrays) and which of them
        fell back.
    """
    ok = judge(dy, dx, strength, aps, grid, params, snr=snr)
    dy = np.where(ok, dy, 0.0)
    dx = np.where(ok, dx, 0.0)
    fell = ~ok
    if params.fallback == "global" or ok.all() or not ok.any():
        return dy, dx, fell
    m = len(grid.centres)
    where = np.full(m + 1, -1, dtype=np.intp)
    where[aps] = np.arange(len(aps))
    nb = where[grid.neighbours[aps]]  # (k, 8); -1: not measured in this frame
    known = ok.copy()
    for _ in range(2):
        todo = np.flatnonzero(~known)
        if not len(todo):
            break
        rows = nb[todo]
        valid = rows >= 0
        valid[valid] = known[rows[valid]]
        counts = valid.sum(axis=1)
        fill = counts > 0
        if not fill.any():
            break
        ny = np.where(valid, dy[rows], np.nan)[fill]
        nx = np.where(valid, dx[rows], np.nan)[fill]
        at = todo[fill]
        dy[at] = _row_median(ny, counts[fill])
        dx[at] = _row_median(nx, counts[fill])
        known[at] = True
    return dy, dx, fell


def _consistent(
    grid: APGrid, aps: np.ndarray, dy: np.ndarray, dx: np.ndarray, ok: np.ndarray,
    params: LocalParams,
) -> np.ndarray:
    """False for shifts far from the median of their grid neighbours' shifts in the frame.

    Only neighbours measured in the same frame, and trusted so far, take part; an AP
    with fewer than ``min_neighbours`` of them is kept as it is.
    """
    m = len(grid.centres)
    where = np.full(m + 1, -1, dtype=np.intp)  # AP index -> position in this frame's arrays
    where[aps] = np.arange(len(aps))
    nb = where[grid.neighbours[aps]]  # (k, 8); padding -1 maps to where[-1] == -1
    valid = nb >= 0
    valid[valid] = ok[nb[valid]]
    counts = valid.sum(axis=1)
    ny = np.where(valid, dy[nb], np.nan)
    nx = np.where(valid, dx[nb], np.nan)
    test = counts >= params.min_neighbours
    good = np.ones(len(aps), dtype=bool)
    if test.any():
        my = _row_median(ny[test], counts[test])
        mx = _row_median(nx[test], counts[test])
        good[test] = np.hypot(dy[test] - my, dx[test] - mx) <= params.outlier
    return good


def _row_median(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Median of the finite values of each row (NaN elsewhere); ``counts`` finite per row."""
    ordered = np.sort(values, axis=1)  # NaN sorts last
    rows = np.arange(len(values))
    return 0.5 * (ordered[rows, (counts - 1) // 2] + ordered[rows, counts // 2])
