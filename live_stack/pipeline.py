"""The offline lucky-imaging pipeline: every phase, in order, on a whole capture.

::

    ranking   = quality.rank(frames, params.quality)
    alignment = align.align(frames, ranking, params.align)
    reference = reference.build_reference(frames, ranking, alignment, params.reference)
    grid      = apgrid.lay_grid(reference.luminance, params.ap, box=reference.box,
                                frame=best aligned frame's luminance, ...)
    ranking   = quality.with_faint_maps(ranking, frames)   # only on a faint grid (grid.faint)
    quality   = local.ap_quality(ranking, alignment, grid)
    engine, selection = stack_aps(frames, alignment, reference, grid, quality, counts, ...)
    images    = stack.blend(...) per stack size, cropped to the area the reference frames cover
    images    = finish.finish(image, ...): rgb-align, normalize, sharpen (all off by default)

With ``params.drizzle`` the sums are drizzled onto a finer grid (or the images
resampled), see :mod:`live_stack.drizzle`.

Each phase is a plain function of the capture and the results before it; this module
only drives them, times them, and reports progress. The selection, the local shifts and
the sums are the AP-stacking engine's (:class:`live_stack.apstack.APStack`), which the
live stacker drives frame by frame.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields

import numpy as np

from live_stack.align import AlignParams, GlobalAlignment, align
from live_stack.apgrid import APGrid, APParams, lay_grid
from live_stack.apstack import APStack, in_pieces
from live_stack.dispersion import RGBAlignParams
from live_stack.drizzle import DrizzleParams, crop_output
from live_stack.finish import finish
from live_stack.frames import luminance
from live_stack.local import LocalParams, Selection, ap_quality, parse_stack_size, stack_count
from live_stack.normalize import NormalizeParams
from live_stack.quality import QualityParams, Ranking, rank, with_faint_maps
from live_stack.reference import Reference, ReferenceParams, build_reference
from live_stack.sharpen import SharpenParams
from live_stack.stack import BlendParams

#: ``progress(phase, done, total)``.
PhaseProgress = Callable[[str, int, int], None]

#: Pieces each batch of (frame, AP) pairs is cut into for the threads: the same whatever
#: their number, so that the stack does not depend on it.
PIECES = 4

PHASES = ("rank", "align", "reference", "grid", "select", "stack", "blend")


@dataclass(frozen=True)
class PhaseParams:
    """The parameters of the phases, one small dataclass each: the fields the offline
    pipeline (:class:`PipelineParams`) and the live stacker
    (:class:`live_stack.live.LiveParams`) share."""

    quality: QualityParams = field(default_factory=QualityParams)  # frame quality measure
    align: AlignParams = field(default_factory=AlignParams)  # global alignment
    reference: ReferenceParams = field(default_factory=ReferenceParams)  # reference frame
    ap: APParams = field(default_factory=APParams)  # alignment-point grid
    local: LocalParams = field(default_factory=LocalParams)  # per-AP alignment
    blend: BlendParams = field(default_factory=BlendParams)  # blending of the AP stacks
    drizzle: DrizzleParams = field(default_factory=DrizzleParams)  # drizzle / resampling
    rgbalign: RGBAlignParams = field(default_factory=RGBAlignParams)  # dispersion correction
    normalize: NormalizeParams = field(default_factory=NormalizeParams)  # output brightness
    sharpen: SharpenParams = field(default_factory=SharpenParams)  # output sharpening (off)


#: The field names of :class:`PhaseParams` (the prefixes of their fields' names on the
#: command line, in the config and in ``set_param``: ``ap_size``, ``local_outlier``...).
PHASE_FIELDS = tuple(f.name for f in fields(PhaseParams))


@dataclass(frozen=True)
class PipelineParams(PhaseParams):
    """All the parameters of the offline pipeline: the phases' and its own."""

    stack_sizes: tuple[str, ...] = ("10%",)  # frames per AP: counts ("200") or shares ("10%")
    threads: int = 2  # worker threads for the per-frame work

    def __post_init__(self) -> None:
        if not self.stack_sizes:
            raise ValueError("stack_sizes must name at least one stack size")
        for size in self.stack_sizes:
            parse_stack_size(size)
        if len(set(self.stack_sizes)) != len(self.stack_sizes):
            raise ValueError(f"stack_sizes repeats a size: {self.stack_sizes}")
        if not 1 <= self.threads <= 64:
            raise ValueError(f"threads must be 1..64, got {self.threads}")


