"""Live stacking: the offline pipeline's phases, driven one frame at a time.

:class:`LiveStacker` keeps a bounded buffer of the best frames of a rolling window and
drives the AP-stacking engine (:class:`live_stack.apstack.APStack`, the offline
pipeline's too) over it. Each frame that arrives is measured (quality cells,
:mod:`live_stack.quality`), aligned globally against a target frame
(:mod:`live_stack.align`; accepted by :func:`~live_stack.align.accepts`), and either
admitted to the buffer or dropped with its reason counted. An admitted frame enters the
engine, which selects it at the APs where it ranks among the best ``N`` of the buffer
(:func:`~live_stack.local.stack_count` of the buffer's fill); a frame that leaves the
buffer (worse than a newcomer, or out of the window) leaves the engine, which takes it
out of the sums and selects the next best. The reference the grid is laid on and the
background of every snapshot are the buffer's reference (:mod:`live_stack.reference`'s
rule, ``LiveParams.reference``). This module holds what only a live driver needs: the
buffer, the warm-up, the quality gate, drift and new targets, when the stack is
promoted to be the AP reference, and how much of the engine's work each call does.

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
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from live_stack.align import (
    GlobalTarget,
    accepts,
    make_global_target,
    measure_shift,
    measure_shifts,
)
from live_stack.apgrid import APGrid, lay_grid
from live_stack.apstack import APStack, Tally
from live_stack.drizzle import crop_output, downscale, scale_points
from live_stack.finish import finish
from live_stack.frames import check_frame, luminance, luminance_u8_or_f32
from live_stack.local import parse_stack_size, stack_count
from live_stack.parallel import split_run
from live_stack.pipeline import PHASE_FIELDS, PhaseParams
from live_stack.quality import QualityMap, Scratch, box_quality, quality_map
from live_stack.reference import Reference, ReferenceParams, make_reference, reference_count

R = TypeVar("R")

#: Reasons an arriving frame is not admitted.
DROP_REASONS = ("alignment", "quality")
#: Recent admitted frames looked at for drift and alignment signal-to-noise.
RECENT = 16
#: The live reference rule's default: 16 frames averaged into the reference and the
#: background (a snapshot makes them again, so their work stays bounded).
LIVE_REFERENCE = ReferenceParams(min_frames=16, max_frames=16)
#: Bins of the quality histogram in the statistics.
HIST_BINS = 20
#: Frames that cannot enter the full buffer (quality at or below its worst, no window)
#: are dropped before they are aligned, except one in this many: those are aligned as
#: before, so that a change of target (frames that no longer align) is still noticed;
#: after one fails, every frame is aligned again until one succeeds.
GATE_SAMPLE = 4
#: The stack becomes the AP reference only when its sums hold at least this share of
#: the selected (frame, AP) pairs: before the first snapshot has put them in, the stack
#: is mostly the globally aligned background, no better than the reference it would
#: replace, and promoting it would only make every pair in the sums stale.
PROMOTE_FILLED = 0.5
#: Fewest frames worth a thread of their own.
MIN_FRAMES_PER_THREAD = 2


#: Largest ``buffer_size``; a ``stack_size`` count above it is refused as absurd.
MAX_BUFFER = 100_000


@dataclass(frozen=True)
class LiveParams(PhaseParams):
    """Parameters of the live stacker: the phases' (:class:`~live_stack.pipeline.PhaseParams`,
    the offline pipeline's too) and its own (CLI/config prefix ``live_``)."""

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

    reference: ReferenceParams = field(default_factory=lambda: LIVE_REFERENCE)  # reference
    # and background, made again at every grid and snapshot: of 16 frames (offline: <= 400)

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


