"""Frame quality: how sharp each frame is, overall and region by region.

The measure is noise-robust: the frame's luminance is blurred (a 7-px Gaussian by
default, optionally after an area-average downsampling) before a Laplacian or gradient
operator, so that photon noise does not pass for detail. The squared response is summed
over coarse cells and kept per frame, so that the local quality of any box (an alignment
point) can be looked up later for every frame without reading the frames again.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from live_stack.frames import luminance_u8_or_f32
from live_stack.parallel import run_in_order

#: Progress callback: ``progress(done, total)``.
Progress = Callable[[int, int], None]

METHODS = ("laplacian", "gradient")
#: Buffers a Scratch keeps at most (a measure uses 2-3 per frame size; two measures).
MAX_SCRATCH_BUFFERS = 8


@dataclass(frozen=True)
class QualityParams:
    """Parameters of the quality measure (CLI/config prefix ``quality_``).

    The fine measure (``downsample``, ``blur``) ranks the frames and picks each AP's
    frames; a coarser one (``faint_*``), on the same cells, picks them instead on a grid
    laid for a faint capture (a frame's detail under its noise, ``ap_dense_below``),
    where the fine band is mostly noise. It is taken only where such a grid needs it
    (:func:`with_faint_maps`; live, while such a grid is in use).
    """

    method: str = "laplacian"  # "laplacian" (second derivative) or "gradient" (Sobel magnitude)
    downsample: int = 1  # area-downsampling factor before measuring (1 = full resolution)
    blur: int = 7  # Gaussian pre-blur kernel size in downsampled pixels (odd, 1 = none)
    cell: int = 16  # side, in downsampled pixels, of the cells the local quality is summed over
    faint_blur: int = 5  # blur of the coarser measure for a faint grid's APs (odd, 0 = none)
    faint_downsample: int = 2  # its area-downsampling (1 where it does not divide the cells' side)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"quality_method must be one of {METHODS}, got {self.method!r}")
        if not 1 <= self.downsample <= 8:
            raise ValueError(f"quality_downsample must be 1..8, got {self.downsample}")
        if self.blur < 1 or self.blur % 2 == 0 or self.blur > 31:
            raise ValueError(f"quality_blur must be an odd size 1..31, got {self.blur}")
        if not 2 <= self.cell <= 64:
            raise ValueError(f"quality_cell must be 2..64, got {self.cell}")
        if self.faint_blur and (self.faint_blur % 2 == 0 or self.faint_blur > 31):
            raise ValueError(f"quality_faint_blur must be 0 or an odd size 1..31, "
                             f"got {self.faint_blur}")
        if not 1 <= self.faint_downsample <= 8:
            raise ValueError(f"quality_faint_downsample must be 1..8, got {self.faint_downsample}")
        side = self.downsample * self.cell
        if self.faint_blur and side // self._faint_down() > 64:
            raise ValueError(f"quality_faint_downsample {self.faint_downsample} leaves cells of "
                             f"{side // self._faint_down()} px (quality_downsample x "
                             f"quality_cell = {side} px); at most 64")

    @property
    def faint(self) -> QualityParams | None:
        """The second measure's own parameters (on the same cells), or None."""
        if not self.faint_blur:
            return None
        side = self.downsample * self.cell
        return QualityParams(method=self.method, downsample=self._faint_down(),
                             blur=self.faint_blur, cell=side // self._faint_down(),
                             faint_blur=0)

    def _faint_down(self) -> int:
        side, down = self.downsample * self.cell, self.faint_downsample
        return down if side % down == 0 and side // down >= 2 else 1


@dataclass(frozen=True)
class QualityMap:
    """Local sharpness of one frame, summed over cells.

    Attributes
    ----------
    cells : numpy.ndarray
        float32 ``(rows, cols)`` sums of the squared detail response per cell.
    scale : int
        Full-resolution pixels per cell side (``downsample * cell``).
    faint : numpy.ndarray or None
        The same cells' sums by the coarser measure (``QualityParams.faint``), or None.
    """

    cells: np.ndarray
    scale: int
    faint: np.ndarray | None = None

    @property
    def layers(self) -> np.ndarray:
        """``(1 or 2, rows, cols)``: the cells, then the faint measure's if any."""
        return self.cells[None] if self.faint is None else np.stack((self.cells, self.faint))

    @property
    def quality(self) -> float:
        """Mean detail energy over the frame (the frame's global quality)."""
        return float(self.cells.mean()) / (self.scale / 1.0) ** 2


@functools.lru_cache(maxsize=8)
def _gaussian_kernel(size: int) -> np.ndarray:
    """The 1-D Gaussian of ``cv2.GaussianBlur(..., (size, size), 0)``, float32."""
    kernel = cv2.getGaussianKernel(size, 0).astype(np.float32).ravel()
    kernel.flags.writeable = False
    return kernel


class Scratch:
    """Work buffers that :func:`quality_map` reuses from one frame to the next.

    At full resolution the filters' float32 intermediates are several MB per frame; a
    fresh buffer per frame costs more in page faults than the filtering itself on a
    1280x960 frame. One ``Scratch`` serves one thread at a time.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}

    @staticmethod
    def of_thread(holder: threading.local) -> Scratch:
        """The calling thread's Scratch kept in ``holder`` (made on first use)."""
        scratch = getattr(holder, "scratch", None)
        if scratch is None:
            scratch = holder.scratch = Scratch()
        return scratch

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """The float32 buffer ``name`` of ``shape`` (its old contents are garbage)."""
        buf = self._buffers.get((name, shape))
        if buf is None:
            if len(self._buffers) >= MAX_SCRATCH_BUFFERS:  # frames of another size came
                self._buffers.clear()
            buf = self._buffers[(name, shape)] = np.empty(shape, dtype=np.float32)
        return buf


def detail_response(frame: np.ndarray, params: QualityParams, *,
                    scratch: Scratch | None = None) -> np.ndarray:
    """Squared detail response (Laplacian or gradient) of a downsampled, blurred frame.

    Parameters
    ----------
    frame : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` frame, any supported dtype.
    params : QualityParams
        Measure parameters.
    scratch : Scratch, optional
        Buffers to work in; the result is then one of them, valid until the next call
        with the same ``scratch``.

    Returns
    -------
    numpy.ndarray
        float32 map of ``(H // downsample, W // downsample)``; its scale is that of the
        float32 ``[0, 1]`` frame.
    """
    work = scratch if scratch is not None else Scratch()
    lum = luminance_u8_or_f32(frame)
    scale = {np.dtype(np.uint8): 1 / 255.0, np.dtype(np.uint16): 1 / 65535.0}.get(lum.dtype, 1.0)
    d = params.downsample
    if d > 1:
        h, w = lum.shape[0] // d, lum.shape[1] // d
        lum = cv2.resize(lum[: h * d, : w * d], (w, h), interpolation=cv2.INTER_AREA)
    # filter to float32 (after the cheap integer downsampling), so that integer frames
    # are not rounded again after the blur and every dtype measures alike; the separable
    # Gaussian reads integer pixels directly (the same numbers as converting first and
    # blurring, in 60 % of the time)
    shape = lum.shape[:2]
    smooth = work.get("smooth", shape)
    if params.blur > 1:
        kernel = _gaussian_kernel(params.blur)
        cv2.sepFilter2D(lum, cv2.CV_32F, kernel, kernel, dst=smooth)
    else:
        smooth[...] = lum
    resp = work.get("response", shape)
    if params.method == "laplacian":
        cv2.Laplacian(smooth, cv2.CV_32F, dst=resp, ksize=1, scale=scale)
        return cv2.multiply(resp, resp, dst=resp)
    gy = work.get("gy", shape)
    cv2.Sobel(smooth, cv2.CV_32F, 1, 0, dst=resp, ksize=3, scale=scale / 8)
    cv2.Sobel(smooth, cv2.CV_32F, 0, 1, dst=gy, ksize=3, scale=scale / 8)
    cv2.multiply(resp, resp, dst=resp)
    cv2.multiply(gy, gy, dst=gy)
    return cv2.add(resp, gy, dst=resp)


def quality_map(frame: np.ndarray, params: QualityParams, *,
                scratch: Scratch | None = None, faint: bool = True) -> QualityMap:
    """Measure a frame's local sharpness on a grid of cells.

    Parameters
    ----------
    frame : numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` frame.
    params : QualityParams
        Measure parameters.
    scratch : Scratch, optional
        Work buffers reused from an earlier call (one thread's).
    faint : bool
        Take the coarser measure too (``params.faint``), if there is one.

    Returns
    -------
    QualityMap
        Per-cell sums; partial cells at the right and bottom edges are left out.
    """
    coarse = params.faint if faint else None
    # both measures' cells are downsample x cell pixels, so their grids are the same
    return QualityMap(cells=_cells(frame, params, scratch),
                      scale=params.downsample * params.cell,
                      faint=None if coarse is None else _cells(frame, coarse, scratch))


def _cells(frame: np.ndarray, params: QualityParams, scratch: Scratch | None) -> np.ndarray:
    """One measure's per-cell sums (partial cells left out)."""
    resp = detail_response(frame, params, scratch=scratch)
    c = params.cell
    rows, cols = resp.shape[0] // c, resp.shape[1] // c
    if rows == 0 or cols == 0:
        raise ValueError(f"frame {frame.shape[1]}x{frame.shape[0]} is too small for quality cells")
    cells = cv2.resize(resp[: rows * c, : cols * c], (cols, rows), interpolation=cv2.INTER_AREA)
    cells *= np.float32(c * c)
    return cells


def box_quality(
    maps: np.ndarray, scale: int, boxes: np.ndarray, offsets: np.ndarray | None = None
) -> np.ndarray:
    """Detail energy inside boxes, from per-cell sums, for many frames at once.

    The cell sums are treated as a piecewise-constant density, so a box that cuts through
    cells gets the matching fraction of them (bilinear interpolation of the summed-area
    table).

    Parameters
    ----------
    maps : numpy.ndarray
        ``(n, rows, cols)`` per-cell sums of ``n`` frames (all on one cell grid).
    scale : int
        Full-resolution pixels per cell side.
    boxes : numpy.ndarray
        ``(m, 4)`` boxes ``(y0, x0, y1, x1)`` in full-resolution reference coordinates.
    offsets : numpy.ndarray, optional
        ``(n, 2)`` per-frame ``(dy, dx)`` displacement of the frame relative to the
        reference; the box is looked up at ``box + offset`` in each frame.

    Returns
    -------
    numpy.ndarray
        float64 ``(n, m)`` energy per pixel in each box for each frame.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (n, rows, cols), got shape {maps.shape}")
    n, rows, cols = maps.shape
    sat = np.zeros((n, rows + 1, cols + 1))
    sat[:, 1:, 1:] = maps.cumsum(axis=1).cumsum(axis=2)
    boxes = np.asarray(boxes, dtype=np.float64)
    off = np.zeros((n, 2)) if offsets is None else np.asarray(offsets, dtype=np.float64)
    # corner coordinates in cell units, per frame and box: (n, m)
    y0 = (boxes[None, :, 0] + off[:, None, 0]) / scale
    x0 = (boxes[None, :, 1] + off[:, None, 1]) / scale
    y1 = (boxes[None, :, 2] + off[:, None, 0]) / scale
    x1 = (boxes[None, :, 3] + off[:, None, 1]) / scale

    def at(yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        yy = np.clip(yy, 0, rows)
        xx = np.clip(xx, 0, cols)
        iy = np.minimum(np.floor(yy).astype(np.intp), rows - 1)
        ix = np.minimum(np.floor(xx).astype(np.intp), cols - 1)
        fy, fx = yy - iy, xx - ix
        fr = np.arange(n)[:, None]
        a = sat[fr, iy, ix]
        b = sat[fr, iy, ix + 1]
        c = sat[fr, iy + 1, ix]
        d = sat[fr, iy + 1, ix + 1]
        return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy

    total = at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0)
    area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1.0)
    return total / area[None, :]


@dataclass(frozen=True)
class Ranking:
    """Result of :func:`rank`.

    Attributes
    ----------
    quality : numpy.ndarray
        float64 ``(n,)`` global quality of each frame (higher is sharper).
    order : numpy.ndarray
        Frame indices, best first.
    maps : numpy.ndarray
        float32 ``(n, rows, cols)`` per-cell local quality of each frame.
    scale : int
        Full-resolution pixels per cell side of ``maps``.
    params : QualityParams
        The parameters used.
    faint_maps : numpy.ndarray or None
        float32 ``(n, rows, cols)``: the same cells by the coarser measure
        (``QualityParams.faint``; :func:`with_faint_maps`), or None.
    """

    quality: np.ndarray
    order: np.ndarray
    maps: np.ndarray
    scale: int
    params: QualityParams
    faint_maps: np.ndarray | None = None

    def selection_maps(self, faint: bool) -> np.ndarray:
        """The maps that choose each AP's frames: the faint measure's on a grid laid for
        a frame's detail under its noise (``faint``), where there is one."""
        return self.faint_maps if faint and self.faint_maps is not None else self.maps

    def best(self, count: int) -> np.ndarray:
        """Indices of the ``count`` best frames, best first."""
        return self.order[: max(1, int(count))]

    @property
    def normalized(self) -> np.ndarray:
        """Qualities divided by the best one (1.0 = best frame)."""
        top = float(self.quality.max()) if self.quality.size else 1.0
        return self.quality / (top if top > 0 else 1.0)


def rank(
    frames: Sequence[np.ndarray],
    params: QualityParams = QualityParams(),
    *,
    progress: Progress | None = None,
    threads: int = 2,
) -> Ranking:
    """Measure and rank every frame of a capture.

    Parameters
    ----------
    frames : sequence of numpy.ndarray
        The capture (anything with ``len`` and indexing, e.g. a frame source).
    params : QualityParams
        Measure parameters.
    progress : callable, optional
        Called as ``progress(done, total)``.
    threads : int
        Worker threads (OpenCV releases the GIL).

    Returns
    -------
    Ranking
    """
    n = len(frames)
    if n == 0:
        raise ValueError("frames is empty")
    maps, scale = _all_cells(frames, params, progress=progress, threads=threads)
    quality = maps.reshape(n, -1).mean(axis=1, dtype=np.float64) / float(scale) ** 2
    order = np.argsort(-quality, kind="stable")
    return Ranking(quality=quality, order=order, maps=maps, scale=scale, params=params)


def with_faint_maps(ranking: Ranking, frames: Sequence[np.ndarray], *,
                    progress: Progress | None = None, threads: int = 2) -> Ranking:
    """The ranking with its frames' cells by the coarser measure (``params.faint``) too.

    Taken in a second pass, only for a capture whose AP grid was laid for its noise
    (:attr:`live_stack.apgrid.APGrid.faint`): the others never need it.

    Parameters
    ----------
    ranking : Ranking
        :func:`rank`'s result for ``frames``.
    frames : sequence of numpy.ndarray
        The same capture, in the same order.
    progress : callable, optional
        Called as ``progress(done, total)``.
    threads : int
        Worker threads.

    Returns
    -------
    Ranking
        ``ranking`` itself when its parameters have no coarser measure.
    """
    coarse = ranking.params.faint
    if coarse is None or ranking.faint_maps is not None:
        return ranking
    if len(frames) != len(ranking.quality):
        raise ValueError(f"frames has {len(frames)} frames, the ranking {len(ranking.quality)}")
    maps, _ = _all_cells(frames, coarse, progress=progress, threads=threads)
    return replace(ranking, faint_maps=maps)


def _all_cells(frames: Sequence[np.ndarray], params: QualityParams, *,
               progress: Progress | None, threads: int) -> tuple[np.ndarray, int]:
    """One measure's ``(n, rows, cols)`` cells of every frame, and their side in pixels."""
    n = len(frames)
    first = quality_map(frames[0], params, faint=False)
    maps = np.empty((n,) + first.cells.shape, dtype=np.float32)
    maps[0] = first.cells
    buffers = threading.local()  # a Scratch per worker thread, for this call only

    def work(item: tuple[int, np.ndarray]) -> None:
        maps[item[0]] = quality_map(item[1], params, scratch=Scratch.of_thread(buffers),
                                    faint=False).cells

    run_in_order(
        work, ((i, frames[i]) for i in range(1, n)), threads=threads, progress=progress,
        total=n, start=1,
    )
    return maps, first.scale
