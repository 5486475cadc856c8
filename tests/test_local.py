"""Per-AP selection and local shifts: stack sizes, best frames per AP, shifts, outliers."""

from __future__ import annotations

import numpy as np
import pytest

from live_stack.align import GlobalAlignment
from live_stack.apgrid import APGrid, APParams, lay_grid
from live_stack.correlate import correlate
from live_stack.local import (
    LocalParams,
    ap_quality,
    extract,
    inside,
    make_ap_targets,
    measure,
    measure_many,
    parse_stack_size,
    select,
    stack_count,
)
from live_stack.quality import QualityParams, Ranking

H, W = 240, 320
#: Largest error of a local (per-AP) shift, pixels.
LOCAL_TOL = 0.15


# ---------------------------------------------------------------- stack sizes
@pytest.mark.parametrize(("text", "expected"), [
    ("10%", (10.0, True)), ("200", (200.0, False)), (" 12.5 % ", (12.5, True)),
    ("100%", (100.0, True)), (5, (5.0, False)), (7.0, (7.0, False)),
])
def test_parse_stack_size(text, expected) -> None:
    assert parse_stack_size(text) == expected


@pytest.mark.parametrize(("text", "match"), [
    ("abc", "neither a count"), ("10 percent", "neither a count"), ("-3", "neither a count"),
    ("0%", "share must be"), ("150%", "share must be"), ("0", "whole number"),
    ("2.5", "whole number"), (2.5, "whole number"), (True, "neither a count"),
])
def test_parse_stack_size_errors_name_the_size(text, match) -> None:
    with pytest.raises(ValueError, match=match) as err:
        parse_stack_size(text)
    assert repr(text) in str(err.value) or str(text) in str(err.value)


@pytest.mark.parametrize(("size", "usable", "expected"), [
    ("10%", 100, 10), ("10%", 95, 10), ("25%", 10, 2), ("1%", 10, 1), ("200", 50, 50),
    ("200", 500, 200), ("100%", 7, 7), (3, 10, 3),
])
def test_stack_count(size, usable, expected) -> None:
    assert stack_count(size, usable) == expected


def test_stack_count_rejects_bad_size() -> None:
    with pytest.raises(ValueError, match="stack size"):
        stack_count("ten", 100)


# ---------------------------------------------------------------- selection
#: The selection test's layout: four 16-px APs, each covering 2x2 quality cells of 8 px.
CELL = 8
AP_CENTRES = np.array([[8, 8], [8, 24], [24, 8], [24, 24]])


def _known_ranking(values: np.ndarray) -> Ranking:
    """A ranking whose quality at AP ``a`` for frame ``f`` is ``values[f, a] / CELL**2``."""
    n = values.shape[0]
    maps = np.zeros((n, 4, 4), np.float32)
    for a, (cy, cx) in enumerate(AP_CENTRES):
        r, c = (cy - 8) // CELL, (cx - 8) // CELL
        maps[:, r : r + 2, c : c + 2] = values[:, a, None, None]
    quality = maps.reshape(n, -1).mean(axis=1).astype(np.float64)
    return Ranking(quality=quality, order=np.argsort(-quality, kind="stable"), maps=maps,
                   scale=CELL, params=QualityParams())


def _alignment(n: int, ok: np.ndarray | None = None,
               shifts: np.ndarray | None = None) -> GlobalAlignment:
    return GlobalAlignment(shifts=np.zeros((n, 2)) if shifts is None else shifts,
                           strength=np.ones(n), ok=np.ones(n, bool) if ok is None else ok,
                           target_index=0, mode="surface", shape=(32, 32))


GRID4 = APGrid(centres=AP_CENTRES, size=16, search=4, shape=(32, 32))


