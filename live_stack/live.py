"""Live stacking: the offline pipeline's phases, driven one frame at a time.

:class:`LiveStacker` keeps a bounded buffer of the best frames of a rolling window and,
for every alignment point, the sum of the shifted patches of the best frames there.
Each frame that arrives is measured (quality cells, :mod:`live_stack.quality`), aligned
globally against a target frame (:mod:`live_stack.align`), and either admitted to the
buffer or dropped with its reason counted. An admitted frame's quality at every AP is
looked up once; where it ranks among the best ``N`` of the buffer, its local shift is
measured against the AP reference (:mod:`live_stack.local`) and its shifted patch is
added to that AP's sum (:mod:`live_stack.stack`). A frame that leaves the buffer (worse
than a newcomer, or out of the window) is subtracted from the sums it was in, and the
next best frame at each of those APs takes its place. :meth:`LiveStacker.snapshot`
blends the sums exactly as the offline pipeline does.

Heavy work is spread over later calls: when the AP grid is laid again (large drift, a
new AP size) or the stack is promoted to be the new AP reference, the pairs of frames
and APs to measure again are queued, and every call of :meth:`LiveStacker.add` or
:meth:`LiveStacker.add_batch` works off a bounded number of them: per frame for a new
grid; per call after a promotion (the pairs on the old reference are good meanwhile,
so a driver that falls behind and hands over bigger batches spends less on them per
frame, and catches up when idle). Until a new grid has caught up, snapshots come from
the old one.
Selection changes (a frame entering or leaving the best ``N`` at an AP) wait, by
default, until a snapshot needs them or a driver with nothing else to do calls
:meth:`LiveStacker.catch_up`: while frames pour in, most changes undo each other before
the snapshot (a frame enters an AP's best and is pushed out again) and cost nothing.
Only a frame leaving the buffer is taken out of the sums at once (its pixels go).
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from live_stack.align import (
    AlignParams,
    GlobalTarget,
    make_global_target,
    measure_shift,
    measure_shifts,
)
from live_stack.apgrid import APGrid, APParams, lay_grid
from live_stack.correlate import Shifts, correlate, correlate_spectra
from live_stack.dispersion import RGBAlignParams
from live_stack.drizzle import DrizzleParams, crop_output, downscale, make_sums, scale_points
from live_stack.finish import finish
from live_stack.frames import check_frame, luminance_u8_or_f32
from live_stack.local import (
    LocalParams,
    extract,
    inside,
    make_ap_targets,
    parse_stack_size,
    resolve,
)
from live_stack.normalize import NormalizeParams
from live_stack.parallel import split_run
from live_stack.quality import QualityMap, QualityParams, box_quality, quality_map
from live_stack.reference import covered_box, mean_aligned
from live_stack.sharpen import SharpenParams
from live_stack.stack import BlendParams, frame_patches, patch_spectra

R = TypeVar("R")

#: Reasons an arriving frame is not admitted.
DROP_REASONS = ("alignment", "quality")
#: Recent admitted frames looked at for drift and alignment strength.
RECENT = 16
#: Frames averaged for the background (where no AP is) of a snapshot, at most.
BACKGROUND_FRAMES = 16
#: Bins of the quality histogram in the statistics.
HIST_BINS = 20
#: A frame aligns "too weakly" below this share of the recent median strength.
WEAK_SHARE = 0.4
#: Frames that cannot enter the full buffer (quality at or below its worst, no window)
#: are dropped before they are aligned, except one in this many: those are aligned as
#: before, so that a change of target (frames that no longer align) is still noticed;
#: after one fails, every frame is aligned again until one succeeds.
GATE_SAMPLE = 4
#: (frame, AP) pairs transformed and measured in one batch: enough to spread over the
#: threads, few enough for the batch's arrays (26 KB per pair at 80 px) to stay small.
#: One batch of the 5000 pairs of a first snapshot spent half its time in page faults
#: and cache misses (its arrays took 126 MB each).
PAIRS_PER_BATCH = 256
#: The stack becomes the AP reference only when its sums hold at least this share of
#: the selected (frame, AP) pairs: before the first snapshot has put them in, the stack
#: is mostly the globally aligned background, no better than the reference it would
#: replace, and promoting it would only make every pair in the sums stale.
PROMOTE_FILLED = 0.5
#: Fewest frames, and fewest (frame, AP) patches, worth a thread of their own.
MIN_FRAMES_PER_THREAD = 2
MIN_PATCHES_PER_THREAD = 16


#: Largest ``buffer_size``; a ``stack_size`` count above it is refused as absurd.
MAX_BUFFER = 100_000


@dataclass(frozen=True)
class LiveParams:
    """Parameters of the live stacker (CLI/config prefix ``live_`` for its own fields)."""

    buffer_size: int = 200  # most frames kept (bounds memory: buffer_size raw frames)
    stack_size: str = "25%"  # frames stacked per AP: a count ("100") or a share of the buffer
    window_frames: int = 0  # keep only frames among the last M received (0: no limit)
    window_seconds: float = 0.0  # keep only frames captured in the last T seconds (0: no limit)
    warmup: int = 40  # frames collected before the first reference and AP grid
    reference_interval: int = 200  # the stack becomes the AP reference (at the next snapshot or
    # catch_up) after this many admitted frames, then after twice as many more... (0: never)
    work_budget: int = 32  # (frame, AP) pairs measured after a change: per frame while a new
    # grid is built, per add()/add_batch() call after a reference promotion
    sync_budget: int = 0  # selection changes applied to the AP sums per frame; the rest wait
    # for catch_up() (a driver's idle time) or the next snapshot, where changes that undid
    # each other meanwhile cost nothing (0: none per add, the cheapest under load)
    relay_drift: float = 0.15  # re-anchor when recent frames drift this share of the frame
    reset_after: int = 60  # consecutive frames that fail to align before starting over
    snapshot_interval: float = 1.0  # seconds between snapshots a driver should take
    threads: int = 2  # threads for the per-frame work: the calling one and threads - 1 more
    quality: QualityParams = field(default_factory=QualityParams)  # frame quality measure
    align: AlignParams = field(default_factory=AlignParams)  # global alignment
    ap: APParams = field(default_factory=APParams)  # AP grid
    local: LocalParams = field(default_factory=LocalParams)  # per-AP alignment
    blend: BlendParams = field(default_factory=BlendParams)  # blending
    drizzle: DrizzleParams = field(default_factory=DrizzleParams)  # drizzle / resampling
    rgbalign: RGBAlignParams = field(default_factory=RGBAlignParams)  # dispersion correction
    normalize: NormalizeParams = field(default_factory=NormalizeParams)  # output brightness
    sharpen: SharpenParams = field(default_factory=SharpenParams)  # output sharpening (off)

    def __post_init__(self) -> None:
        if not 2 <= self.buffer_size <= MAX_BUFFER:
            raise ValueError(f"buffer_size must be 2..{MAX_BUFFER}, got {self.buffer_size}")
        count, pct = parse_stack_size(self.stack_size)
        if not pct and count > MAX_BUFFER:
            raise ValueError(f"stack_size: a count must be at most {MAX_BUFFER} (the largest "
                             f"buffer_size), got {self.stack_size}")
        if self.window_frames < 0:
            raise ValueError(f"window_frames must be >= 0, got {self.window_frames}")
        if not self.window_seconds >= 0:  # NaN too
            raise ValueError(f"window_seconds must be >= 0, got {self.window_seconds}")
        if not 1 <= self.warmup <= self.buffer_size:
            raise ValueError(f"warmup must be 1..buffer_size, got {self.warmup}")
        if self.reference_interval < 0:
            raise ValueError(f"reference_interval must be >= 0, got {self.reference_interval}")
        if self.work_budget < 1:
            raise ValueError(f"work_budget must be >= 1, got {self.work_budget}")
        if self.sync_budget < 0:
            raise ValueError(f"sync_budget must be >= 0, got {self.sync_budget}")
        if not 0.01 <= self.relay_drift <= 1.0:
            raise ValueError(f"relay_drift must be in [0.01, 1], got {self.relay_drift}")
        if self.reset_after < 1:
            raise ValueError(f"reset_after must be >= 1, got {self.reset_after}")
        if self.snapshot_interval <= 0:
            raise ValueError(f"snapshot_interval must be > 0, got {self.snapshot_interval}")
        if not 1 <= self.threads <= 64:
            raise ValueError(f"threads must be 1..64, got {self.threads}")

    def per_ap(self, fill: int) -> int:
        """Frames stacked per AP when the buffer holds ``fill`` frames."""
        value, pct = parse_stack_size(self.stack_size)
        n = int(round(value / 100.0 * fill)) if pct else int(value)
        return max(1, min(max(fill, 1), n))


#: Parameter names :meth:`LiveStacker.set_param` accepts: the live fields, and the
#: phases' fields as ``PREFIX_FIELD`` (``ap_size``, ``quality_method``, ...).
PHASE_PREFIXES = ("quality", "align", "ap", "local", "blend", "drizzle", "rgbalign", "normalize",
                  "sharpen")


@dataclass(frozen=True)
class AddResult:
    """What :meth:`LiveStacker.add` did with a frame."""

    admitted: bool  # the frame entered the buffer
    reason: str | None  # why not: one of DROP_REASONS, or "warmup" while collecting
    quality: float  # the frame's global quality (detail energy)


@dataclass(frozen=True)
class Snapshot:
    """A blended stack and the stacker's statistics.

    Attributes
    ----------
    image : numpy.ndarray
        float32 ``[0, 1]`` ``(H, W)`` or ``(H, W, 3)``, cropped to the covered area
        (``drizzle.scale`` times the size of ``box`` with drizzle or resampling).
    stats : dict
        msgpack-able statistics (see :meth:`LiveStacker.stats`); ``finish`` says what
        the finishing steps did, when one is enabled.
    ap_centres : numpy.ndarray
        int ``(m, 2)`` ``(y, x)`` of the APs in ``image`` coordinates.
    ap_size : int
        AP box side in ``image`` pixels.
    box : tuple
        ``(y0, x0, y1, x1)`` of the crop in the target frame's coordinates.
    """

    image: np.ndarray
    stats: dict[str, Any]
    ap_centres: np.ndarray
    ap_size: int
    box: tuple[int, int, int, int]


class _APState:
    """The per-AP accumulators of one grid.

    ``sel`` is the selection wanted (the best ``n`` buffer frames at each AP) and is
    kept up to date on every frame, which is cheap bookkeeping. ``contrib`` marks the
    (frame, AP) pairs whose patches are in ``sums``; :meth:`LiveStacker._sync` brings
    the sums in line with the selection, applying only the net changes, when a snapshot
    is taken. At camera rates most selection changes are transient (a frame enters the
    best ``n`` at an AP and is pushed out again before the next snapshot) and so cost
    nothing. A measured shift is kept per pair (``measured``, ``okm``, ``dy``, ``dx``)
    and is not measured again while the reference stays the same.

    ``offset`` is where the current AP targets sit relative to the grid's first
    reference, per AP: it is added to every shift measured against them, so that pairs
    measured before and after a reference promotion are placed alike and may be summed
    together while the older ones are measured again.
    """

    def __init__(self, grid: APGrid, reference: np.ndarray, slots: int, channels: int,
                 local: LocalParams, drizzle: DrizzleParams) -> None:
        m = len(grid)
        self.grid = grid
        self.targets = make_ap_targets(reference, grid, local)
        self.offset = np.zeros((m, 2), dtype=np.float32)
        self.sums = make_sums(grid, channels, drizzle)
        self.q = np.full((slots, m), -np.inf, dtype=np.float32)
        self.sel = np.zeros((slots, m), dtype=bool)
        self.contrib = np.zeros((slots, m), dtype=bool)
        self.measured = np.zeros((slots, m), dtype=bool)
        self.okm = np.zeros((slots, m), dtype=bool)  # measured and trustworthy
        self.stale = np.zeros((slots, m), dtype=bool)  # in sums, measured on an old reference
        self.dy = np.zeros((slots, m), dtype=np.float32)
        self.dx = np.zeros((slots, m), dtype=np.float32)
        self.n = 0  # frames per AP the selection is kept at
        # This grid's coordinates minus the stacker's current ones (non-zero for an old
        # grid that keeps serving snapshots after a re-anchor).
        self.origin = np.zeros(2)

    def wanted(self) -> np.ndarray:
        """Pairs selected but not in the sums, and not known to fail."""
        return self.sel & ~self.contrib & ~(self.measured & ~self.okm)

    def pending(self) -> int:
        """Pairs whose state in the sums differs from the selection."""
        return int(self.wanted().sum() + (self.contrib & ~self.sel).sum() + self.stale.sum())

    def clear(self, slot: int) -> None:
        """Forget a slot's rows (its patches must be out of the sums already)."""
        for arr in (self.sel, self.contrib, self.measured, self.okm, self.stale):
            arr[slot] = False
        self.q[slot] = -np.inf


