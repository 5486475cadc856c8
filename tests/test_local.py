"""Per-AP selection: stack sizes and the best frames per AP (the local shifts are
measured by the engine, tests/test_apstack.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from live_stack.align import GlobalAlignment
from live_stack.apgrid import APGrid
from live_stack.local import (
    LocalParams,
    ap_quality,
    best_per_ap,
    extract,
    inside,
    parse_stack_size,
    stack_count,
)
from live_stack.quality import QualityParams, Ranking


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


def test_a_faint_grid_chooses_by_the_coarser_measure() -> None:
    """On a grid laid for a faint capture the APs' quality comes from the ranking's
    faint maps (the coarser measure), on any other grid from the fine ones."""
    fine = np.arange(1, 13, dtype=float)[:, None] * np.ones(4)
    coarse = fine[::-1].copy()  # the opposite order
    ranking = replace(_known_ranking(fine), faint_maps=_known_ranking(coarse).maps)
    usual = ap_quality(ranking, _alignment(12), GRID4)
    faint = ap_quality(ranking, _alignment(12), replace(GRID4, dense=True, faint=True))
    assert np.allclose(usual, fine / CELL**2) and np.allclose(faint, coarse / CELL**2)
    few = ap_quality(ranking, _alignment(12), replace(GRID4, dense=True))
    assert np.allclose(few, fine / CELL**2)


def _alignment(n: int, ok: np.ndarray | None = None,
               shifts: np.ndarray | None = None) -> GlobalAlignment:
    return GlobalAlignment(shifts=np.zeros((n, 2)) if shifts is None else shifts,
                           strength=np.ones(n), ok=np.ones(n, bool) if ok is None else ok,
                           target_index=0, mode="surface", shape=(32, 32))


GRID4 = APGrid(centres=AP_CENTRES, size=16, search=4, shape=(32, 32))


def test_best_per_ap_picks_the_best_frames_per_ap() -> None:
    rng = np.random.default_rng(7)
    n = 12
    values = np.stack([rng.permutation(n) for _ in range(4)], axis=1).astype(float) + 1
    ok = np.ones(n, bool)
    ok[5] = False  # failed global alignment: never selected
    quality = ap_quality(_known_ranking(values), _alignment(n, ok), GRID4)
    rank = best_per_ap(quality, 6)
    assert rank.shape == (n, 4)
    assert np.all(np.isneginf(quality[5]))
    assert np.allclose(quality[ok], values[ok] / CELL**2)
    for a in range(4):
        usable = np.flatnonzero(ok)
        best = usable[np.argsort(-values[usable, a])]
        assert list(np.flatnonzero(rank[:, a] == 0)) == [best[0]]
        for k in (3, 6):  # nested: the best k for every size
            chosen = set(np.flatnonzero((rank[:, a] >= 0) & (rank[:, a] < k)))
            assert chosen == set(best[:k])
        order = np.argsort(rank[best[:6], a])
        assert list(order) == list(range(6))  # ranks follow quality
        assert rank[5, a] == -1


def test_best_per_ap_looks_the_box_up_where_each_frame_shows_it() -> None:
    """A frame displaced by (16, 0) shows AP 0's content where AP 2's box is."""
    values = np.array([[1.0, 1, 1, 1], [2, 2, 2, 2], [1, 1, 9, 1]])
    shifts = np.array([[0.0, 0.0], [0.0, 0.0], [16.0, 0.0]])
    q = ap_quality(_known_ranking(values), _alignment(3, shifts=shifts), GRID4)
    assert q[2, 0] == pytest.approx(9 / CELL**2)  # frame 2 at AP 0: read from AP 2's cells
    rank = best_per_ap(q, 1)
    assert rank[2, 0] == 0 and rank[1, 1] == 0


def test_best_per_ap_counts_larger_than_the_usable_frames() -> None:
    values = np.arange(1, 13, dtype=float).reshape(3, 4)
    rank = best_per_ap(ap_quality(_known_ranking(values), _alignment(3), GRID4), 10)
    assert (rank >= 0).all()  # everything selected, ranks 0..2
    assert set(rank[:, 0]) == {0, 1, 2}


def test_best_per_ap_with_none_asked_or_none_finite() -> None:
    quality = np.ones((3, 4), np.float32)
    assert (best_per_ap(quality, 0) == -1).all()
    quality[:, 2] = -np.inf  # no frame may be selected at AP 2
    rank = best_per_ap(quality, 2)
    assert (rank[:, 2] == -1).all() and ((rank[:, [0, 1, 3]] >= 0).sum(axis=0) == 2).all()


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
    # patches reaching past the edge: the part outside mirrored in (the search margin of
    # a box at the edge of the area), alongside ones inside, in order
    edge = np.array([[10, 10], [3, 27], [17, 2]])
    for img in (image, rgb):
        got = extract(img, edge, 8)
        pad = ((4, 4), (4, 4)) + (((0, 0),) if img.ndim == 3 else ())
        mirrored = np.pad(img, pad, mode="reflect")
        for k, (cy, cx) in enumerate(edge):
            assert np.array_equal(got[k], mirrored[cy : cy + 8, cx : cx + 8])
    with pytest.raises(ValueError, match="past the"):
        extract(image, np.array([[-1, 0]]), 8)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"peak_sigma": 0.1}, "local_peak_sigma"), ({"min_strength": 1.0}, "local_min_strength"),
    ({"outlier": 0.0}, "local_outlier"), ({"min_neighbours": 0}, "local_min_neighbours"),
    ({"wide_margin": -1}, "local_wide_margin"), ({"wide_margin": 2.5}, "local_wide_margin"),
    ({"wide_margin": True}, "local_wide_margin"),
    ({"wide_below": float("nan")}, "local_wide_below"),
])
def test_params_validation_names_the_field(kwargs, field) -> None:
    with pytest.raises(ValueError, match=field):
        LocalParams(**kwargs)