@dataclass(frozen=True)
class StackImage:
    """One stacked image of :class:`PipelineResult`.

    Attributes
    ----------
    size : str
        The stack size as asked (``"10%"``, ``"200"``).
    frames_per_ap : int
        Frames selected at each AP.
    image : numpy.ndarray
        float32 ``[0, 1]`` image, cropped to the area every reference frame covers (the APs
        stack only patches wholly inside their frames).
    box : tuple
        ``(y0, x0, y1, x1)`` of the crop in reference coordinates.
    ap_weight : numpy.ndarray
        Summed AP blending weight over the crop (1-ish inside the AP area, 0 outside).
    notes : dict
        What the finishing steps did (``rgb_offsets``, ``normalize``), plain values.

    With drizzle or resampling, ``image`` and ``ap_weight`` are ``drizzle.scale`` times
    the size of ``box``.
    """

    size: str
    frames_per_ap: int
    image: np.ndarray
    box: tuple[int, int, int, int]
    ap_weight: np.ndarray
    notes: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class PipelineResult:
    """Result of :func:`run`."""

    stacks: tuple[StackImage, ...]
    ranking: Ranking
    alignment: GlobalAlignment
    reference: Reference
    grid: APGrid
    selection: Selection
    local_failed: int  # (frame, AP) shifts not trusted, that fell back (local.resolve)
    local_measured: int  # (frame, AP) shifts measured
    timings: dict[str, float]  # seconds per phase
    frames: int  # frames in the capture
    ap_frames: np.ndarray = field(  # int (stack sizes, APs): frames stacked at each AP
        default_factory=lambda: np.zeros((0, 0), np.int64))
    ap_measured: np.ndarray = field(  # int (APs,): stacked frames' shifts measured per AP
        default_factory=lambda: np.zeros(0, np.int64))
    ap_fell_back: np.ndarray = field(  # int (APs,): of those, shifts that fell back
        default_factory=lambda: np.zeros(0, np.int64))

    def summary(self) -> dict[str, object]:
        """Counts and timings, for logs and file metadata."""
        return {
            "frames": self.frames,
            "aligned": int(self.alignment.ok.sum()),
            "alignment_failed": self.alignment.failed,
            "mode": self.alignment.mode,
            "reference_frames": int(len(self.reference.frames)),
            "aps": len(self.grid),
            "aps_dropped_dim": self.grid.dropped_dim,
            "aps_dropped_flat": self.grid.dropped_flat,
            "ap_step": self.grid.step,
            # a frame's detail over its noise in the AP boxes (None: not measured)
            "ap_detail": None if np.isnan(self.grid.detail) else round(self.grid.detail, 3),
            "ap_dense": self.grid.dense,
            "ap_dense_reason": self.grid.dense_reason,
            "local_measured": self.local_measured,
            "local_failed": self.local_failed,
            "stacks": {s.size: s.frames_per_ap for s in self.stacks},
            "seconds": {k: round(v, 3) for k, v in self.timings.items()},
        }


def best_aligned(ranking: Ranking, alignment: GlobalAlignment) -> int | None:
    """The best-ranked frame that was aligned (None if none was)."""
    for i in ranking.order:
        if alignment.ok[int(i)]:
            return int(i)
    return None


def stack_aps(
    frames: Sequence[np.ndarray],
    alignment: GlobalAlignment,
    reference: Reference,
    grid: APGrid,
    quality: np.ndarray,
    counts: tuple[int, ...],
    params: LocalParams = LocalParams(),
    *,
    threads: int = 2,
    progress: Callable[[int, int], None] | None = None,
    drizzle: DrizzleParams | None = None,
) -> tuple[APStack, Selection]:
    """Select the best frames at each AP, measure their local shifts, sum their patches.

    The whole capture is entered into one :class:`~live_stack.apstack.APStack` (a slot
    per frame), the best ``max(counts)`` frames are selected at each AP, and one sync
    measures and adds every selected pair, frame after frame in capture order (so each
    frame is read once, and only if it is selected at one AP at least).

    Parameters
    ----------
    quality : numpy.ndarray
        ``(n, m)`` frame quality at each AP (:func:`live_stack.local.ap_quality`).
    counts : tuple of int
        Frames per AP of each stack size: one sum each.

    Returns
    -------
    tuple
        ``(engine, selection)``: the engine holding one sum per stack size, and the
        selection it made.
    """
    n = len(frames)
    shape = alignment.shape if reference.image.ndim == 2 else alignment.shape + (3,)
    pool = ThreadPoolExecutor(max_workers=threads) if threads > 1 else None
    try:
        engine = APStack(grid, reference.luminance, frames, shape=shape, slots=n,
                         sizes=len(counts), local=params, drizzle=drizzle or DrizzleParams(),
                         split=in_pieces(pool, PIECES))
        usable = np.flatnonzero(alignment.ok)
        engine.place(usable, alignment.shifts[usable], quality[usable])
        rank = engine.select(counts)
        engine.sync(progress=progress)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return engine, Selection(rank=rank, counts=tuple(int(c) for c in counts),
                             quality=engine.q)


