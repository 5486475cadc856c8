"""The AP-stacking engine: per-AP selection, local shifts and sums, under both drivers.

One :class:`APStack` holds everything that is per (frame, AP) pair on one AP grid: each
frame's quality at each AP, which frames are selected at each AP, which pairs are in the
sums, the shift measured for each pair, and the sums themselves (one per stack size).
The offline pipeline (:func:`live_stack.pipeline.stack_aps`) enters a whole capture,
selects once and syncs once; the live stacker (:class:`live_stack.live.LiveStacker`)
enters and removes frames one at a time, keeps the selection in step, and syncs a
budget at a time. Both go through the one loop here (:meth:`APStack.sync`): cut the
patches, transform them once, correlate them with the AP references, judge the
shifts, shift the spectra and add them.

The frames are the driver's: ``frames[slot]`` is the frame in ``slot`` (a list the live
stacker fills, or the capture itself offline) and is read only while its pairs are
measured, added or taken out.

Bookkeeping (all ``(slots, m)``): ``sel``, the selection wanted; ``contrib``, the pairs
in the sums; ``measured``/``dy``/``dx``, a pair's shift, measured once per reference;
``fell``, the pairs whose measured shift was not trusted and fell back
(:func:`live_stack.local.resolve`: every selected pair is stacked, whatever its shift
came from); ``stale``, pairs in the sums measured on an older reference. Selection
changes cost only bookkeeping until :meth:`APStack.sync` applies their net effect, so
at camera rates the many changes that undo each other before a snapshot cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from live_stack.apgrid import APGrid
from live_stack.correlate import Shifts, correlate, correlate_spectra
from live_stack.drizzle import DrizzleParams, DrizzleSums, make_sums
from live_stack.frames import LUMA_WEIGHTS
from live_stack.local import (
    WIDE_TAPER,
    LocalParams,
    best_per_ap,
    extract,
    inside,
    make_ap_targets,
    make_wide_targets,
    resolve,
    wide_size,
)
from live_stack.stack import Blend, BlendParams, PatchSums, frame_patches, patch_spectra

R = TypeVar("R")

#: ``split(work, n, min_items)``: run ``work(start, stop)`` over ``range(n)`` in parts
#: (see :func:`live_stack.parallel.split_run`), the results in order.
Split = Callable[[Callable[[int, int], R], int, int], list[R]]

#: (frame, AP) pairs transformed and measured in one batch: enough to spread over the
#: threads, few enough for the batch's arrays (26 KB per pair at 80 px) to stay small.
#: One batch of the 5000 pairs of a first snapshot spent half its time in page faults
#: and cache misses (its arrays took 126 MB each).
PAIRS_PER_BATCH = 256
#: Fewest (frame, AP) patches worth a thread of their own.
MIN_PATCHES_PER_THREAD = 16


def run_here(work: Callable[[int, int], R], n: int, min_items: int) -> list[R]:
    """A :data:`Split` that runs everything in the calling thread."""
    return [work(0, n)]


def in_pieces(pool: Executor | None, pieces: int) -> Split:
    """A :data:`Split` that cuts the work into the same pieces whatever the threads.

    The batched correlation rounds a little differently for batches of other sizes, so
    a driver whose result must not depend on its number of threads cuts the same
    ``pieces`` (of at least ``min_items``) with one thread or many; ``pool`` (or the
    calling thread, without one) runs them.
    """

    def split(work: Callable[[int, int], R], n: int, min_items: int) -> list[R]:
        k = max(1, min(pieces, n // max(1, min_items)))
        bounds = [n * i // k for i in range(k + 1)]
        if pool is None or k == 1:
            return [work(bounds[i], bounds[i + 1]) for i in range(k)]
        futures = [pool.submit(work, bounds[i], bounds[i + 1]) for i in range(k)]
        return [f.result() for f in futures]

    return split


@dataclass
class Tally:
    """Running counts of the local shifts, kept across the engines of a driver."""

    measured: int = 0  # (frame, AP) shifts measured
    widened: int = 0  # of them, measured better on the wide box (weak peaks)
    fell_back: int = 0  # of those, not trusted and replaced (see local.resolve)


class APStack:
    """Per-AP selection, shifts and sums of one AP grid (see the module docstring).

    Parameters
    ----------
    grid : APGrid
        The APs.
    reference : numpy.ndarray
        float32 ``(H, W)`` luminance the AP references are cut from.
    frames : sequence of numpy.ndarray
        ``frames[slot]``: the frame in each slot, read when its pairs are worked on.
    shape : tuple
        The frames' shape, ``(H, W)`` or ``(H, W, 3)``.
    slots : int
        Number of slots (rows of the bookkeeping).
    sizes : int
        Number of sums (stack sizes); more than one only with a selection made at once
        (:meth:`select`), whose ranks say which sums a pair goes into.
    local : LocalParams
        Per-AP alignment thresholds.
    drizzle : DrizzleParams
        The sums' kind (drizzled or not).
    split : Split, optional
        How the batches' transforms are spread over threads (default: this thread).
    tally : Tally, optional
        Where the shift counts go (shared with the driver's other engines).
    """

    def __init__(self, grid: APGrid, reference: np.ndarray, frames: Sequence[np.ndarray], *,
                 shape: tuple[int, ...], slots: int, sizes: int = 1,
                 local: LocalParams = LocalParams(),
                 drizzle: DrizzleParams = DrizzleParams(), split: Split | None = None,
                 tally: Tally | None = None) -> None:
        if sizes < 1:
            raise ValueError(f"sizes must be >= 1, got {sizes}")
        m = len(grid)
        self.grid = grid
        self.frames = frames
        self.shape = tuple(shape)
        self.local = local
        self.split: Split = split or run_here
        self.tally = tally if tally is not None else Tally()
        channels = 3 if len(shape) == 3 else 1
        self.targets = make_ap_targets(reference, grid, local)
        #: The wide measuring boxes of the reference, for weak peaks, and which APs have
        #: one (:func:`live_stack.local.make_wide_targets`).
        self.wide = make_wide_targets(reference, grid, local)
        #: Where the current AP references sit against the grid's first one, per AP: added
        #: to every shift measured on them, so that pairs measured before and after a
        #: :meth:`retarget` are placed alike and may be summed together.
        self.offset = np.zeros((m, 2), dtype=np.float32)
        self.sums: list[PatchSums | DrizzleSums] = [make_sums(grid, channels, drizzle)
                                                     for _ in range(sizes)]
        self.counts: tuple[int, ...] = (0,) * sizes  # frames per AP wanted in each sum
        self.rank: np.ndarray | None = None  # (slots, m) ranks, with several sums
        self.shift = np.zeros((slots, 2))  # global (dy, dx) of each slot's frame
        self.q = np.full((slots, m), -np.inf, dtype=np.float32)
        self.sel = np.zeros((slots, m), dtype=bool)
        self.contrib = np.zeros((slots, m), dtype=bool)
        self.measured = np.zeros((slots, m), dtype=bool)
        self.fell = np.zeros((slots, m), dtype=bool)  # measured, not trusted, fell back
        self.stale = np.zeros((slots, m), dtype=bool)
        self.dy = np.zeros((slots, m), dtype=np.float32)
        self.dx = np.zeros((slots, m), dtype=np.float32)
        #: This grid's coordinates minus the driver's current ones (a driver that moves
        #: its origin, the live stacker at a re-anchor, keeps it here).
        self.origin = np.zeros(2)

    # ------------------------------------------------------------------ frames
    def _centres(self, slot: int, aps: np.ndarray | None = None) -> np.ndarray:
        """Where the patches of the frame in ``slot`` are cut for ``aps`` (default: all):
        the APs' centres moved by the frame's whole-pixel global shift."""
        centres = self.grid.centres if aps is None else self.grid.centres[aps]
        return centres + np.rint(self.shift[slot]).astype(np.intp)

    def place(self, slots: np.ndarray, shifts: np.ndarray, quality: np.ndarray) -> None:
        """Record frames (global shifts ``(k, 2)``, qualities at the APs ``(k, m)``)
        without selecting them (see :meth:`select`).

        The one rule for patches at the frame's edge: an AP whose box does not lie
        wholly inside the frame cannot be selected in that frame (its patch's search
        margin may reach past the frame: that part is mirrored in, see
        :func:`live_stack.local.extract`).
        """
        slots = np.asarray(slots, dtype=np.intp)
        self.shift[slots] = shifts
        size = self.grid.size
        offsets = np.rint(np.asarray(shifts, dtype=np.float64)).astype(np.intp)
        for i, slot in enumerate(slots):
            fits = inside(self.grid.centres + offsets[i], size, self.shape)
            self.q[slot] = np.where(fits, quality[i], -np.inf)

    def enter(self, slot: int, shift: np.ndarray, quality: np.ndarray) -> None:
        """A new frame in ``slot``: selected at the APs where it ranks among the best
        (bookkeeping only; one sum)."""
        self._one_sum()
        self.place(np.array([slot]), np.asarray(shift)[None], np.asarray(quality)[None])
        q = self.q[slot]
        n = self.counts[0]
        nsel = self.sel.sum(axis=0)
        take = (nsel < n) & np.isfinite(q)
        full = ~take & np.isfinite(q)
        if full.any():
            masked = np.where(self.sel, self.q, np.inf)
            worst = masked.argmin(axis=0)
            cols = np.arange(len(q))
            swap = full & (q > masked[worst, cols])
            self.sel[worst[swap], cols[swap]] = False
            take |= swap
        self.sel[slot, take] = True

    def leave(self, slot: int) -> None:
        """The frame in ``slot`` goes: its patches out of the sums at once, its rows
        forgotten, the next best frame selected at each AP it was selected at."""
        aps = np.flatnonzero(self.sel[slot])
        self._subtract([(slot, np.flatnonzero(self.contrib[slot]))])
        for arr in (self.sel, self.contrib, self.measured, self.fell, self.stale):
            arr[slot] = False
        self.q[slot] = -np.inf
        if len(aps):
            self._fill_up(aps)

    # ------------------------------------------------------------------ selection
    def _one_sum(self) -> None:
        if len(self.sums) != 1:
            raise ValueError("a selection kept up frame by frame needs one sum, "
                             f"this engine has {len(self.sums)}")

    def select(self, counts: tuple[int, ...]) -> np.ndarray:
        """Select the best ``max(counts)`` frames at every AP from scratch; pair ``(f, a)``
        is wanted in sum ``k`` when ``f`` is among the best ``counts[k]`` at ``a``.

        Returns
        -------
        numpy.ndarray
            int32 ``(slots, m)`` rank of each frame at each AP (``-1``: not selected), see
            :func:`live_stack.local.best_per_ap`.
        """
        counts = tuple(int(c) for c in counts)
        if len(counts) != len(self.sums) or min(counts) < 0:
            raise ValueError(f"counts must be {len(self.sums)} frame counts >= 0, got {counts}")
        self.counts = counts
        rank = best_per_ap(self.q, max(counts))
        self.sel[:] = rank >= 0
        self.rank = rank if len(counts) > 1 else None
        return rank

    def resize(self, n: int) -> None:
        """Keep ``n`` frames per AP (one sum), adding the next best or dropping the worst
        selected (bookkeeping only)."""
        self._one_sum()
        if n == self.counts[0]:
            return
        grow = n > self.counts[0]
        self.counts = (int(n),)
        if grow:
            self._fill_up(np.arange(len(self.grid)))
            return
        nsel = self.sel.sum(axis=0)
        for a in np.flatnonzero(nsel > n):
            col = np.where(self.sel[:, a], self.q[:, a], np.inf)
            self.sel[np.argsort(col)[: nsel[a] - n], a] = False

    def _fill_up(self, aps: np.ndarray) -> None:
        """Select the best unselected frame at each AP with fewer than wanted."""
        n = self.counts[0]
        need = aps[self.sel[:, aps].sum(axis=0) < n]
        while len(need):
            cand = np.where(self.sel[:, need], -np.inf, self.q[:, need])
            best = cand.argmax(axis=0)
            ok = np.isfinite(cand[best, np.arange(len(need))])
            self.sel[best[ok], need[ok]] = True
            need = need[ok]
            need = need[self.sel[:, need].sum(axis=0) < n]

    # ------------------------------------------------------------------ state
    def wanted(self) -> np.ndarray:
        """Pairs selected but not in the sums."""
        return self.sel & ~self.contrib

    def pending(self) -> int:
        """Pairs whose state in the sums differs from the selection (or is stale)."""
        return int(self.wanted().sum() + (self.contrib & ~self.sel).sum() + self.stale.sum())

    def held(self) -> float:
        """Share of the selected pairs that are in the sums (1 with nothing selected)."""
        selected = int(self.sel.sum())
        return 1.0 if not selected else float((self.contrib & self.sel).sum()) / selected

    def stacked(self) -> np.ndarray:
        """int ``(m,)``: frames in each AP's sum (the first sum)."""
        return self.sums[0].counts.copy()

    def fell_back(self) -> np.ndarray:
        """int ``(m,)``: of the frames in each AP's sums, those whose shift fell back."""
        return (self.contrib & self.fell).sum(axis=0)

    # ------------------------------------------------------------------ work
    def sync(self, budget: int | None = None, *, restale: bool = True,
             progress: Callable[[int, int], None] | None = None) -> None:
        """Apply the net selection changes (and re-measure stale pairs) to the sums.

        Three steps, in order: pairs measured on an older reference are measured again
        (unless ``restale`` is false); pairs no longer selected are taken out; pairs
        newly selected are measured (where not yet) and put in. With a ``budget``, at
        most that many pairs are worked on. Pairs are worked on slot by slot, in
        batches of about :data:`PAIRS_PER_BATCH`; ``progress(done, total)`` follows the
        pairs put in.
        """
        left = [np.inf if budget is None else int(budget)]
        stale = _take(self.stale, left) if restale else []
        if stale:
            # no longer selected: out; still selected: measured again and replaced in
            # the sums, from one cut and one transform of each patch (see _add_batch)
            self._subtract([(slot, aps[~self.sel[slot, aps]]) for slot, aps in stale])
            again = [(slot, aps[self.sel[slot, aps]]) for slot, aps in stale]
            for slot, aps in again:
                self.measured[slot, aps] = False
            self._add(again)
        self._subtract(_take(self.contrib & ~self.sel, left))
        self._add(_take(self.wanted(), left), progress)

    def retarget(self, reference: np.ndarray) -> None:
        """Measure shifts on a new reference luminance ``(H, W)`` from now on.

        Where the new reference sits against the current one is measured at every AP
        and added to the AP's offset, so that the pairs in the sums (now stale, to be
        measured again by :meth:`sync`) and the new ones are placed alike; an AP where
        that is not measured reliably keeps its current reference. Shifts cached for
        pairs not in the sums are forgotten.
        """
        grid, local = self.grid, self.local
        targets = make_ap_targets(reference, grid, local)
        aps = np.arange(len(grid))
        found = correlate(extract(reference, grid.centres, grid.fft_size), self.targets,
                          index=aps, max_shift=grid.search)
        moved = ((found.strength >= local.min_strength) & (np.abs(found.dy) < grid.search)
                 & (np.abs(found.dx) < grid.search))
        if found.snr is not None:
            moved &= found.snr >= local.min_snr
        if self.wide is not None:  # where there is a wide box, measure on it (as weak peaks)
            has = np.flatnonzero(self.wide[1])
            wide_found = correlate(extract(reference, grid.centres[has], wide_size(grid, local)),
                                   self.wide[0], index=has, max_shift=grid.search,
                                   taper=WIDE_TAPER)
            sure = ((np.abs(wide_found.dy) < grid.search) & (np.abs(wide_found.dx) < grid.search)
                    & (wide_found.snr >= local.min_snr))
            at = has[sure]
            found = Shifts(dy=found.dy.copy(), dx=found.dx.copy(),
                           strength=found.strength, snr=found.snr)
            found.dy[at], found.dx[at] = wide_found.dy[sure], wide_found.dx[sure]
            moved[at] = True
        targets.spectrum[~moved] = self.targets.spectrum[~moved]
        if targets.power is not None and self.targets.power is not None:
            targets.power[~moved] = self.targets.power[~moved]
        wide = make_wide_targets(reference, grid, local)
        if wide is not None and self.wide is not None:
            new, old = wide[0], self.wide[0]
            new.spectrum[~moved] = old.spectrum[~moved]
            if new.power is not None and old.power is not None:
                new.power[~moved] = old.power[~moved]
        self.wide = wide
        self.offset[moved, 0] += found.dy[moved]
        self.offset[moved, 1] += found.dx[moved]
        self.targets = targets
        self.stale[:] = self.contrib
        self.measured &= self.contrib
        self.fell &= self.contrib

    def image(self, background: np.ndarray, blend: BlendParams = BlendParams(), *,
              size: int = 0, crop: tuple[int, int, int, int] | None = None) -> Blend:
        """Sum ``size`` blended over a ``background`` (float32 frame-shaped image) as it
        is now (apply the selection first with :meth:`sync`), for an output cropped to
        ``crop`` (see :func:`live_stack.stack.blend`)."""
        return self.sums[size].to_image(self.grid, background, blend, crop=crop)

    # ------------------------------------------------------------------ the loop
    def _subtract(self, groups: list[tuple[int, np.ndarray]]) -> None:
        """Take ``(slot, aps)`` pairs that are in the sums out of them, in batches."""
        for batch in _batches([(slot, aps) for slot, aps in groups if len(aps)]):
            patches = _concat([frame_patches(self.frames[slot], self._centres(slot, aps),
                                             self.grid.fft_size) for slot, aps in batch])
            pair_slot = np.concatenate([np.full(len(aps), slot) for slot, aps in batch])
            pair_aps = np.concatenate([aps for _, aps in batch])
            self._take_out(pair_slot, pair_aps, patches, self.dy[pair_slot, pair_aps],
                           self.dx[pair_slot, pair_aps])

    def _take_out(self, pair_slot: np.ndarray, pair_aps: np.ndarray, patches: np.ndarray,
                  dy: np.ndarray, dx: np.ndarray, spec: np.ndarray | None = None) -> None:
        """Subtract pairs from the sums, given their patches, the shifts they were added
        with and (if at hand) the patches' transforms (overwritten)."""
        spectra = self._prepare(pair_aps, patches, dy, dx, spec)
        self._accumulate(pair_slot, pair_aps, spectra, dy, dx, sign=-1)

    def _add(self, groups: list[tuple[int, np.ndarray]],
             progress: Callable[[int, int], None] | None = None) -> None:
        """Measure (where not yet measured) and add ``(slot, aps)`` pairs, in batches."""
        total = sum(len(aps) for _, aps in groups)
        done = 0
        for batch in _batches(groups):
            self._add_batch(batch)
            done += sum(len(aps) for _, aps in batch)
            if progress is not None:
                progress(done, total)

    def _add_batch(self, groups: list[tuple[int, np.ndarray]]) -> None:
        """Measure (where not yet measured) and add ``(slot, aps)`` pairs to the sums.

        Every patch is transformed once; the transform serves both the measurement and
        the stacking. A pair already in the sums (a stale one, measured again on a new
        reference) is replaced: its old shifted spectrum, made from the same transform,
        is taken out first.
        """
        grid = self.grid
        cuts = []
        for slot, aps in groups:
            if len(aps):
                cuts.append((slot, aps, self._centres(slot, aps)))
        if not cuts:
            return
        patches = _concat([frame_patches(self.frames[slot], centres, grid.fft_size)
                           for slot, _, centres in cuts])
        pair_aps = np.concatenate([aps for _, aps, _ in cuts])
        pair_slot = np.concatenate([np.full(len(aps), slot) for slot, aps, _ in cuts])
        new = ~self.measured[pair_slot, pair_aps]
        targets = self.targets

        def transform(a: int, b: int) -> tuple[np.ndarray, Shifts | None]:
            """Spectra of patches a..b-1, and the shifts of the new ones among them."""
            spec, lum = patch_spectra(patches[a:b])
            fresh = new[a:b]
            if not fresh.any():
                return spec, None
            return spec, correlate_spectra(_pick(lum, fresh), targets,
                                           index=_pick(pair_aps[a:b], fresh),
                                           max_shift=grid.search)

        was_in = self.contrib[pair_slot, pair_aps]
        if was_in.any():
            old_dy = self.dy[pair_slot[was_in], pair_aps[was_in]]
            old_dx = self.dx[pair_slot[was_in], pair_aps[was_in]]
        parts = self.split(transform, len(patches), MIN_PATCHES_PER_THREAD)
        spec = _concat([p[0] for p in parts])
        if was_in.any():
            self._take_out(pair_slot[was_in], pair_aps[was_in], patches[was_in], old_dy,
                           old_dx, spec[was_in])
        found = [p[1] for p in parts if p[1] is not None]
        if found:
            snr = None if any(f.snr is None for f in found) else _concat([f.snr for f in found])
            r = Shifts(dy=_concat([f.dy for f in found]), dx=_concat([f.dx for f in found]),
                       strength=_concat([f.strength for f in found]), snr=snr)
            r = self._widen(pair_slot[new], pair_aps[new], r)
            self._record(pair_slot[new], pair_aps[new], r)
        # ``spec`` is this call's own array, so the shifted spectra may take its place
        dy = self.dy[pair_slot, pair_aps]
        dx = self.dx[pair_slot, pair_aps]
        spectra = self._prepare(pair_aps, patches, dy, dx, spec)
        self._accumulate(pair_slot, pair_aps, spectra, dy, dx, sign=1)

    def _widen(self, pair_slot: np.ndarray, pair_aps: np.ndarray, r: Shifts) -> Shifts:
        """Measure the pairs whose peak is weak (under ``local.wide_below`` noise standard
        deviations) again on the wide box (:func:`live_stack.local.make_wide_targets`),
        where both the reference's and the frame's wide boxes exist, and keep whichever
        peak stands higher above its noise. Returns the shifts to judge."""
        if self.wide is None or r.snr is None:
            return r
        targets, has_box = self.wide
        size = wide_size(self.grid, self.local)
        weak = (r.snr < self.local.wide_below) & has_box[pair_aps]
        if not weak.any():
            return r
        dy, dx = r.dy.copy(), r.dx.copy()
        strength, snr = r.strength.copy(), r.snr.copy()
        for slot, a, b in _runs(pair_slot):
            at = a + np.flatnonzero(weak[a:b])
            if not len(at):
                continue
            centres = self._centres(slot, pair_aps[at])
            fits = inside(centres, size, self.shape)
            at, centres = at[fits], centres[fits]
            if not len(at):
                continue
            patches = frame_patches(self.frames[slot], centres, size)
            lum = patches[:, 0] if patches.shape[1] == 1 else np.tensordot(
                patches, LUMA_WEIGHTS, axes=([1], [0]))
            w = correlate(lum, targets, index=pair_aps[at], max_shift=self.grid.search,
                          taper=WIDE_TAPER)
            better = w.snr > snr[at]
            at = at[better]
            dy[at], dx[at] = w.dy[better], w.dx[better]
            strength[at], snr[at] = w.strength[better], w.snr[better]
            self.tally.widened += int(better.sum())
        return Shifts(dy=dy, dx=dx, strength=strength, snr=snr)

    def _record(self, pair_slot: np.ndarray, pair_aps: np.ndarray, r: Shifts) -> None:
        """Judge and keep the shifts measured for pairs (listed frame by frame): the one
        place where measured shifts are judged, for both drivers. An untrusted shift
        falls back (:func:`live_stack.local.resolve`); the pair is stacked all the same."""
        for slot, a, b in _runs(pair_slot):
            aps = pair_aps[a:b]
            dy, dx, fell = resolve(r.dy[a:b], r.dx[a:b], r.strength[a:b], aps, self.grid,
                                   self.local, snr=None if r.snr is None else r.snr[a:b])
            self.measured[slot, aps] = True
            self.fell[slot, aps] = fell
            self.dy[slot, aps] = dy + self.offset[aps, 0]
            self.dx[slot, aps] = dx + self.offset[aps, 1]
            self.tally.measured += len(aps)
            self.tally.fell_back += int(fell.sum())

    def _prepare(self, pair_aps: np.ndarray, patches: np.ndarray, dy: np.ndarray,
                 dx: np.ndarray, spec: np.ndarray | None) -> np.ndarray:
        """What the sums take for these pairs (shifted spectra, or drizzled patches),
        made on the threads; ``spec`` (the patches' transforms) is overwritten."""
        prepare = self.sums[0].prepare  # the same for every sum
        return _concat(self.split(
            lambda a, b: prepare(pair_aps[a:b], patches[a:b], dy[a:b], dx[a:b],
                                 spectra=None if spec is None else spec[a:b],
                                 overwrite=True),
            len(pair_aps), MIN_PATCHES_PER_THREAD))

    def _accumulate(self, pair_slot: np.ndarray, pair_aps: np.ndarray, spectra: np.ndarray,
                    dy: np.ndarray, dx: np.ndarray, *, sign: int) -> None:
        """Add (``sign=1``) or take out prepared pairs, frame by frame, in every sum they
        belong to (all of them with one sum; by rank with several)."""
        for slot, a, b in _runs(pair_slot):
            aps = pair_aps[a:b]
            if self.rank is None:
                self.sums[0].add(aps, spectra[a:b], dy[a:b], dx[a:b], sign=sign)
            else:
                ranks = self.rank[slot, aps]
                for acc, count in zip(self.sums, self.counts, strict=True):
                    keep = np.flatnonzero(ranks < count)
                    if len(keep):
                        acc.add(aps[keep], spectra[a:b][keep], dy[a:b][keep], dx[a:b][keep],
                                sign=sign)
            self.contrib[slot, aps] = sign > 0
            self.stale[slot, aps] = False


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
    (``left[0]`` is decreased by the number taken)."""
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
