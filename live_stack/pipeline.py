"""The offline lucky-imaging pipeline: every phase, in order, on a whole capture.

::

    ranking   = quality.rank(frames, params.quality)
    alignment = align.align(frames, ranking, params.align)
    reference = reference.build_reference(frames, ranking, alignment, params.reference)
    grid      = apgrid.lay_grid(reference.luminance, params.ap, box=reference.box)
    selection = local.select(ranking, alignment, grid, counts)
    sums      = stack_aps(frames, alignment, reference, grid, selection, params.local)
    images    = stack.blend(...) per stack size, cropped to the area the frames cover
    images    = finish.finish(image, ...): rgb-align, normalize, sharpen (all off by default)

With ``params.drizzle`` the sums are drizzled onto a finer grid (or the images
resampled), see :mod:`live_stack.drizzle`.

Each phase is a plain function of the capture and the results before it; this module
only drives them, times them, and reports progress. The live stacker drives the same
functions frame by frame.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from live_stack.align import AlignParams, GlobalAlignment, align
from live_stack.apgrid import APGrid, APParams, lay_grid
from live_stack.correlate import correlate_spectra
from live_stack.dispersion import RGBAlignParams
from live_stack.drizzle import DrizzleParams, DrizzleSums, crop_output, make_sums
from live_stack.finish import finish
from live_stack.local import (
    LocalParams,
    Selection,
    inside,
    make_ap_targets,
    parse_stack_size,
    resolve,
    select,
    stack_count,
)
from live_stack.normalize import NormalizeParams
from live_stack.parallel import run_in_order
from live_stack.quality import QualityParams, Ranking, rank
from live_stack.reference import Reference, ReferenceParams, build_reference, covered_box
from live_stack.sharpen import SharpenParams
from live_stack.stack import BlendParams, PatchSums, frame_patches, patch_spectra

#: ``progress(phase, done, total)``.
PhaseProgress = Callable[[str, int, int], None]

#: Patches measured and stacked in one batch (the frames of a batch are added until it
#: holds this many): big enough to amortise the per-call work, small enough that the
#: batches in flight stay small for large frames.
PATCHES_PER_BATCH = 128
#: Frames in one batch at most.
FRAMES_PER_BATCH = 8

PHASES = ("rank", "align", "reference", "grid", "select", "stack", "blend")


@dataclass(frozen=True)
class PipelineParams:
    """All the parameters of the offline pipeline, one small dataclass per phase."""

    quality: QualityParams = field(default_factory=QualityParams)  # frame quality measure
    align: AlignParams = field(default_factory=AlignParams)  # global alignment
    reference: ReferenceParams = field(default_factory=ReferenceParams)  # reference frame
    ap: APParams = field(default_factory=APParams)  # alignment-point grid
    local: LocalParams = field(default_factory=LocalParams)  # per-AP alignment
    blend: BlendParams = field(default_factory=BlendParams)  # blending of the AP stacks
    stack_sizes: tuple[str, ...] = ("10%",)  # frames per AP: counts ("200") or shares ("10%")
    threads: int = 2  # worker threads for the per-frame work
    drizzle: DrizzleParams = field(default_factory=DrizzleParams)  # drizzle / resampling
    rgbalign: RGBAlignParams = field(default_factory=RGBAlignParams)  # dispersion correction
    normalize: NormalizeParams = field(default_factory=NormalizeParams)  # output brightness
    sharpen: SharpenParams = field(default_factory=SharpenParams)  # output sharpening (off)

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
        float32 ``[0, 1]`` image, cropped to the area every contributing frame covers.
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
            "local_measured": self.local_measured,
            "local_failed": self.local_failed,
            "stacks": {s.size: s.frames_per_ap for s in self.stacks},
            "seconds": {k: round(v, 3) for k, v in self.timings.items()},
        }


def _batch_bounds(per_frame: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive frames holding about PATCHES_PER_BATCH patches."""
    bounds = []
    start = 0
    count = 0
    for i, k in enumerate(per_frame):
        count += int(k)
        if count >= PATCHES_PER_BATCH or i + 1 - start >= FRAMES_PER_BATCH:
            bounds.append((start, i + 1))
            start, count = i + 1, 0
    if start < len(per_frame):
        bounds.append((start, len(per_frame)))
    return bounds