def run(
    frames: Sequence[np.ndarray],
    params: PipelineParams = PipelineParams(),
    *,
    progress: PhaseProgress | None = None,
) -> PipelineResult:
    """Stack a whole capture.

    Parameters
    ----------
    frames : sequence of numpy.ndarray
        The capture: anything with ``len`` and indexing that returns frames (a frame
        source from :func:`live_stack.io.open_source`, a list of arrays, ...).
    params : PipelineParams
        Parameters of every phase.
    progress : callable, optional
        ``progress(phase, done, total)`` as each phase advances.

    Returns
    -------
    PipelineResult
    """
    n = len(frames)
    if n == 0:
        raise ValueError("frames is empty: nothing to stack")
    timings: dict[str, float] = {}

    def report(phase: str) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        return lambda done, total: progress(phase, done, total)

    t = time.perf_counter()
    ranking = rank(frames, params.quality, progress=report("rank"), threads=params.threads)
    timings["rank"] = time.perf_counter() - t

    t = time.perf_counter()
    alignment = align(frames, ranking, params.align, progress=report("align"),
                      threads=params.threads)
    timings["align"] = time.perf_counter() - t

    t = time.perf_counter()
    reference = build_reference(frames, ranking, alignment, params.reference)
    timings["reference"] = time.perf_counter() - t

    t = time.perf_counter()
    best = best_aligned(ranking, alignment)
    grid = lay_grid(reference.luminance, params.ap, box=reference.box,
                    frame=None if best is None else luminance(frames[best]),
                    frame_shift=(0.0, 0.0) if best is None else alignment.shifts[best])
    timings["grid"] = time.perf_counter() - t

    t = time.perf_counter()
    usable = int(alignment.ok.sum())
    counts = tuple(stack_count(size, usable) for size in params.stack_sizes)
    if grid.faint:  # its APs' frames are chosen by the coarser measure: a second pass
        ranking = with_faint_maps(ranking, frames, progress=report("rank"),
                                  threads=params.threads)
    quality = ap_quality(ranking, alignment, grid)
    timings["select"] = time.perf_counter() - t

    t = time.perf_counter()
    engine, selection = stack_aps(
        frames, alignment, reference, grid, quality, counts, params.local,
        threads=params.threads, progress=report("stack"), drizzle=params.drizzle)
    timings["stack"] = time.perf_counter() - t

    t = time.perf_counter()
    box = reference.box  # where the background is made of every one of its frames
    stacks = []
    for k, (size, count) in enumerate(zip(params.stack_sizes, counts, strict=True)):
        image, ap_weight = crop_output(engine.image(reference.image, params.blend, size=k,
                                                    crop=box),
                                       box, params.drizzle)
        image, notes = finish(image, rgbalign=params.rgbalign, normalize_params=params.normalize,
                              sharpen_params=params.sharpen)
        stacks.append(StackImage(size=size, frames_per_ap=count, image=image, box=box,
                                 ap_weight=ap_weight, notes=notes))
    timings["blend"] = time.perf_counter() - t
    return PipelineResult(stacks=tuple(stacks), ranking=ranking, alignment=alignment,
                          reference=reference, grid=grid, selection=selection,
                          local_failed=engine.tally.fell_back,
                          local_measured=engine.tally.measured, timings=timings,
                          frames=n,
                          ap_frames=np.stack([acc.counts for acc in engine.sums]),
                          ap_measured=engine.contrib.sum(axis=0),
                          ap_fell_back=engine.fell_back())