def test_select_picks_the_best_frames_per_ap() -> None:
    rng = np.random.default_rng(7)
    n = 12
    values = np.stack([rng.permutation(n) for _ in range(4)], axis=1).astype(float) + 1
    ok = np.ones(n, bool)
    ok[5] = False  # failed global alignment: never selected
    sel = select(_known_ranking(values), _alignment(n, ok), GRID4, (3, 6))
    assert sel.counts == (3, 6)
    assert sel.rank.shape == (n, 4)
    assert np.all(np.isneginf(sel.quality[5]))
    assert np.allclose(sel.quality[ok], values[ok] / CELL**2)
    for a in range(4):
        usable = np.flatnonzero(ok)
        best = usable[np.argsort(-values[usable, a])]
        assert list(np.flatnonzero(sel.rank[:, a] == 0)) == [best[0]]
        for k in (3, 6):  # nested: the best k for every size
            chosen = set(np.flatnonzero((sel.rank[:, a] >= 0) & (sel.rank[:, a] < k)))
            assert chosen == set(best[:k])
        order = np.argsort(sel.rank[best[:6], a])
        assert list(order) == list(range(6))  # ranks follow quality
        assert sel.rank[5, a] == -1
    assert set(sel.frames()) == set(np.flatnonzero((sel.rank >= 0).any(axis=1)))


def test_select_looks_the_box_up_where_each_frame_shows_it() -> None:
    """A frame displaced by (16, 0) shows AP 0's content where AP 2's box is."""
    values = np.array([[1.0, 1, 1, 1], [2, 2, 2, 2], [1, 1, 9, 1]])
    shifts = np.array([[0.0, 0.0], [0.0, 0.0], [16.0, 0.0]])
    q = ap_quality(_known_ranking(values), _alignment(3, shifts=shifts), GRID4)
    assert q[2, 0] == pytest.approx(9 / CELL**2)  # frame 2 at AP 0: read from AP 2's cells
    sel = select(_known_ranking(values), _alignment(3, shifts=shifts), GRID4, (1,))
    assert sel.rank[2, 0] == 0 and sel.rank[1, 1] == 0


def test_select_counts_larger_than_the_usable_frames() -> None:
    values = np.arange(1, 13, dtype=float).reshape(3, 4)
    sel = select(_known_ranking(values), _alignment(3), GRID4, (10,))
    assert (sel.rank >= 0).all()  # everything selected, ranks 0..2
    assert set(sel.rank[:, 0]) == {0, 1, 2}


@pytest.mark.parametrize("counts", [(), (0,), (3, 0)])
def test_select_rejects_bad_counts(counts) -> None:
    with pytest.raises(ValueError, match="counts"):
        select(_known_ranking(np.ones((2, 4))), _alignment(2), GRID4, counts)


# ---------------------------------------------------------------- patches
def test_extract_and_inside() -> None:
    image = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)
    centres = np.array([[10, 10], [5, 28], [2, 2]])
    assert list(inside(centres, 8, image.shape)) == [True, False, False]
    assert list(inside(np.array([[4, 4], [16, 26]]), 8, image.shape)) == [True, True]
    p = extract(image, centres[:1], 8)
    assert p.shape == (1, 8, 8)
    assert np.array_equal(p[0], image[6:14, 6:14])
    rgb = np.stack([image, image + 1, image + 2], axis=-1)
    pc = extract(rgb, centres[:1], 8)
    assert pc.shape == (1, 8, 8, 3)
    assert np.array_equal(pc[0, :, :, 2], image[6:14, 6:14] + 2)


# ---------------------------------------------------------------- local shifts
@pytest.fixture(scope="module")
def moon(scene_canvas):
    return scene_canvas("moon", 400, 320)


@pytest.fixture(scope="module")
def ap_setup(moon, shifted_view):
    ref = shifted_view(moon, 0, 0, (H, W)).astype(np.float32)
    # neighbours three quarters of a box apart, so a block pasted over one AP's patch
    # leaves most of its neighbours' patches alone (a lone outlier to catch)
    grid = lay_grid(ref, APParams(size=32, step=24, search=8))
    targets = make_ap_targets(ref, grid, LocalParams())
    return ref, grid, targets


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize(("shift", "given"), [((1.3, -0.6), (0.0, 0.0)),
                                               ((1.3, -0.6), (1.0, -1.0)),
                                               ((-12.4, 20.7), (-12.1, 20.9))])
