"""The physical seeing model: known answers on PSFs, noise, motion, and the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from live_stack.io import open_source
from live_stack.io.images import read_image
from live_stack.simulate import simulate_capture
from live_stack.simulate.cli import main
from live_stack.simulate.scenes import render_scene
from live_stack.simulate.turbulence import (
    TurbulenceParams,
    _tents,
    expose,
    motion_field,
    physical_margin,
    render_physical,
)

SIDE = 64


def _point_frames(params: TurbulenceParams, frames: int, seed: int = 0) -> np.ndarray:
    """Frames of a point source at the canvas centre."""
    margin = physical_margin(params, frames)
    size = SIDE + 2 * margin
    canvas = np.zeros((size, size), np.float32)
    canvas[size // 2, size // 2] = 1.0
    return np.stack([f.image for f in render_physical(
        canvas, frames=frames, params=params, seed=seed, frame_shape=(SIDE, SIDE))])


def _radius(image: np.ndarray) -> float:
    """RMS radius of the light about its centroid, pixels."""
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    w = image / image.sum()
    cy, cx = (w * yy).sum(), (w * xx).sum()
    return float(np.sqrt((w * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum()))


def test_light_is_conserved_and_the_psf_widens_with_d_over_r0() -> None:
    """A point source keeps its light; its long-exposure image grows with D/r0, and
    each short exposure is smaller than the long one (the motion is taken out)."""
    radii = []
    for d_r0 in (2.0, 6.0):
        params = TurbulenceParams(d_over_r0=d_r0, field_points=1, breathing=0.0)
        frames = _point_frames(params, 20)
        assert frames.sum(axis=(1, 2)) == pytest.approx(np.ones(20), abs=0.02)
        long = frames.mean(axis=0)
        radii.append(_radius(long))
        assert np.median([_radius(f) for f in frames]) < radii[-1]
    assert radii[1] > 1.5 * radii[0]


def test_same_seed_same_frames_other_seed_other_frames() -> None:
    params = TurbulenceParams(d_over_r0=4.0, field_points=2)
    a = _point_frames(params, 3, seed=1)
    b = _point_frames(params, 3, seed=1)
    c = _point_frames(params, 3, seed=2)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_anisoplanatism_high_layers_make_distant_points_move_apart() -> None:
    """Two stars at opposite sides of the field move together under a ground layer only
    and apart under a high one (each layer's footprint shifts with field angle)."""
    def spread(heights: tuple[float, ...]) -> float:
        params = TurbulenceParams(d_over_r0=5.0, field_points=4, breathing=0.0,
                                  layer_heights_m=heights, layer_weights=(1.0,),
                                  wind_mps=(5.0,), wind_deg=(0.0,))
        margin = physical_margin(params, 10)
        size = 128 + 2 * margin
        canvas = np.zeros((size, size), np.float32)
        c = size // 2
        canvas[c, margin + 16] = canvas[c, size - margin - 17] = 1.0
        offsets = []
        for f in render_physical(canvas, frames=10, params=params, seed=4,
                                 frame_shape=(128, 128)):
            left, right = f.image[:, :64], f.image[:, 64:]
            offsets.append(_centroid(left) - _centroid(right))
        d = np.asarray(offsets)
        return float(np.std(d[:, 0]) + np.std(d[:, 1]))

    assert spread((10000.0,)) > 3 * spread((0.0,))


def test_image_motion_is_a_smooth_field_not_a_cross_fade() -> None:
    """Stars at two field points and midway between them, under a high layer (strong
    differential motion): each star moves by the recorded motion field at its place, and
    the star midway is one sharp image moved by an amount between its neighbours', not a
    blend of two displaced copies (which would halve its peak where they move apart)."""
    side = 256
    params = TurbulenceParams(d_over_r0=5.0, field_points=4, breathing=0.0,
                              layer_heights_m=(10000.0,), layer_weights=(1.0,),
                              wind_mps=(10.0,), wind_deg=(0.0,))
    frames = 24
    margin = physical_margin(params, frames)
    size = side + 2 * margin
    canvas = np.zeros((size, size), np.float32)
    stars = [(96, 96), (96, 128), (96, 160)]  # field point, midway, field point (y, x)
    for y, x in stars:
        canvas[margin + y, margin + x] = 1.0
    tents = _tents(side, 4)
    errors, ratios = [], []
    for f in render_physical(canvas, frames=frames, params=params, seed=3,
                             frame_shape=(side, side)):
        my, mx = motion_field(f.motions, tents, tents)
        peaks = []
        for y, x in stars:
            # the frame shows the scene at p + m(p): the star is seen at its place - m
            ey, ex = y - my[y, x], x - mx[y, x]
            cy, cx = int(round(ey)), int(round(ex))
            win = f.image[cy - 12 : cy + 13, cx - 12 : cx + 13]
            found = _centroid(win) + (cy - 12, cx - 12)
            errors.append(np.hypot(found[0] - ey, found[1] - ex))
            peaks.append(win.max())
        apart = np.hypot(*(f.motions[1, 1] - f.motions[1, 2]))  # the two field points'
        if apart > 2.0:
            ratios.append(peaks[1] / (0.5 * (peaks[0] + peaks[2])))
    assert np.median(errors) < 0.5
    assert len(ratios) >= 4  # the test needs frames whose two field points move apart
    assert np.median(ratios) > 0.75


def _centroid(image: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    w = image / image.sum()
    return np.array([(w * yy).sum(), (w * xx).sum()])


def test_drift_moves_the_frames_as_recorded() -> None:
    params = TurbulenceParams(d_over_r0=1.0, drift_px=20.0, drift_angle_deg=0.0,
                              field_points=1, breathing=0.0)
    frames = list(render_physical(*_canvas(params, 11), frames=11, params=params, seed=0,
                                  frame_shape=(SIDE, SIDE)))
    dx = frames[-1].offset[1] - frames[0].offset[1]
    assert dx == pytest.approx(-20.0, abs=1.5)  # the scene moves +x, the view -x


def _canvas(params: TurbulenceParams, frames: int) -> tuple[np.ndarray]:
    margin = physical_margin(params, frames)
    return (render_scene("moon", width=SIDE + 2 * margin, height=SIDE + 2 * margin, seed=0,
                         scale=SIDE),)


@pytest.mark.parametrize(("electrons", "bits"), [(500.0, 8), (20000.0, 16)])
def test_exposure_has_poisson_and_read_noise(electrons: float, bits: int) -> None:
    params = TurbulenceParams(electrons=electrons, read_noise=3.0)
    flat = np.full((256, 256), 0.4, np.float32)
    raw = expose(flat, params=params, rng=np.random.default_rng(0), bits=bits)
    assert raw.dtype == (np.uint8 if bits == 8 else np.uint16)
    full = 255.0 if bits == 8 else 65535.0
    e = raw.astype(np.float64) / full * electrons
    assert e.mean() == pytest.approx(0.4 * electrons, rel=0.01)
    expected = math.sqrt(0.4 * electrons + 9.0)
    quant = electrons / (255.0 if bits == 8 else 4095.0) / math.sqrt(12)
    assert e.std() == pytest.approx(math.hypot(expected, quant), rel=0.05)


@pytest.mark.parametrize(("field", "value", "name"), [
    ("d_over_r0", 0.0, "d_over_r0"), ("d_over_r0", 40.0, "d_over_r0"),
    ("electrons", -1.0, "electrons"), ("read_noise", -0.5, "read_noise"),
    ("pixel_lambda_d", 0.7, "pixel_lambda_d"), ("field_points", 0, "field_points"),
    ("layer_weights", (1.0,), "layer_weights"), ("wind_mps", (1.0, 2.0), "wind_mps"),
    ("layer_heights_m", (-5.0, 0.0, 1.0), "layer_heights_m"), ("adc_bits", 8, "adc_bits"),
    ("breathing", float("nan"), "breathing"),
])
def test_bad_parameters_are_named(field: str, value: object, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        TurbulenceParams(**{field: value})


def test_render_refuses_a_canvas_too_small_or_in_colour() -> None:
    params = TurbulenceParams()
    with pytest.raises(ValueError, match="margin"):
        render_physical(np.zeros((70, 70), np.float32), frames=2, params=params, seed=0,
                        frame_shape=(64, 64))
    with pytest.raises(ValueError, match="mono"):
        render_physical(np.zeros((300, 300, 3), np.float32), frames=2, params=params,
                        seed=0, frame_shape=(64, 64))


def test_simulate_capture_physical_writes_frames_truth_and_offsets(tmp_path) -> None:
    params = TurbulenceParams(d_over_r0=3.0, electrons=800.0)
    info = simulate_capture("mare", frames=4, out_dir=tmp_path / "cap", seed=2, bits=16,
                            width=96, height=80, seeing=params, drift=4.0)
    with open_source(info.video) as src:
        assert len(src) == 4
        assert src[0].shape == (80, 96)
        assert src[0].dtype == np.uint16
    truth, _ = read_image(info.truth)
    assert truth.shape == (80, 96)
    record = json.loads((tmp_path / "cap" / "truth.json").read_text())
    assert record["seeing"] == "physical"
    assert record["params"]["d_over_r0"] == 3.0
    assert record["params"]["drift_px"] == 4.0
    assert np.asarray(record["offsets"]).shape == (4, 2)
    assert np.abs(np.asarray(record["offsets"])).max() > 0
    with pytest.raises(ValueError, match="colour"):
        simulate_capture("mare", frames=2, out_dir=tmp_path / "c2", seeing=params,
                         colour=True)


def test_cli_physical_and_its_errors(tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    code = main(["terminator", "--frames", "3", "-o", str(out), "--size", "64x48",
                 "--seeing", "physical", "--d-r0", "4", "--electrons", "500",
                 "--read-noise", "1.5", "--layers", "0:0.7,5000:0.3", "--wind", "3:0,12:90"])
    assert code == 0
    meta = json.loads((out / "truth.json").read_text())
    assert meta["params"]["layer_heights_m"] == [0.0, 5000.0]
    assert meta["params"]["wind_deg"] == [0.0, 90.0]
    assert meta["params"]["electrons"] == 500.0
    capsys.readouterr()
    assert main(["mare", "--frames", "2", "-o", str(out), "--d-r0", "4"]) == 2
    assert "--d-r0 needs --seeing physical" in capsys.readouterr().err
    assert main(["mare", "--frames", "2", "-o", str(out), "--seeing", "physical",
                 "--layers", "0:1"]) == 2
    assert "--wind" in capsys.readouterr().err
    assert main(["mare", "--frames", "2", "-o", str(out), "--seeing", "physical",
                 "--layers", "0:1,4"]) == 2
    assert "A:B pairs" in capsys.readouterr().err
    assert main(["mare", "--frames", "2", "-o", str(out), "--seeing", "physical",
                 "--layers", "0:1", "--wind", "1:0,2:0"]) == 2
    assert "wind_mps" in capsys.readouterr().err
