"""Scenes: deterministic, the right shapes, and the structure each scene should have."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from live_stack.frames import LUMA_WEIGHTS
from live_stack.simulate.scenes import SCENES, render_scene

W, H = 160, 120


@pytest.mark.parametrize("colour", [False, True])
@pytest.mark.parametrize("name", SCENES)
def test_shape_range_and_determinism(name: str, colour: bool) -> None:
    a = render_scene(name, width=W, height=H, seed=5, colour=colour)
    b = render_scene(name, width=W, height=H, seed=5, colour=colour)
    c = render_scene(name, width=W, height=H, seed=6, colour=colour)
    assert a.shape == ((H, W, 3) if colour else (H, W))
    assert a.dtype == np.float32
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_odd_sizes_and_scale() -> None:
    img = render_scene("sun", width=33, height=17, seed=0)
    assert img.shape == (17, 33)
    # a larger canvas at the same scale shows the same features at the same size: the
    # planet disk keeps its diameter
    small = render_scene("planet", width=200, height=150, seed=0, scale=150)
    large = render_scene("planet", width=300, height=250, seed=0, scale=150)

    def disk_height(img: np.ndarray) -> int:
        col = img[:, img.shape[1] // 2]
        return int((col > 0.02).sum())

    assert abs(disk_height(small) - disk_height(large)) <= 1
    # ~40 % of the frame height (less the polar flattening)
    assert 0.34 * 150 <= disk_height(small) <= 0.41 * 150


def test_planet_sky_disk_and_moon() -> None:
    img = render_scene("planet", width=320, height=240, seed=2)
    assert (img < 0.005).mean() > 0.7  # mostly black sky
    n, labels, stats, centroids = cv2.connectedComponentsWithStats((img > 0.05).astype(np.uint8))
    areas = sorted(stats[1:, cv2.CC_STAT_AREA])
    assert n - 1 == 2, "the disk and one small moon"
    disk_area = math.pi * (0.2 * 240) ** 2 * (1 - 0.065)
    assert areas[1] == pytest.approx(disk_area, rel=0.1)
    assert 3 <= areas[0] < 0.01 * areas[1]
    # bands: the central column of the disk alternates between bright and dark
    col = img[120 - 35 : 120 + 35, 160]
    assert col.max() - col.min() > 0.15
    # limb darkening: the disk's edge is darker than its centre on the equator line
    row = img[118:123, 160 - 48 : 160 + 49].mean(axis=0)
    centre = float(row[40:57].mean())
    assert row[1:4].mean() < 0.7 * centre and row[-4:-1].mean() < 0.7 * centre


@pytest.mark.parametrize("name", ["moon", "sun"])
def test_structure_everywhere(name: str) -> None:
    img = render_scene(name, width=320, height=240, seed=1)
    detail = img - cv2.GaussianBlur(img, (0, 0), 3.0)
    tiles = [
        float(detail[y : y + 60, x : x + 80].std())
        for y in range(0, 240, 60)
        for x in range(0, 320, 80)
    ]
    assert min(tiles) > 0.005, "every part of the field has some detail"
    if name == "moon":
        # busy crater fields and flat maria: local contrast varies across the field
        assert max(tiles) / min(tiles) > 2.0


def test_moon_has_shadows_and_bright_slopes() -> None:
    img = render_scene("moon", width=320, height=240, seed=1)
    assert 0.005 < (img < 0.08).mean() < 0.3  # cast shadows, not a black field
    assert (img > 0.7).mean() > 0.005  # sunlit slopes


def test_sun_granulation_and_spot() -> None:
    img = render_scene("sun", width=320, height=240, seed=4)
    assert 0.4 < float(np.median(img)) < 0.8
    dark = img < 0.15
    assert 50 < dark.sum() < 0.1 * img.size  # an umbra, small
    ys, xs = np.nonzero(dark)
    assert abs(ys.mean() - 120) < 40 and abs(xs.mean() - 160) < 40  # near the centre
    # granulation: cells about scale/36 across give a correlation length of a few pixels
    quiet = img[:, :60] - img[:, :60].mean()
    spectrum = np.abs(np.fft.rfft(quiet, axis=1)).mean(axis=0)
    peak_period = 60 / (1 + int(np.argmax(spectrum[1:])))
    assert 3 <= peak_period <= 30


def test_colour_keeps_luminance() -> None:
    mono = render_scene("moon", width=W, height=H, seed=3)
    rgb = render_scene("moon", width=W, height=H, seed=3, colour=True)
    luma = np.tensordot(rgb, LUMA_WEIGHTS, axes=([2], [0]))
    unclipped = rgb.max(axis=2) < 1.0
    assert np.allclose(luma[unclipped], mono[unclipped], atol=1e-5)
    planet = render_scene("planet", width=W, height=H, seed=3, colour=True)
    r, b = planet[..., 0], planet[..., 2]
    assert float(r.sum()) > 1.1 * float(b.sum()), "a reddish-brown planet"


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"name": "mars"}, "name"),
        ({"width": 8}, "width"),
        ({"height": 100000}, "height"),
        ({"width": 64.5}, "width"),
        ({"seed": -1}, "seed"),
        ({"scale": float("nan")}, "scale"),
        ({"scale": 2.0}, "scale"),
    ],
)
def test_bad_arguments(kwargs: dict, word: str) -> None:
    args = {"name": "moon", "width": 64, "height": 48, "seed": 0, **kwargs}
    name = args.pop("name")
    with pytest.raises(ValueError, match=word):
        render_scene(name, **args)