#: Parameter names :meth:`LiveStacker.set_param` accepts: the live fields, and the
#: phases' fields as ``PREFIX_FIELD`` (``ap_size``, ``quality_method``, ...).
PHASE_PREFIXES = PHASE_FIELDS


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
        self._buffers = threading.local()  # each thread's quality Scratch
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

    def _wants_faint(self) -> bool:
        """Whether new frames need the coarser measure too: before the first grid (it may
        be laid for a faint capture) and while a grid laid for one is in use."""
        if self._params.quality.faint is None:
            return False
        states = self._states()
        return not states or any(s.grid.faint for s in states)

    def _measure_faint(self, slots: np.ndarray) -> None:
        """The coarser measure's cells of the buffered frames that lack them (frames
        admitted under a grid that did not need them), before a faint grid uses them."""
        coarse = self._params.quality.faint
        if coarse is None or self._cells is None:
            return
        todo = [int(s) for s in slots if not self._faint_ok[s]]
        for s in todo:
            self._cells[s, 1] = quality_map(self._frames[s], coarse, scratch=self._scratch(),
                                            faint=False).cells
            self._faint_ok[s] = True

    def _scratch(self) -> Scratch:
        """The calling thread's quality work buffers (kept between frames)."""
        return Scratch.of_thread(self._buffers)

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
        self._faint_ok = np.zeros(k, dtype=bool)  # slots whose cells hold the coarser measure
        self._scale = 1
        self._target: GlobalTarget | None = None
        self._state: APStack | None = None  # serves snapshots
        self._next: APStack | None = None  # being built after a grid change
        self._warm: list[tuple[np.ndarray, float, np.ndarray, float]] = []
        self._recent: deque[tuple[int, float]] = deque(maxlen=RECENT)  # (slot, snr)
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
        self._tally = Tally()  # local shifts measured, and those that fell back

    def _restart(self) -> None:
        """Start a new stack (new target) but keep the running counters."""
        kept = (self._seen, self._admitted, self._dropped, self._evicted, self._events,
                self._timing, self._tally, self._unaligned)
        self.reset()
        (self._seen, self._admitted, self._dropped, self._evicted, self._events,
         self._timing, self._tally, self._unaligned) = kept

    def set_param(self, name: str, value: Any) -> LiveParams:
        """Change one parameter while running: :meth:`set_params` of ``{name: value}``."""
        return self.set_params({name: value})

    def set_params(self, values: Mapping[str, Any]) -> LiveParams:
        """Change several parameters at once, validated together.

        Each name is a live field (``buffer_size``, ``stack_size``, ``window_seconds``,
        ...) or a phase field as ``PREFIX_FIELD`` (``ap_size``, ``local_outlier``, ...).
        The new parameters are checked as a whole, so that values that only fit together
        (``warmup=300`` with ``buffer_size=400``, from ``buffer_size=200``) are accepted
        in any order. Changing the buffer size, the warm-up, the AP grid or the measures
        starts the stack over; changing the stack size or the window re-selects from the
        frames in the buffer at once (the next snapshot blends the new selection, no new
        frame needed).

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
        own: dict[str, Any] = {}
        phases: dict[str, dict[str, Any]] = {}
        for name, value in values.items():
            if name in live_fields:
                own[name] = _coerce(name, value, getattr(p, name))
                continue
            prefix, _, sub = name.partition("_")
            if prefix not in PHASE_PREFIXES or not sub:
                raise ValueError(f"unknown parameter {name!r}")
            phase = getattr(p, prefix)
            if sub not in {f.name for f in dataclasses.fields(phase)}:
                raise ValueError(f"unknown parameter {name!r}")
            phases.setdefault(prefix, {})[sub] = _coerce(name, value, getattr(phase, sub))
        for prefix, changes in phases.items():
            own[prefix] = dataclasses.replace(getattr(p, prefix), **changes)
        new = dataclasses.replace(p, **own)
        self._params = new
        names = set(values)
        if "threads" in names:
            self.close()  # the next batch starts a pool of the new size
        if names & {"buffer_size", "warmup"} or any(
                n.startswith(("ap_", "quality_", "align_", "local_", "drizzle_")) for n in names):
            self._restart()
            return new
        if "stack_size" in names:
            for state in self._states():
                state.resize(self._per_ap())
        if names & {"window_frames", "window_seconds"}:
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
        faint = self._wants_faint()
        maps = [m for part in self._split(
            lambda a, b: [quality_map(f, qp, scratch=self._scratch(), faint=faint)
                          for f in frames[a:b]],
            len(frames),
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
        self._warm.append((np.array(frame, copy=True), quality, qmap.layers, now))
        if len(self._warm) >= self._params.warmup:
            t = time.perf_counter()
            self._start()
            self._timing["start"] += time.perf_counter() - t
        return AddResult(admitted=False, reason="warmup", quality=quality)

    def _admit(self, frame: np.ndarray, qmap: QualityMap, measured: np.ndarray,
               now: float) -> AddResult:
        """Admit an aligned frame to the buffer, or drop it with its reason."""
        quality = self._see(qmap)
        dy, dx, strength, snr = (float(v) for v in measured)
        t2 = time.perf_counter()
        self._evict_window(now)
        if self._weak(strength, snr):
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
        self._store(slot, frame, quality, qmap.layers, np.array([dy, dx]), now)
        self._recent.append((slot, snr))
        self._admitted += 1
        self._since_reference += 1
        for state in self._states():
            state.resize(self._per_ap())
            state.enter(slot, self._shift[slot] + state.origin,
                        self._ap_quality(state, np.array([slot]))[0])
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
        layers = 1 if self._params.quality.faint is None else 2
        self._cells = np.zeros((self._params.buffer_size, layers) + warm[0][2].shape[1:],
                               np.float32)
        self._scale = self._params.quality.downsample * self._params.quality.cell
        order = np.argsort([-w[1] for w in warm])
        for i in order:
            frame, quality, cells, now = warm[int(i)]
            dy, dx, strength, snr = measure_shift(frame, self._target)
            if self._weak(strength, snr):
                self._dropped["alignment"] += 1
                continue
            slot = self._free_slot(quality)
            if slot is None:
                self._dropped["quality"] += 1
                continue
            self._store(slot, frame, quality, cells, np.array([dy, dx]), now)
            self._recent.append((slot, snr))
            self._admitted += 1
        self._relay(synchronous=True)

    def _relay(self, *, synchronous: bool) -> None:
        """Lay a new AP grid on a fresh reference of the buffer's best frames."""
        slots = self._filled()
        if len(slots) == 0:
            return
        ref = self._reference(np.zeros(2))
        best = int(slots[np.argmax(self._gq[slots])])
        grid = lay_grid(ref.luminance, self._params.ap, box=ref.box,
                        frame=luminance(self._frames[best]), frame_shift=self._shift[best])
        if grid.faint:
            self._measure_faint(slots)
        state = self._new_engine(grid, ref.luminance)
        self._events["grid"] += 1
        state.place(slots, self._shift[slots], self._ap_quality(state, slots))
        state.select((self._per_ap(),))
        if synchronous or self._state is None:
            state.sync()
            self._state, self._next = state, None
        else:
            self._next = state

    def _reference(self, origin: np.ndarray) -> Reference:
        """The reference (:mod:`live_stack.reference`'s rule) of the buffer, in the
        coordinates ``origin`` away: its best frames, those near the anchor first (the
        others may have drifted out of the area the grid covers)."""
        slots = self._filled()
        best = slots[np.argsort(-self._gq[slots], kind="stable")]
        near = [s for s in best if np.all(np.abs(self._shift[s]) < self._max_offset())]
        far = [s for s in best if s not in set(near)]
        use = np.array(sorted((near + far)[: reference_count(len(slots), self._params.reference)]))
        return make_reference((self._frames[s] for s in use), self._shift[use] + origin,
                              self._shape, chosen=use)

    # ------------------------------------------------------------------ buffer
    def _states(self) -> list[APStack]:
        return [s for s in (self._state, self._next) if s is not None]

    def _filled(self) -> np.ndarray:
        return np.flatnonzero(self._seq >= 0)

    def _per_ap(self) -> int:
        """Frames stacked per AP with the buffer as full as it is."""
        return stack_count(self._params.stack_size, max(len(self._filled()), 1))

    def _max_offset(self) -> float:
        return self._params.relay_drift * min(self._shape[:2])

    def _weak(self, strength: float, snr: float) -> bool:
        """Whether a frame aligned too weakly to be used (:func:`~live_stack.align.accepts`,
        against the recent frames' typical signal-to-noise once there are enough of them)."""
        typical = None
        if len(self._recent) >= RECENT // 2:
            typical = float(np.median([s for _, s in self._recent]))
        return not bool(accepts(strength, snr, self._params.align, typical))

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
        self._cells[slot, : len(cells)] = cells
        self._faint_ok[slot] = len(cells) > 1

    def _remove(self, slot: int) -> None:
        for state in self._states():
            state.leave(slot)
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
    def _ap_quality(self, state: APStack, slots: np.ndarray) -> np.ndarray:
        """``(k, m)`` quality of the frames in ``slots`` at ``state``'s APs (by the coarser
        measure on a grid laid for a faint capture, as offline)."""
        layer = 1 if state.grid.faint and self._cells.shape[1] > 1 else 0
        return box_quality(self._cells[slots, layer], self._scale, state.grid.boxes,
                           self._shift[slots] + state.origin)

    def _new_engine(self, grid: APGrid, reference: np.ndarray) -> APStack:
        p = self._params
        return APStack(grid, reference, self._frames, shape=self._shape, slots=p.buffer_size,
                       local=p.local, drizzle=p.drizzle, split=self._split, tally=self._tally)

    def _work(self, frames: int) -> None:
        """Spend the budget of a call that took ``frames`` frames: on a grid being built
        (``work_budget`` pairs per frame: the old grid is drifting out of the frame), else
        on stale pairs (``work_budget`` per call: they are good meanwhile, see
        ``APStack.offset``), else on bringing the sums in line with the selection
        (``sync_budget`` per frame)."""
        budget = self._params.work_budget
        if self._next is not None:
            self._next.sync(budget * frames)
            if not self._next.pending():
                self._state, self._next = self._next, None
        elif self._state is not None and self._state.stale.any():
            self._state.sync(budget)
        elif self._state is not None and self._params.sync_budget:
            # a little of the net selection changes now, so that snapshots stay quick;
            # the rest at the snapshot
            self._state.sync(self._params.sync_budget * frames)

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
        if state.held() < PROMOTE_FILLED:
            return
        self._since_reference = 0
        image = self._blend(state)
        if image is None:
            return
        state.retarget(image if image.ndim == 2 else luminance_u8_or_f32(image))
        self._events["reference"] += 1

    # ------------------------------------------------------------------ output
    def _blend(self, state: APStack) -> np.ndarray | None:
        """The stack as it is in the sums (selection changes not yet applied wait: a
        promotion would measure them again at once)."""
        if not len(self._filled()):
            return None
        background = self._reference(state.origin).image
        image = state.image(background, self._params.blend).image
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
                self._next.sync(budget)
                if not self._next.pending():
                    self._state, self._next = self._next, None
                return True
            state = self._state
            if state is None or not state.pending():
                return False
            state.sync(budget)
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
        # APStack.offset): their new measurement need not hold up the snapshot
        state.sync(restale=False)
        # a promotion that was due but waited for the sums to hold the selection
        # (PROMOTE_FILLED) happens now that they do
        self._maybe_promote_reference()
        t1 = time.perf_counter()
        self._timing["sync"] += t1 - t0
        ref = self._reference(state.origin)
        # where the background is made of every one of its frames, less what lies past
        # the grid's rim boxes by a search radius at most
        box = rim_crop(ref.box, state.grid)
        p = self._params
        image, _ = crop_output(state.image(ref.image, p.blend, crop=box), box, p.drizzle)
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
            # the grid's step, and whether it was laid twice as dense because a frame's
            # detail is under its noise (apgrid.lay_grid; detail None: not measured)
            "ap_step": 0 if state is None else int(state.grid.step),
            "ap_dense": False if state is None else bool(state.grid.dense),
            "ap_dense_reason": "" if state is None else state.grid.dense_reason,
            "ap_detail": None if state is None or np.isnan(state.grid.detail)
            else round(float(state.grid.detail), 3),
            "frames_per_ap": 0 if state is None else int(state.counts[0]),
            "warming_up": self._target is None,
            "pending_work": sum(s.pending() for s in self._states()),
            # (frame, AP) pairs of the stack that serves snapshots: selected, of those in
            # the sums, and in the sums but measured on an older reference
            "pairs": {"selected": 0 if state is None else int(state.sel.sum()),
                      "held": 0 if state is None else int((state.sel & state.contrib).sum()),
                      "stale": 0 if state is None else int(state.stale.sum())},
            "quality": {
                "hist": hist.tolist(),
                "edges": edges.tolist(),
                "threshold": float(rel.min()) if full and len(rel) else 0.0,
                "best": float(self._best_quality),
            },
            "local_measured": self._tally.measured,
            "local_failed": self._tally.fell_back,
            # per AP of the stack that serves snapshots (the order of Snapshot.ap_centres):
            # frames in its sum, and of those, the ones whose shift fell back
            "ap_frames": [] if state is None else state.stacked().tolist(),
            "ap_fell_back": [] if state is None else state.fell_back().tolist(),
            "events": dict(self._events),
            "timings_ms": {k: round(v * 1e3 / max(self._seen, 1), 4)
                           for k, v in self._timing.items()},
        }