def test_measure_recovers_local_shifts(moon, shifted_view, as_dtype, ap_setup, dtype, shift,
                                       given) -> None:
    ref, grid, targets = ap_setup
    frame = as_dtype(shifted_view(moon, *shift, (H, W), noise=0.01, seed=1), dtype)
    aps = np.arange(len(grid))
    res, centres = measure(frame, np.array(given), aps, grid, targets, LocalParams())
    offset = np.rint(given).astype(int)
    assert list(res.offset) == list(offset)
    assert np.array_equal(centres, grid.centres[res.aps] + offset)
    assert len(res.aps) >= 0.8 * len(grid)  # all but the APs pushed off the frame
    assert res.ok.mean() > 0.95
    assert np.allclose(res.dy[res.ok] + offset[0], shift[0], atol=LOCAL_TOL)
    assert np.allclose(res.dx[res.ok] + offset[1], shift[1], atol=LOCAL_TOL)


def test_measure_leaves_out_outliers_and_weak_patches(moon, shifted_view, ap_setup) -> None:
    ref, grid, targets = ap_setup
    frame = shifted_view(moon, 1.3, -0.6, (H, W), noise=0.01, seed=2).astype(np.float32)
    nb = (grid.neighbours >= 0).sum(axis=1)
    inner = np.flatnonzero(nb == 8)
    odd, noisy = int(inner[0]), int(inner[-1])
    half = grid.fft_size // 2
    # AP "odd": its content moved 5 px further down (a lone mis-measurement to catch)
    cy, cx = grid.centres[odd]
    moved = shifted_view(moon, 6.3, -0.6, (H, W)).astype(np.float32)
    box = (slice(cy - half, cy + half), slice(cx - half, cx + half))
    frame[box] = moved[box]
    # AP "noisy": nothing but noise (a cloud, a hot pixel cluster)
    cy, cx = grid.centres[noisy]
    box = (slice(cy - half, cy + half), slice(cx - half, cx + half))
    frame[box] = np.random.default_rng(3).normal(0.5, 0.1, frame[box].shape)
    res, _ = measure(frame, np.zeros(2), np.arange(len(grid)), grid, targets, LocalParams())
    where = {int(a): i for i, a in enumerate(res.aps)}
    assert res.dy[where[odd]] == pytest.approx(6.3, abs=0.5)  # measured, then rejected
    assert not res.ok[where[odd]]
    assert not res.ok[where[noisy]]
    # the noise-only patch's peak is below the noise-calibrated threshold
    lone = correlate(extract(frame, grid.centres[[noisy]], grid.fft_size), targets,
                     index=np.array([noisy]), max_shift=grid.search)
    assert lone.snr[0] < LocalParams().min_snr
    others = np.ones(len(res.aps), bool)
    others[[where[odd], where[noisy]]] = False
    assert res.ok[others].mean() > 0.9
    # a looser outlier threshold keeps the displaced AP
    loose, _ = measure(frame, np.zeros(2), np.arange(len(grid)), grid, targets,
                       LocalParams(outlier=8.0))
    assert loose.ok[where[odd]]


def test_measure_many_matches_measure(moon, shifted_view, ap_setup) -> None:
    ref, grid, targets = ap_setup
    frames = [shifted_view(moon, d, -d, (H, W), noise=0.01, seed=i).astype(np.float32)
              for i, d in enumerate((0.4, 2.6))]
    aps = [np.arange(0, len(grid), 2), np.arange(1, len(grid), 3)]
    shifts = [np.zeros(2), np.array([3.0, -3.0])]
    many = measure_many(list(zip(frames, shifts, aps, strict=True)), grid, targets,
                        LocalParams())
    for f, s, a, (res, centres) in zip(frames, shifts, aps, many, strict=True):
        one, c1 = measure(f, s, a, grid, targets, LocalParams())
        assert np.array_equal(res.aps, one.aps) and np.array_equal(centres, c1)
        assert np.allclose(res.dy, one.dy) and np.array_equal(res.ok, one.ok)


def test_measure_with_no_ap_inside(ap_setup) -> None:
    ref, grid, targets = ap_setup
    res, centres = measure(ref, np.array([500.0, 0.0]), np.arange(len(grid)), grid, targets,
                           LocalParams())
    assert len(res.aps) == 0 and len(centres) == 0 and res.ok.dtype == bool


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"peak_sigma": 0.1}, "local_peak_sigma"), ({"min_strength": 1.0}, "local_min_strength"),
    ({"outlier": 0.0}, "local_outlier"), ({"min_neighbours": 0}, "local_min_neighbours"),
])
def test_params_validation_names_the_field(kwargs, field) -> None:
    with pytest.raises(ValueError, match=field):
        LocalParams(**kwargs)