class LiveStacker:
    """Multi-point lucky-imaging stack that sharpens while frames arrive.

    Parameters
    ----------
    params : LiveParams
        The parameters; see :meth:`set_param` to change them while running.
    """

    def __init__(self, params: LiveParams = LiveParams()) -> None:
        if not isinstance(params, LiveParams):
            raise ValueError(f"params must be LiveParams, got {type(params).__name__}")
        self._params = params
        self._pool: ThreadPoolExecutor | None = None
        self.reset()

    def close(self) -> None:
        """Stop the worker threads (the stacker still works, in the calling thread only,
        until it next needs them)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> LiveStacker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _split(self, work: Callable[[int, int], R], n: int, min_items: int) -> list[R]:
        """:func:`~live_stack.parallel.split_run` on this stacker's threads."""
        threads = self._params.threads
        if threads > 1 and self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=threads - 1,
                                            thread_name_prefix="live-stack")
        return split_run(work, n, self._pool, parts=threads, min_items=min_items)

    # ------------------------------------------------------------------ state
    @property
    def params(self) -> LiveParams:
        """The current parameters."""
        return self._params

    def reset(self) -> None:
        """Forget everything; the next frame starts a new stack (and fixes the frame size)."""
        k = self._params.buffer_size
        self._shape: tuple[int, ...] | None = None
        self._dtype: np.dtype | None = None
        self._frames: list[np.ndarray | None] = [None] * k
        self._gq = np.full(k, -np.inf)
        self._shift = np.zeros((k, 2))
        self._seq = np.full(k, -1, dtype=np.int64)
        self._time = np.zeros(k)
        self._cells: np.ndarray | None = None
        self._scale = 1
        self._target: GlobalTarget | None = None
        self._state: _APState | None = None  # serves snapshots
        self._next: _APState | None = None  # being built after a grid change
        self._warm: list[tuple[np.ndarray, float, np.ndarray, float]] = []
        self._recent: deque[tuple[int, float]] = deque(maxlen=RECENT)  # (slot, strength)
        self._fails = 0
        self._gated = 0  # frames the quality gate saw (every GATE_SAMPLE-th is aligned)
        self._unaligned = 0  # frames it dropped without aligning them
        self._seen = 0
        self._admitted = 0
        self._since_reference = 0
        self._best_quality = 0.0
        self._dropped: Counter[str] = Counter()
        self._evicted: Counter[str] = Counter()
        self._events: Counter[str] = Counter()
        self._timing: Counter[str] = Counter()
        self._local_failed = 0
        self._local_measured = 0

    def _restart(self) -> None:
        """Start a new stack (new target) but keep the running counters."""
        kept = (self._seen, self._admitted, self._dropped, self._evicted, self._events,
                self._timing, self._local_failed, self._local_measured, self._unaligned)
        self.reset()
        (self._seen, self._admitted, self._dropped, self._evicted, self._events,
         self._timing, self._local_failed, self._local_measured, self._unaligned) = kept

    def set_param(self, name: str, value: Any) -> LiveParams:
        """Change one parameter while running.

        ``name`` is a live field (``buffer_size``, ``stack_size``, ``window_seconds``, ...)
        or a phase field as ``PREFIX_FIELD`` (``ap_size``, ``local_outlier``, ...).
        Changing the buffer size, the AP grid or the measures starts the stack over;
        changing the stack size or the window re-selects from the frames in the buffer
        at once (the next snapshot blends the new selection, no new frame needed).

        Returns
        -------
        LiveParams
            The new parameters.

        Raises
        ------
        ValueError
            Unknown name or bad value, naming it; the parameters are left as they were.
        """
        p = self._params
        live_fields = {f.name for f in dataclasses.fields(LiveParams)} - set(PHASE_PREFIXES)
        if name in live_fields:
            current = getattr(p, name)
            new = dataclasses.replace(p, **{name: _coerce(name, value, current)})
        else:
            prefix, _, sub = name.partition("_")
            if prefix not in PHASE_PREFIXES or not sub:
                raise ValueError(f"unknown parameter {name!r}")
            phase = getattr(p, prefix)
            if sub not in {f.name for f in dataclasses.fields(phase)}:
                raise ValueError(f"unknown parameter {name!r}")
            try:
                new_phase = dataclasses.replace(
                    phase, **{sub: _coerce(name, value, getattr(phase, sub))})
            except ValueError as exc:
                raise ValueError(str(exc).replace(f"{prefix}_{sub}", name)) from None
            new = dataclasses.replace(p, **{prefix: new_phase})
        self._params = new
        if name == "threads":
            self.close()  # the next batch starts a pool of the new size
        restart = name in ("buffer_size", "warmup") or name.startswith(
            ("ap_", "quality_", "align_", "local_", "drizzle_"))
        if restart:
            self._restart()
        elif name == "stack_size":
            for state in self._states():
                self._rebalance(state)
        elif name in ("window_frames", "window_seconds"):
            filled = self._filled()
            if len(filled):  # the window ends at the newest frame in the buffer
                self._evict_window(float(self._time[filled].max()))
        return new

    # ------------------------------------------------------------------ ingest
    def add(self, frame: np.ndarray, timestamp: float | None = None) -> AddResult:
        """Take one frame.

        Parameters
        ----------
        frame : numpy.ndarray
            ``(H, W)`` or ``(H, W, 3)`` uint8, uint16 or float32 frame.
        timestamp : float, optional
            Capture time, Unix seconds (for the time window); now if not given.

        Returns
        -------
        AddResult

        Raises
        ------
        ValueError
            If the frame is malformed or not the size and type of the frames before it
            (call :meth:`reset` to start over with another size).
        """
        return self.add_batch([frame], None if timestamp is None else [timestamp])[0]

    def add_batch(
        self, frames: Sequence[np.ndarray], timestamps: Sequence[float] | None = None
    ) -> list[AddResult]:
        """Take several frames at once (cheaper per frame than :meth:`add`).

        The frames are measured and aligned together, then admitted one by one in
        order, exactly as :meth:`add` would. All frames are checked before any is used:
        if one is malformed or of the wrong size, ``ValueError`` is raised (naming its
        position) and none of them is taken.

        Parameters
        ----------
        frames : sequence of numpy.ndarray
            The frames, in capture order.
        timestamps : sequence of float, optional
            Their capture times (Unix seconds); now if not given.

        Returns
        -------
        list of AddResult
        """
        frames = [check_frame(f, name=f"frames[{i}]") for i, f in enumerate(frames)]
        if timestamps is not None and len(timestamps) != len(frames):
            raise ValueError(f"timestamps has {len(timestamps)} entries for {len(frames)} frames")
        shape = self._shape or frames[0].shape if frames else None
        dtype = self._dtype or frames[0].dtype if frames else None
        for i, f in enumerate(frames):
            if f.shape != shape or f.dtype != dtype:
                raise ValueError(f"frames[{i}] is {_describe(f.shape, f.dtype)}, the stack is "
                                 f"{_describe(shape, dtype)}")
        if not frames:
            return []
        self._shape, self._dtype = shape, dtype
        now = time.time()
        times = [now] * len(frames) if timestamps is None else [float(t) for t in timestamps]
        t0 = time.perf_counter()
        qp = self._params.quality
        maps = [m for part in self._split(
            lambda a, b: [quality_map(f, qp) for f in frames[a:b]], len(frames),
            MIN_FRAMES_PER_THREAD) for m in part]
        t1 = time.perf_counter()
        self._timing["quality"] += t1 - t0
        results: list[AddResult | None] = []
        pending: list[int] = []
        for i, frame in enumerate(frames):
            if self._target is None:
                results.append(self._warm_up(frame, maps[i], times[i]))
            else:
                results.append(None)
                pending.append(i)
        if pending:
            self._admit_pending(frames, maps, times, pending, results)
            t1 = time.perf_counter()
            self._work(len(pending))
            self._timing["work"] += time.perf_counter() - t1
        return results  # type: ignore[return-value]

    def _admit_pending(self, frames: list[np.ndarray], maps: list[QualityMap],
                       times: list[float], pending: list[int],
                       results: list[AddResult | None]) -> None:
        """Align the batch's frames ``pending`` (those after the warm-up), then admit or
        drop them one by one, in order, filling in ``results``."""
        t1 = time.perf_counter()
        target = self._target
        assert target is not None
        plan = self._plan_gate([maps[i].quality for i in pending])
        align = [i for i, go in zip(pending, plan, strict=True) if go]
        found = self._measure_shifts([frames[i] for i in align], target)
        shifts = dict(zip(align, found, strict=True))
        self._timing["align"] += time.perf_counter() - t1
        for i in pending:
            if self._target is not target:  # a reset or re-anchor happened meanwhile
                if self._target is None:
                    results[i] = self._warm_up(frames[i], maps[i], times[i])
                    continue
                shifts.pop(i, None)  # measured against the old target
            if self._gate(maps[i].quality):
                results[i] = self._drop_unaligned(maps[i])
                continue
            if i not in shifts:
                t2 = time.perf_counter()
                shifts[i] = measure_shifts([frames[i]], self._target)[0]
                self._timing["align"] += time.perf_counter() - t2
            results[i] = self._admit(frames[i], maps[i], shifts[i], times[i])

    def _measure_shifts(self, frames: list[np.ndarray], target: GlobalTarget) -> np.ndarray:
        """:func:`~live_stack.align.measure_shifts` of frames, on this stacker's threads."""
        if not frames:
            return np.zeros((0, 3))
        parts = self._split(lambda a, b: measure_shifts(frames[a:b], target), len(frames),
                            MIN_FRAMES_PER_THREAD)
        return np.concatenate(parts)

    def _gate_open(self) -> bool:
        """Whether every frame must be aligned: a window is set (frames leave the buffer
        by age), frames are failing to align, or the buffer has room."""
        p = self._params
        return bool(p.window_frames or p.window_seconds or self._fails
                    or (self._seq < 0).any())

    def _plan_gate(self, qualities: list[float]) -> list[bool]:
        """Which of a batch's frames to align: what :meth:`_gate` will decide, foreseen
        from the state before the batch (if the state changes meanwhile, a frame may be
        aligned in vain or on its own)."""
        if self._gate_open():
            return [True] * len(qualities)
        worst = float(self._gq.min())
        count = self._gated
        plan = []
        for q in qualities:
            drop, count = _gate_step(q, worst, count)
            plan.append(not drop)
        return plan

    def _gate(self, quality: float) -> bool:
        """True: drop this frame unaligned, it cannot enter the buffer (see GATE_SAMPLE)."""
        if self._gate_open():
            return False
        drop, self._gated = _gate_step(quality, float(self._gq.min()), self._gated)
        return drop

    def _see(self, qmap: QualityMap) -> float:
        """Count an arriving frame; its global quality."""
        self._seen += 1
        quality = qmap.quality
        self._best_quality = max(self._best_quality, quality)
        return quality

    def _drop_for_quality(self, quality: float, since: float) -> AddResult:
        """Drop a frame that cannot enter the buffer (its admission began at ``since``)."""
        self._dropped["quality"] += 1
        self._timing["admit"] += time.perf_counter() - since
        return AddResult(admitted=False, reason="quality", quality=quality)

    def _drop_unaligned(self, qmap: QualityMap) -> AddResult:
        """Drop a frame the gate stopped, as :meth:`_admit` drops one for its quality."""
        t = time.perf_counter()
        self._unaligned += 1
        return self._drop_for_quality(self._see(qmap), t)

    def _warm_up(self, frame: np.ndarray, qmap: QualityMap, now: float) -> AddResult:
        """Collect a frame before the first reference; start when enough are there."""
        quality = self._see(qmap)
        self._warm.append((np.array(frame, copy=True), quality, qmap.cells, now))
        if len(self._warm) >= self._params.warmup:
            t = time.perf_counter()
            self._start()
            self._timing["start"] += time.perf_counter() - t
        return AddResult(admitted=False, reason="warmup", quality=quality)

    def _admit(self, frame: np.ndarray, qmap: QualityMap, measured: np.ndarray,
               now: float) -> AddResult:
        """Admit an aligned frame to the buffer, or drop it with its reason."""
        quality = self._see(qmap)
        dy, dx, strength = (float(v) for v in measured)
        t2 = time.perf_counter()
        self._evict_window(now)
        if self._weak(strength):
            self._fails += 1
            self._dropped["alignment"] += 1
            if self._fails >= self._params.reset_after:
                self._events["scene_reset"] += 1
                self._restart()
            return AddResult(admitted=False, reason="alignment", quality=quality)
        self._fails = 0
        slot = self._free_slot(quality)
        if slot is None:
            return self._drop_for_quality(quality, t2)
        self._store(slot, frame, quality, qmap.cells, np.array([dy, dx]), now)
        self._recent.append((slot, strength))
        self._admitted += 1
        self._since_reference += 1
        for state in self._states():
            self._enter(state, slot)
        self._timing["admit"] += time.perf_counter() - t2
        self._check_drift()
        return AddResult(admitted=True, reason=None, quality=quality)

    # ------------------------------------------------------------------ start-up
    def _start(self) -> None:
        """Warm-up done: target, first reference and grid from the collected frames."""
        warm = self._warm
        self._warm = []
        best = int(np.argmax([w[1] for w in warm]))
        self._target = make_global_target(warm[best][0], self._params.align)
        self._cells = np.zeros((self._params.buffer_size,) + warm[0][2].shape, np.float32)
        self._scale = self._params.quality.downsample * self._params.quality.cell
        order = np.argsort([-w[1] for w in warm])
        for i in order:
            frame, quality, cells, now = warm[int(i)]
            dy, dx, strength = measure_shift(frame, self._target)
            if self._weak(strength):
                self._dropped["alignment"] += 1
                continue
            slot = self._free_slot(quality)
            if slot is None:
                self._dropped["quality"] += 1
                continue
            self._store(slot, frame, quality, cells, np.array([dy, dx]), now)
            self._recent.append((slot, strength))
            self._admitted += 1
        self._relay(synchronous=True)

    def _relay(self, *, synchronous: bool) -> None:
        """Lay a new AP grid on a fresh reference of the buffer's best frames."""
        slots = self._filled()
        if len(slots) == 0:
            return
        best = slots[np.argsort(-self._gq[slots])]
        near = [s for s in best if np.all(np.abs(self._shift[s]) < self._max_offset())]
        use = np.array((near or list(best))[: max(3, min(BACKGROUND_FRAMES, len(best) // 2))])
        ref = mean_aligned((self._frames[s] for s in use), self._shift[use])
        box = covered_box(self._shift[use], self._shape[:2])
        lum = ref if ref.ndim == 2 else luminance_u8_or_f32(ref)
        grid = lay_grid(lum, self._params.ap, box=box)
        state = _APState(grid, lum, self._params.buffer_size, self._channels(),
                         self._params.local, self._params.drizzle)
        self._events["grid"] += 1
        for s in slots:
            self._ap_quality(state, s)
        state.n = self._params.per_ap(len(slots))
        _select_all(state)
        if synchronous or self._state is None:
            self._sync(state)
            self._state, self._next = state, None
        else:
            self._next = state

    # ------------------------------------------------------------------ buffer
    def _states(self) -> list[_APState]:
        return [s for s in (self._state, self._next) if s is not None]

    def _filled(self) -> np.ndarray:
        return np.flatnonzero(self._seq >= 0)

    def _channels(self) -> int:
        return 3 if len(self._shape) == 3 else 1

    def _max_offset(self) -> float:
        return self._params.relay_drift * min(self._shape[:2])

    def _weak(self, strength: float) -> bool:
        if strength < self._params.align.min_strength:
            return True
        if len(self._recent) >= RECENT // 2:
            typical = float(np.median([s for _, s in self._recent]))
            return strength < WEAK_SHARE * typical
        return False

    def _free_slot(self, quality: float) -> int | None:
        """A slot for a frame of this quality: an empty one, or the worst frame's."""
        empty = np.flatnonzero(self._seq < 0)
        if len(empty):
            return int(empty[0])
        worst = int(np.argmin(self._gq))
        if quality <= self._gq[worst]:
            return None
        self._evicted["quality"] += 1
        self._remove(worst)
        return worst

    def _store(self, slot: int, frame: np.ndarray, quality: float, cells: np.ndarray,
               shift: np.ndarray, now: float) -> None:
        self._frames[slot] = np.array(frame, copy=True)
        self._gq[slot] = quality
        self._shift[slot] = shift
        self._seq[slot] = self._seen
        self._time[slot] = now
        self._cells[slot] = cells

    def _remove(self, slot: int) -> None:
        for state in self._states():
            self._leave(state, slot)
        self._frames[slot] = None
        self._gq[slot] = -np.inf
        self._seq[slot] = -1

    def _evict_window(self, now: float) -> None:
        p = self._params
        filled = self._filled()
        if not len(filled):
            return
        old = np.zeros(len(filled), dtype=bool)
        if p.window_frames:
            old |= self._seq[filled] <= self._seen - p.window_frames
        if p.window_seconds:
            old |= self._time[filled] < now - p.window_seconds
        for s in filled[old]:
            self._evicted["window"] += 1
            self._remove(int(s))

    # ------------------------------------------------------------------ per-AP
    def _shift_in(self, state: _APState, slot: int) -> np.ndarray:
        """The global shift of the frame in ``slot``, in the coordinates of ``state``."""
        return self._shift[slot] + state.origin

    def _centres(self, state: _APState, slot: int, aps: np.ndarray | None = None) -> np.ndarray:
        """Where the patches of the frame in ``slot`` are cut for ``aps`` (default: all):
        the APs' centres moved by the frame's whole-pixel global shift."""
        centres = state.grid.centres if aps is None else state.grid.centres[aps]
        return centres + np.rint(self._shift_in(state, slot)).astype(np.intp)

    def _ap_quality(self, state: _APState, slot: int) -> None:
        q = box_quality(self._cells[slot][None], self._scale, state.grid.boxes,
                        self._shift_in(state, slot)[None])[0]
        fits = inside(self._centres(state, slot), state.grid.fft_size, self._shape)
        state.q[slot] = np.where(fits, q, -np.inf)

    def _enter(self, state: _APState, slot: int) -> None:
        """A new frame in ``slot``: select it where it ranks among the best (bookkeeping)."""
        self._ap_quality(state, slot)
        self._rebalance(state)
        q = state.q[slot]
        nsel = state.sel.sum(axis=0)
        take = (nsel < state.n) & np.isfinite(q)
        full = ~take & np.isfinite(q)
        if full.any():
            masked = np.where(state.sel, state.q, np.inf)
            worst = masked.argmin(axis=0)
            cols = np.arange(len(q))
            swap = full & (q > masked[worst, cols])
            state.sel[worst[swap], cols[swap]] = False
            take |= swap
        state.sel[slot, take] = True

    def _leave(self, state: _APState, slot: int) -> None:
        """The frame in ``slot`` goes: take its patches out, promote the next best."""
        aps = np.flatnonzero(state.sel[slot])
        self._subtract(state, [(slot, np.flatnonzero(state.contrib[slot]))])
        state.clear(slot)
        if len(aps):
            self._fill_up(state, aps)

    def _fill_up(self, state: _APState, aps: np.ndarray) -> None:
        """Select the best unselected frame at each AP with fewer than ``n`` (bookkeeping)."""
        need = aps[state.sel[:, aps].sum(axis=0) < state.n]
        while len(need):
            cand = np.where(state.sel[:, need], -np.inf, state.q[:, need])
            best = cand.argmax(axis=0)
            ok = np.isfinite(cand[best, np.arange(len(need))])
            state.sel[best[ok], need[ok]] = True
            need = need[ok]
            need = need[state.sel[:, need].sum(axis=0) < state.n]

    def _rebalance(self, state: _APState) -> None:
        """Keep ``n`` in step with the buffer fill (a share of the buffer grows with it)."""
        n = self._params.per_ap(len(self._filled()))
        if n == state.n:
            return
        grow = n > state.n
        state.n = n
        if grow:
            self._fill_up(state, np.arange(len(state.grid)))
            return
        nsel = state.sel.sum(axis=0)
        for a in np.flatnonzero(nsel > n):
            col = np.where(state.sel[:, a], state.q[:, a], np.inf)
            state.sel[np.argsort(col)[: nsel[a] - n], a] = False

    def _subtract(self, state: _APState, groups: list[tuple[int, np.ndarray]]) -> None:
        """Take ``(slot, aps)`` pairs that are in the sums out of them, a batch of about
        :data:`PAIRS_PER_BATCH` pairs at a time."""
        for batch in _batches([(slot, aps) for slot, aps in groups if len(aps)]):
            self._subtract_batch(state, batch)

    def _subtract_batch(self, state: _APState, groups: list[tuple[int, np.ndarray]]) -> None:
        patches = np.concatenate([
            frame_patches(self._frames[slot], self._centres(state, slot, aps),
                          state.grid.fft_size)
            for slot, aps in groups])
        pair_slot = np.concatenate([np.full(len(aps), slot) for slot, aps in groups])
        pair_aps = np.concatenate([aps for _, aps in groups])
        self._take_out(state, pair_slot, pair_aps, patches, state.dy[pair_slot, pair_aps],
                       state.dx[pair_slot, pair_aps])

    def _take_out(self, state: _APState, pair_slot: np.ndarray, pair_aps: np.ndarray,
                  patches: np.ndarray, dy: np.ndarray, dx: np.ndarray,
                  spec: np.ndarray | None = None) -> None:
        """Subtract pairs from the sums, given their patches, the shifts they were added
        with and (if at hand) the patches' transforms (overwritten)."""
        spectra = _concat(self._split(
            lambda a, b: state.sums.prepare(
                pair_aps[a:b], patches[a:b], dy[a:b], dx[a:b],
                spectra=None if spec is None else spec[a:b], overwrite=True),
            len(pair_aps), MIN_PATCHES_PER_THREAD))
        for slot, a, b in _runs(pair_slot):
            aps = pair_aps[a:b]
            state.sums.add(aps, spectra[a:b], dy[a:b], dx[a:b], sign=-1)
            state.contrib[slot, aps] = False
            state.stale[slot, aps] = False

    def _add(self, state: _APState, groups: list[tuple[int, np.ndarray]]) -> None:
        """Measure (where not yet measured) and add ``(slot, aps)`` pairs to the sums,
        a batch of about :data:`PAIRS_PER_BATCH` pairs at a time."""
        for batch in _batches(groups):
            self._add_batch(state, batch)

    def _add_batch(self, state: _APState, groups: list[tuple[int, np.ndarray]]) -> None:
        """Measure (where not yet measured) and add ``(slot, aps)`` pairs to the sums.

        Every patch is transformed once; the transform serves both the measurement and
        the stacking. A pair already in the sums (a stale one, measured again on a new
        reference) is replaced: its old shifted spectrum, made from the same transform,
        is taken out first.
        """
        grid = state.grid
        cuts = []
        for slot, aps in groups:
            aps = aps[~(state.measured[slot, aps] & ~state.okm[slot, aps])]
            centres = self._centres(state, slot, aps)
            fits = inside(centres, grid.fft_size, self._shape)
            # patches that left the frame (after a re-anchor) count as failed
            state.measured[slot, aps[~fits]] = True
            state.okm[slot, aps[~fits]] = False
            if fits.any():
                cuts.append((slot, aps[fits], centres[fits]))
        if not cuts:
            return
        patches = _concat([frame_patches(self._frames[slot], centres, grid.fft_size)
                           for slot, _, centres in cuts])
        pair_aps = np.concatenate([aps for _, aps, _ in cuts])
        pair_slot = np.concatenate([np.full(len(aps), slot) for slot, aps, _ in cuts])
        new = ~state.measured[pair_slot, pair_aps]
        targets = state.targets

        def transform(a: int, b: int) -> tuple[np.ndarray, Shifts | None]:
            """Spectra of patches a..b-1, and the shifts of the new ones among them."""
            spec, lum = patch_spectra(patches[a:b])
            fresh = new[a:b]
            if not fresh.any():
                return spec, None
            return spec, correlate_spectra(_pick(lum, fresh), targets,
                                           index=_pick(pair_aps[a:b], fresh),
                                           max_shift=grid.search)

        was_in = state.contrib[pair_slot, pair_aps]
        if was_in.any():
            old_dy = state.dy[pair_slot[was_in], pair_aps[was_in]]
            old_dx = state.dx[pair_slot[was_in], pair_aps[was_in]]
        parts = self._split(transform, len(patches), MIN_PATCHES_PER_THREAD)
        spec = _concat([p[0] for p in parts])
        if was_in.any():
            self._take_out(state, pair_slot[was_in], pair_aps[was_in], patches[was_in],
                           old_dy, old_dx, spec[was_in])
        found = [p[1] for p in parts if p[1] is not None]
        if found:
            r = Shifts(dy=_concat([f.dy for f in found]), dx=_concat([f.dx for f in found]),
                       strength=_concat([f.strength for f in found]),
                       snr=_concat([f.snr for f in found]))
            where = np.flatnonzero(new)
            for slot, a, b in _runs(pair_slot[where]):
                aps = pair_aps[where[a:b]]
                # an untrusted shift falls back (local.resolve): every pair is stacked
                dy, dx, fell = resolve(r.dy[a:b], r.dx[a:b], r.strength[a:b], aps, grid,
                                       self._params.local, snr=r.snr[a:b])
                state.measured[slot, aps] = True
                state.okm[slot, aps] = True
                state.dy[slot, aps] = dy + state.offset[aps, 0]
                state.dx[slot, aps] = dx + state.offset[aps, 1]
                self._local_measured += len(aps)
                self._local_failed += int(fell.sum())
        use = state.okm[pair_slot, pair_aps]
        if not use.any():
            return
        # from here on only the pairs that are used; ``spec`` is this call's own array,
        # so the shifted spectra may take its place
        pair_slot, pair_aps = _pick(pair_slot, use), _pick(pair_aps, use)
        patches, spec = _pick(patches, use), _pick(spec, use)
        dy = state.dy[pair_slot, pair_aps]
        dx = state.dx[pair_slot, pair_aps]
        spectra = _concat(self._split(
            lambda a, b: state.sums.prepare(pair_aps[a:b], patches[a:b], dy[a:b], dx[a:b],
                                            spectra=spec[a:b], overwrite=True),
            len(pair_aps), MIN_PATCHES_PER_THREAD))
        for slot, a, b in _runs(pair_slot):
            aps = pair_aps[a:b]
            state.sums.add(aps, spectra[a:b], dy[a:b], dx[a:b])
            state.contrib[slot, aps] = True

    def _sync(self, state: _APState, budget: int | None = None, *,
              restale: bool = True) -> None:
        """Apply the net selection changes (and stale re-measurements) to the sums.

        Three steps, in order: pairs measured on an old reference are measured again
        (unless ``restale`` is false); pairs no longer selected are taken out; pairs
        newly selected are put in. With a ``budget``, at most that many pairs are worked
        on.
        """
        left = [np.inf if budget is None else int(budget)]
        stale = _take(state.stale, left) if restale else []
        if stale:
            # no longer selected: out; still selected: measured again and replaced in
            # the sums, from one cut and one transform of each patch (see _add)
            self._subtract(state, [(slot, aps[~state.sel[slot, aps]]) for slot, aps in stale])
            again = [(slot, aps[state.sel[slot, aps]]) for slot, aps in stale]
            for slot, aps in again:
                state.measured[slot, aps] = False
            self._add(state, again)
        self._subtract(state, _take(state.contrib & ~state.sel, left))
        self._add(state, _take(state.wanted(), left))

    def _work(self, frames: int) -> None:
        """Spend the budget of a call that took ``frames`` frames: on a grid being built
        (``work_budget`` pairs per frame: the old grid is drifting out of the frame), else
        on stale pairs (``work_budget`` per call: they are good meanwhile, see
        ``_APState.offset``), else on bringing the sums in line with the selection
        (``sync_budget`` per frame)."""
        budget = self._params.work_budget
        if self._next is not None:
            self._sync(self._next, budget * frames)
            if not self._next.pending():
                self._state, self._next = self._next, None
        elif self._state is not None and self._state.stale.any():
            self._sync(self._state, budget)
        elif self._state is not None and self._params.sync_budget:
            # a little of the net selection changes now, so that snapshots stay quick;
            # the rest at the snapshot
            self._sync(self._state, self._params.sync_budget * frames)

    def _check_drift(self) -> None:
        """Re-anchor on a recent frame when the object has drifted far from the target."""
        if self._next is not None or len(self._recent) < RECENT:
            return
        recent = [s for s, _ in self._recent if self._seq[s] >= 0]
        if len(recent) < RECENT // 2:
            return
        drift = np.median(self._shift[recent], axis=0)
        if np.hypot(*drift) < self._max_offset():
            return
        best = max(recent, key=lambda s: self._gq[s])
        anchor = self._shift[best].copy()
        self._target = make_global_target(self._frames[best], self._params.align)
        filled = self._filled()
        self._shift[filled] -= anchor
        for state in self._states():
            state.origin += anchor
        self._events["reanchor"] += 1
        self._recent.clear()
        self._relay(synchronous=False)

    def _maybe_promote_reference(self) -> None:
        """After ``reference_interval`` admitted frames, then twice as many, and so on, the
        stack becomes the AP reference (the first promotions matter; later ones would
        only cost work).

        Called by :meth:`snapshot` and :meth:`catch_up` before they apply the waiting
        selection changes, so that those pairs are measured once, against the new
        reference; while the sums hold less than ``PROMOTE_FILLED`` of the selection,
        it waits, and :meth:`snapshot` calls it again after its sync. The pairs already
        in the sums are measured again, a bounded number per call (:meth:`_work`);
        shifts cached for pairs not in the sums are forgotten.
        """
        every = self._params.reference_interval * 2 ** self._events["reference"]
        state = self._state
        if not every or self._since_reference < every or state is None or self._next:
            return
        if state.stale.any():
            return
        if (state.contrib & state.sel).sum() < PROMOTE_FILLED * state.sel.sum():
            return
        self._since_reference = 0
        image = self._blend(state)
        if image is None:
            return
        lum = image if image.ndim == 2 else luminance_u8_or_f32(image)
        grid, local = state.grid, self._params.local
        targets = make_ap_targets(lum, grid, local)
        # where the new reference sits against the current targets, AP by AP; an AP
        # where that is not measured reliably keeps its current target
        aps = np.arange(len(grid))
        found = correlate(extract(lum, grid.centres, grid.fft_size), state.targets,
                          index=aps, max_shift=grid.search)
        moved = ((found.strength >= local.min_strength) & (found.snr >= local.min_snr)
                 & (np.abs(found.dy) < grid.search)
                 & (np.abs(found.dx) < grid.search))
        targets.spectrum[~moved] = state.targets.spectrum[~moved]
        if targets.power is not None and state.targets.power is not None:
            targets.power[~moved] = state.targets.power[~moved]
        state.offset[moved, 0] += found.dy[moved]
        state.offset[moved, 1] += found.dx[moved]
        state.targets = targets
        self._events["reference"] += 1
        state.stale[:] = state.contrib
        state.measured &= state.contrib
        state.okm &= state.contrib

    # ------------------------------------------------------------------ output
    def _background(self, state: _APState,
                    slots: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """Mean of the best frames near the anchor, in ``state``'s coordinates."""
        best = slots[np.argsort(-self._gq[slots])]
        near = [s for s in best if np.all(np.abs(self._shift[s]) < self._max_offset())]
        use = np.array((near or list(best))[: max(1, min(BACKGROUND_FRAMES, len(best) // 4))])
        shifts = self._shift[use] + state.origin
        image = mean_aligned((self._frames[s] for s in use), shifts)
        return image, covered_box(shifts, self._shape[:2])

    def _blend(self, state: _APState) -> np.ndarray | None:
        """The stack as it is in the sums (selection changes not yet applied wait: a
        promotion would measure them again at once)."""
        slots = self._filled()
        if not len(slots):
            return None
        background, _ = self._background(state, slots)
        image = state.sums.to_image(state.grid, background, self._params.blend).image
        # a drizzled stack serves as the AP reference at the sensor's scale
        return image if image.shape == background.shape else downscale(image, background.shape)

    def catch_up(self, budget: int = 32) -> bool:
        """Apply up to ``budget`` pending (frame, AP) changes to the sums.

        Selection changes wait (see ``sync_budget``) until a snapshot needs them; a driver
        with nothing else to do (no frame waiting) can call this instead, so that the next
        snapshot has less to do. Under load it is not called, and changes that undo each
        other before the snapshot cost nothing.

        Parameters
        ----------
        budget : int
            Most pairs measured, added or taken out in this call; at least 1.

        Returns
        -------
        bool
            Whether work remains.
        """
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ValueError(f"budget must be an integer >= 1, got {budget!r}")
        t0 = time.perf_counter()
        try:
            self._maybe_promote_reference()
            if self._next is not None:
                self._sync(self._next, budget)
                if not self._next.pending():
                    self._state, self._next = self._next, None
                return True
            state = self._state
            if state is None or not state.pending():
                return False
            self._sync(state, budget)
            return bool(state.pending())
        finally:
            self._timing["catch_up"] += time.perf_counter() - t0

    def snapshot(self) -> Snapshot | None:
        """Blend the current stack.

        Returns
        -------
        Snapshot or None
            ``None`` while the first frames are still being collected.
        """
        state = self._state
        slots = self._filled()
        if state is None or not len(slots):
            return None
        t0 = time.perf_counter()
        self._maybe_promote_reference()
        # pairs measured on an older reference are valid contributions (see
        # _APState.offset): their new measurement need not hold up the snapshot
        self._sync(state, restale=False)
        # a promotion that was due but waited for the sums to hold the selection
        # (PROMOTE_FILLED) happens now that they do
        self._maybe_promote_reference()
        t1 = time.perf_counter()
        self._timing["sync"] += t1 - t0
        background, box = self._background(state, slots)
        p = self._params
        image, _ = crop_output(state.sums.to_image(state.grid, background, p.blend), box,
                               p.drizzle)
        image, notes = finish(image, rgbalign=p.rgbalign, normalize_params=p.normalize,
                              sharpen_params=p.sharpen)
        centres = scale_points(state.grid.centres, box, p.drizzle.scale)
        self._timing["snapshot"] += time.perf_counter() - t1
        stats = self.stats()
        if notes:
            stats["finish"] = notes
        return Snapshot(image=image, stats=stats, ap_centres=centres,
                        ap_size=int(round(state.grid.size * p.drizzle.scale)), box=box)

    def stats(self) -> dict[str, Any]:
        """Counters and distributions, as plain (msgpack-able) values."""
        slots = self._filled()
        gq = self._gq[slots]
        best = self._best_quality or 1.0
        rel = gq / best if len(gq) else np.zeros(0)
        hist, edges = np.histogram(rel, bins=HIST_BINS, range=(0.0, 1.0))
        full = len(slots) >= self._params.buffer_size
        state = self._state
        return {
            "frames_seen": self._seen,
            "admitted": self._admitted,
            "dropped": {r: int(self._dropped.get(r, 0)) for r in DROP_REASONS},
            # of the quality drops, those decided before aligning the frame (GATE_SAMPLE)
            "dropped_unaligned": self._unaligned,
            "evicted": dict(self._evicted),
            "buffer_fill": int(len(slots)),
            "buffer_size": self._params.buffer_size,
            "aps": 0 if state is None else len(state.grid),
            "frames_per_ap": 0 if state is None else int(state.n),
            "warming_up": self._target is None,
            "pending_work": sum(s.pending() for s in self._states()),
            "quality": {
                "hist": hist.tolist(),
                "edges": edges.tolist(),
                "threshold": float(rel.min()) if full and len(rel) else 0.0,
                "best": float(self._best_quality),
            },
            "local_measured": self._local_measured,
            "local_failed": self._local_failed,
            "events": dict(self._events),
            "timings_ms": {k: round(v * 1e3 / max(self._seen, 1), 4)
                           for k, v in self._timing.items()},
        }


def _gate_step(quality: float, worst: float, count: int) -> tuple[bool, int]:
    """The quality gate on one frame: ``(drop it unaligned, frames gated so far)``.

    A frame no better than the buffer's worst is gated; every GATE_SAMPLE-th gated frame
    is aligned all the same.
    """
    if quality > worst:
        return False, count
    count += 1
    return count % GATE_SAMPLE != 0, count


def _batches(groups: list[tuple[int, np.ndarray]]) -> list[list[tuple[int, np.ndarray]]]:
    """Whole ``(slot, aps)`` groups in batches of about :data:`PAIRS_PER_BATCH` pairs."""
    batches: list[list[tuple[int, np.ndarray]]] = [[]]
    size = 0
    for group in groups:
        if size and size + len(group[1]) > PAIRS_PER_BATCH:
            batches.append([])
            size = 0
        batches[-1].append(group)
        size += len(group[1])
    return batches if batches[0] else []


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    """``np.concatenate(parts)``, without a copy when there is only one part."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _pick(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``values[mask]``, without a copy when the mask is all true."""
    return values if mask.all() else values[mask]


def _runs(slots: np.ndarray) -> list[tuple[int, int, int]]:
    """``(slot, start, stop)`` of each run of equal values in ``slots`` (pairs are listed
    frame by frame, so each frame's pairs form one run)."""
    if not len(slots):
        return []
    cuts = np.flatnonzero(slots[1:] != slots[:-1]) + 1
    starts = np.concatenate([[0], cuts])
    stops = np.concatenate([cuts, [len(slots)]])
    return [(int(slots[a]), int(a), int(b)) for a, b in zip(starts, stops, strict=True)]


def _take(mask: np.ndarray, left: list[float]) -> list[tuple[int, np.ndarray]]:
    """``(slot, aps)`` groups of the pairs set in ``mask``, at most ``left[0]`` of them
    (``left[0]`` is decreased by the number taken).
    """
    groups = []
    for slot in np.flatnonzero(mask.any(axis=1)):
        if left[0] <= 0:
            break
        aps = np.flatnonzero(mask[slot])
        if len(aps) > left[0]:
            aps = aps[: int(left[0])]
        groups.append((int(slot), aps))
        left[0] -= len(aps)
    return groups


def _select_all(state: _APState) -> None:
    """Select the best ``state.n`` frames at every AP from scratch."""
    q = state.q
    n = min(state.n, q.shape[0])
    state.sel[:] = False
    if n <= 0 or q.shape[1] == 0:
        return
    top = np.argpartition(-q, n - 1, axis=0)[:n]
    cols = np.broadcast_to(np.arange(q.shape[1]), top.shape)
    state.sel[top, cols] = np.isfinite(q[top, cols])


def _coerce(name: str, value: Any, current: Any) -> Any:
    """Convert a parameter value (possibly a string from a command line) to its type."""
    kind = type(current)
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError
                return value.lower() in ("true", "1", "yes", "on")
            return bool(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        out = kind(value)
        if kind is float and not math.isfinite(out):
            raise ValueError
        return out
    except (TypeError, ValueError, OverflowError):
        finite = " finite" if kind is float else ""
        raise ValueError(f"{name}: {reprlib.repr(value)} is not a valid{finite} "
                         f"{kind.__name__}") from None


def _describe(shape: tuple[int, ...], dtype: np.dtype | None) -> str:
    kind = "RGB" if len(shape) == 3 else "mono"
    return f"{shape[1]}x{shape[0]} {kind} {dtype}"