def rim_crop(box: tuple[int, int, int, int], grid: APGrid) -> tuple[int, int, int, int]:
    """The snapshot's crop: ``box``, the area its reference's frames cover, pulled in to
    the grid's outer boxes where they end short of it by no more than the search radius.

    The grid was laid on the area the frames covered then (:func:`lay_grid` puts the rim
    boxes on its edges, and :func:`live_stack.stack.blend` does not fade them towards the
    crop's edge); the frames now may cover a pixel or two more. Cropping those keeps the
    stack, not the blurrier reference, at the snapshot's edges. A grid that ends further
    inside (a planet's, whose sky APs are dropped) leaves the crop alone.
    """
    if not len(grid):
        return box
    half = grid.size // 2
    top, left = (int(v) - half for v in grid.centres.min(axis=0))
    bottom, right = (int(v) + half for v in grid.centres.max(axis=0))
    y0, x0, y1, x1 = box
    near = grid.search
    y0 = top if 0 < top - y0 <= near else y0
    x0 = left if 0 < left - x0 <= near else x0
    y1 = bottom if 0 < y1 - bottom <= near else y1
    x1 = right if 0 < x1 - right <= near else x1
    return (y0, x0, y1, x1)


def _gate_step(quality: float, worst: float, count: int) -> tuple[bool, int]:
    """The quality gate on one frame: ``(drop it unaligned, frames gated so far)``.

    A frame no better than the buffer's worst is gated; every GATE_SAMPLE-th gated frame
    is aligned all the same.
    """
    if quality > worst:
        return False, count
    count += 1
    return count % GATE_SAMPLE != 0, count


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