def stack_aps(
    frames: Sequence[np.ndarray],
    alignment: GlobalAlignment,
    reference: Reference,
    grid: APGrid,
    selection: Selection,
    params: LocalParams = LocalParams(),
    *,
    threads: int = 2,
    progress: Callable[[int, int], None] | None = None,
    drizzle: DrizzleParams | None = None,
) -> tuple[list[PatchSums | DrizzleSums], np.ndarray, int, int]:
    """Measure the local shifts of the selected frames and sum their shifted patches.

    Frames are read once each, in capture order (cheap for video files), and only if they
    are selected at one AP at least.

    Returns
    -------
    tuple
        ``(sums, used, measured, failed)``: one :class:`PatchSums` per stack size (in
        ``selection.counts`` order; :class:`~live_stack.drizzle.DrizzleSums` when
        ``drizzle`` asks for it), the indices of the frames that contributed, the
        number of (frame, AP) shifts measured, and how many were left out.
    """
    targets = make_ap_targets(reference.luminance, grid, params)
    channels = 1 if reference.image.ndim == 2 else 3
    sums = [make_sums(grid, channels, drizzle or DrizzleParams()) for _ in selection.counts]
    todo = selection.frames()
    used = np.zeros(len(frames), dtype=bool)
    # The chunks are added to the sums in capture order, whichever thread finishes
    # first, so that the result does not depend on the timing (floating-point sums
    # depend on their order). A chunk waits only for earlier chunks, which the pool has
    # already started (it takes them in order), and every chunk takes its turn even when
    # it failed: no deadlock.
    turn = threading.Condition()
    next_chunk = [0]
    tally = [0, 0]

    def work(item: tuple[int, list[tuple[int, np.ndarray]]]) -> None:
        index, chunk = item
        result = None
        try:
            result = measure_chunk(chunk)
        finally:
            with turn:
                turn.wait_for(lambda: next_chunk[0] == index)
                try:
                    if result is not None:
                        add_chunk(*result)
                finally:
                    next_chunk[0] += 1
                    turn.notify_all()

    def measure_chunk(chunk: list[tuple[int, np.ndarray]]):
        # cut every selected patch of the chunk's frames, then transform and measure
        # them in one batch (the transforms release the GIL; batching keeps the
        # per-call Python work small)
        cuts = []
        for f, frame in chunk:
            aps = np.flatnonzero(selection.rank[f] >= 0)
            centres = grid.centres[aps] + np.rint(alignment.shifts[f]).astype(np.intp)
            fits = inside(centres, grid.fft_size, frame.shape)
            cuts.append((f, aps[fits], frame_patches(frame, centres[fits], grid.fft_size)))
        measured = sum(len(aps) for _, aps, _ in cuts)
        if not measured:
            return None
        patches = np.concatenate([p for _, _, p in cuts])
        all_aps = np.concatenate([aps for _, aps, _ in cuts])
        spec, lum = patch_spectra(patches)
        r = correlate_spectra(lum, targets, index=all_aps, max_shift=grid.search)
        # an untrusted shift falls back (local.resolve): every patch is stacked
        dy, dx = np.empty(measured), np.empty(measured)
        fell = np.zeros(measured, dtype=bool)
        start = 0
        for _, aps, _ in cuts:
            part = slice(start, start + len(aps))
            dy[part], dx[part], fell[part] = resolve(r.dy[part], r.dx[part], r.strength[part],
                                                     aps, grid, params, snr=r.snr[part])
            start += len(aps)
        ok = np.ones(measured, dtype=bool)
        spectra = sums[0].prepare(all_aps[ok], patches[ok], dy, dx, spectra=spec[ok],
                                  overwrite=True)  # spec[ok] is a copy
        frame_of = np.concatenate([np.full(len(aps), f) for f, aps, _ in cuts])[ok]
        aps_ok = all_aps[ok]
        return measured, fell, frame_of, aps_ok, spectra, dy, dx

    def add_chunk(measured, fell, frame_of, aps_ok, spectra, dy, dx) -> None:
        tally[0] += measured
        tally[1] += int(fell.sum())
        for f in np.unique(frame_of):
            mine = frame_of == f
            used[f] = True
            ranks = selection.rank[f][aps_ok[mine]]
            for acc, count in zip(sums, selection.counts, strict=True):
                keep = np.flatnonzero(mine)[ranks < count]
                if len(keep):
                    acc.add(aps_ok[keep], spectra[keep], dy[keep], dx[keep])

    per_frame = (selection.rank[todo] >= 0).sum(axis=1) if len(todo) else np.zeros(0, int)
    bounds = _batch_bounds(per_frame)

    def chunks():
        for index, (start, stop) in enumerate(bounds):
            yield index, [(int(f), frames[int(f)]) for f in todo[start:stop]]

    run_in_order(work, chunks(), threads=threads,
                 progress=None if progress is None else
                 (lambda done, total: progress(bounds[done - 1][1], len(todo))),
                 total=len(bounds))
    return sums, np.flatnonzero(used), tally[0], tally[1]


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
    grid = lay_grid(reference.luminance, params.ap, box=reference.box)
    timings["grid"] = time.perf_counter() - t

    t = time.perf_counter()
    usable = int(alignment.ok.sum())
    counts = tuple(stack_count(size, usable) for size in params.stack_sizes)
    selection = select(ranking, alignment, grid, counts)
    timings["select"] = time.perf_counter() - t

    t = time.perf_counter()
    sums, used, measured, failed = stack_aps(
        frames, alignment, reference, grid, selection, params.local, threads=params.threads,
        progress=report("stack"), drizzle=params.drizzle)
    timings["stack"] = time.perf_counter() - t

    t = time.perf_counter()
    contributing = np.union1d(used, reference.frames)
    box = covered_box(alignment.shifts[contributing], alignment.shape)
    stacks = []
    for size, count, s in zip(params.stack_sizes, counts, sums, strict=True):
        image, ap_weight = crop_output(s.to_image(grid, reference.image, params.blend), box,
                                       params.drizzle)
        image, notes = finish(image, rgbalign=params.rgbalign, normalize_params=params.normalize,
                              sharpen_params=params.sharpen)
        stacks.append(StackImage(size=size, frames_per_ap=count, image=image, box=box,
                                 ap_weight=ap_weight, notes=notes))
    timings["blend"] = time.perf_counter() - t
    return PipelineResult(stacks=tuple(stacks), ranking=ranking, alignment=alignment,
                          reference=reference, grid=grid, selection=selection,
                          local_failed=failed, local_measured=measured, timings=timings,
                          frames=n)
