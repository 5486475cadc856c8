"""Seeing and camera model: determinism, noise, offsets, warps, lucky frames."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from live_stack.simulate.scenes import render_scene
from live_stack.simulate.score import gradient_energy, register
from live_stack.simulate.seeing import (
    SEEING_PRESETS,
    SeeingParams,
    canvas_margin,
    global_offsets,
    iter_frames,
    iter_sim_frames,
    profile_factor,
    seeing_params,
    truth_view,
)

W, H = 96, 72
#: A camera without noise, to look at the optics alone.
NOISELESS = {"full_well": 1e9, "read_noise": 0.0}


def _canvas(params: SeeingParams, frames: int, seed: int, *, scene: str = "moon", colour=False):
    margin = canvas_margin(global_offsets(frames=frames, params=params, seed=seed), params)
    return render_scene(
        scene, width=W + 2 * margin, height=H + 2 * margin, seed=seed, colour=colour, scale=H
    )


def _frames(params: SeeingParams, frames: int, seed: int = 0, **kwargs) -> list[np.ndarray]:
    canvas = _canvas(params, frames, seed, colour=kwargs.pop("colour", False))
    return list(
        iter_frames(canvas, frames=frames, params=params, seed=seed, frame_shape=(H, W), **kwargs)
    )


@pytest.mark.parametrize("colour", [False, True])
@pytest.mark.parametrize("bits", [8, 16])
def test_deterministic_and_seed_dependent(bits: int, colour: bool) -> None:
    params = seeing_params("normal")
    a = _frames(params, 4, seed=1, bits=bits, colour=colour)
    b = _frames(params, 4, seed=1, bits=bits, colour=colour)
    c = _frames(params, 4, seed=2, bits=bits, colour=colour)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not any(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert not np.array_equal(a[0], a[1]), "frames of a run differ"
    dtype = np.uint8 if bits == 8 else np.uint16
    for f in a:
        assert f.dtype == dtype
        assert f.shape == ((H, W, 3) if colour else (H, W))
        assert f.max() > (200 if bits == 8 else 50000)  # uses the range


def test_16bit_is_a_12bit_adc_scaled_to_full_range() -> None:
    params = seeing_params("normal")
    frame = _frames(params, 1, bits=16)[0].astype(np.float64)
    codes = np.rint(frame * 4095 / 65535)
    assert np.array_equal(np.rint(codes * 65535 / 4095), frame), "12-bit codes, scaled"
    assert len(np.unique(frame)) > 200
    frame16 = _frames(dataclasses.replace(params, adc_bits=16), 1, bits=16)[0]
    codes16 = np.rint(frame16 * 4095 / 65535)
    assert not np.array_equal(np.rint(codes16 * 65535 / 4095), frame16), "full 16 bits"


@pytest.mark.parametrize("bits", [8, 16])
def test_noise_level_and_mean(bits: int) -> None:
    """A flat grey scene: the noise is the photon + read noise of the model."""
    params = SeeingParams(full_well=1000.0, read_noise=5.0, jitter_rms=0.0)
    level = 0.4
    canvas = np.full((H + 80, W + 80), level, np.float32)
    frames = list(
        iter_frames(canvas, frames=3, params=params, seed=0, bits=bits, frame_shape=(H, W))
    )
    full = 255.0 if bits == 8 else 65535.0
    values = np.stack(frames).astype(np.float64) / full
    electrons = level * params.full_well
    expected = np.sqrt(electrons + params.read_noise**2) / params.full_well
    assert values.mean() == pytest.approx(level, abs=0.003)
    assert values.std() == pytest.approx(expected, rel=0.1)


def test_offsets_jitter_drift_and_zero_mean() -> None:
    params = SeeingParams(jitter_rms=0.0, drift_px=200.0, drift_angle_deg=0.0)
    off = global_offsets(frames=50, params=params, seed=0)
    assert off.shape == (50, 2)
    assert np.allclose(off.mean(axis=0), 0.0)
    # the scene drifts 200 px towards +x: the view of the truth moves the other way
    assert off[-1, 1] - off[0, 1] == pytest.approx(-200.0)
    assert np.allclose(off[:, 0], 0.0)
    jittery = global_offsets(frames=2000, params=SeeingParams(jitter_rms=2.0), seed=3)
    assert jittery.std(axis=0) == pytest.approx([2.0, 2.0], rel=0.35)
    # temporally correlated: neighbouring frames are closer than random pairs
    step = np.diff(jittery, axis=0).std()
    assert step < 0.8 * jittery.std() * np.sqrt(2)
    again = global_offsets(frames=2000, params=SeeingParams(jitter_rms=2.0), seed=3)
    assert np.array_equal(jittery, again)


def test_truth_matches_frames_at_their_offsets() -> None:
    """Without local warps a frame is the truth at the frame's offset (registered to
    0.1 px); with warps, the mean displacement still matches within 0.5 px."""
    still = dataclasses.replace(
        seeing_params("good"), warp_rms=0.0, blur_median=0.6, blur_spread=0.0, **NOISELESS
    )
    canvas = _canvas(still, 6, 4, scene="sun")
    truth = truth_view(canvas, (H, W))
    for sim in iter_sim_frames(canvas, frames=6, params=still, seed=4, frame_shape=(H, W)):
        shift = register(sim.image, truth)
        assert shift == pytest.approx(sim.offset, abs=0.1)
    warped = dataclasses.replace(seeing_params("normal"), blur_median=0.8, **NOISELESS)
    canvas = _canvas(warped, 10, 5, scene="sun")
    truth = truth_view(canvas, (H, W))
    errors = [
        np.subtract(register(sim.image, truth), sim.offset)
        for sim in iter_sim_frames(canvas, frames=10, params=warped, seed=5, frame_shape=(H, W))
    ]
    assert float(np.median(np.abs(errors))) < 0.5


def _tile_shifts(frame: np.ndarray, truth: np.ndarray, tile: int) -> np.ndarray:
    """Local shifts (dy, dx) of frame against truth in tiles."""
    f = frame.astype(np.float64) / 255.0
    t = truth.astype(np.float64)
    out = []
    for y in range(0, f.shape[0] - tile + 1, tile // 2):
        row = []
        for x in range(0, f.shape[1] - tile + 1, tile // 2):
            (px, py), _ = cv2.phaseCorrelate(
                f[y : y + tile, x : x + tile], t[y : y + tile, x : x + tile]
            )
            row.append((-py, -px))
        out.append(row)
    return np.asarray(out)


def test_local_warps_are_smooth_nonzero_and_zero_mean() -> None:
    params = SeeingParams(
        jitter_rms=0.0, warp_rms=2.0, blur_median=0.5, blur_spread=0.0, **NOISELESS
    )
    h, w = 192, 256
    canvas = render_scene("sun", width=w + 80, height=h + 80, seed=3, scale=h)
    truth = truth_view(canvas, (h, w))
    frames = list(iter_frames(canvas, frames=2, params=params, seed=3, frame_shape=(h, w)))
    shifts = _tile_shifts(frames[0], truth, 32)
    rms = float(np.sqrt((shifts**2).mean()))
    assert 0.8 < rms < 3.5, "local warps of about warp_rms"
    assert np.abs(shifts.mean(axis=(0, 1))).max() < 0.5, "zero mean over the frame"
    # smooth: neighbouring tiles (half-overlapping) move alike
    neighbour = np.abs(np.diff(shifts, axis=1)).mean()
    assert neighbour < 0.5 * rms
    # and they change from frame to frame
    later = _tile_shifts(frames[1], truth, 32)
    assert np.abs(later - shifts).mean() > 0.05


def test_lucky_frames_and_lucky_regions() -> None:
    params = dataclasses.replace(seeing_params("normal"), jitter_rms=0.5)
    canvas = _canvas(params, 80, 7)
    sims = list(iter_sim_frames(canvas, frames=80, params=params, seed=7, frame_shape=(H, W)))
    energy = np.array([gradient_energy(s.image) for s in sims])
    sigma = np.array([s.blur_sigma for s in sims])
    assert energy.max() / energy.min() > 2.0, "frame sharpness varies by a factor"
    assert np.corrcoef(energy, sigma)[0, 1] < -0.5, "the blur sigma is what makes it"
    assert (sigma < 1.0).mean() > 0.02, "a few per cent of lucky frames"
    # lucky only in some regions: the sharpest frame differs between quadrants
    quads = [
        (slice(0, H // 2), slice(0, W // 2)),
        (slice(0, H // 2), slice(W // 2, W)),
        (slice(H // 2, H), slice(0, W // 2)),
        (slice(H // 2, H), slice(W // 2, W)),
    ]
    local = np.array([[gradient_energy(s.image[q]) for q in quads] for s in sims])
    normalised = local / local.mean(axis=0)
    spread = np.abs(np.log(normalised[:, 0] / normalised[:, 3]))
    assert spread.max() > 0.3, "sharpness differs across the field within a frame"


def test_worsening_profile() -> None:
    params = dataclasses.replace(seeing_params("worsening"), jitter_rms=0.5)
    factor = profile_factor(np.arange(40), frames=40, params=params)
    assert factor[0] == 1.0 and factor[-1] == pytest.approx(2.0)
    canvas = _canvas(params, 40, 2)
    sims = list(iter_sim_frames(canvas, frames=40, params=params, seed=2, frame_shape=(H, W)))
    sigma = np.array([s.blur_sigma for s in sims])
    energy = np.array([gradient_energy(s.image) for s in sims])
    assert sigma[20:].mean() > 1.6 * sigma[:20].mean()
    assert energy[20:].mean() < 0.7 * energy[:20].mean()


@pytest.mark.parametrize("name", SEEING_PRESETS)
def test_presets(name: str) -> None:
    p = seeing_params(name)
    assert isinstance(p, SeeingParams)
    assert seeing_params(name, drift_px=5.0).drift_px == 5.0
    good, poor = seeing_params("good"), seeing_params("poor")
    assert good.blur_median < p.blur_median * 1.01 or name == "good"
    assert poor.blur_median > good.blur_median


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("blur_median", 0.0),
        ("blur_spread", -1.0),
        ("blur_local_share", 1.5),
        ("blur_min", -0.1),
        ("blur_max", 0.4),
        ("blur_level_count", 1),
        ("warp_rms", float("nan")),
        ("cell_frac", 2.0),
        ("coherence_frames", 0.0),
        ("jitter_rms", -2.0),
        ("drift_px", float("inf")),
        ("profile", "sinusoidal"),
        ("worsen_at", 1.5),
        ("full_well", 0.0),
        ("read_noise", -1.0),
        ("adc_bits", 8),
        ("adc_bits", True),
    ],
)
def test_params_checks_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SeeingParams(**{field: value})


def test_bad_arguments() -> None:
    params = SeeingParams()
    canvas = _canvas(params, 3, 0)
    with pytest.raises(ValueError, match="seeing"):
        seeing_params("awful")
    with pytest.raises(ValueError, match="unknown seeing parameter"):
        seeing_params("normal", blur=1.0)
    with pytest.raises(ValueError, match="frames"):
        iter_frames(canvas, frames=0, params=params, seed=0)
    with pytest.raises(ValueError, match="seed"):
        iter_frames(canvas, frames=2, params=params, seed=-3)
    with pytest.raises(ValueError, match="bits"):
        iter_frames(canvas, frames=2, params=params, seed=0, bits=12)
    with pytest.raises(ValueError, match="margin"):
        iter_frames(canvas, frames=2, params=params, seed=0, frame_shape=(H + 20, W))
    with pytest.raises(ValueError, match="scene_image"):
        iter_frames((canvas * 255).astype(np.uint8), frames=2, params=params, seed=0)
    with pytest.raises(ValueError, match="params"):
        iter_frames(canvas, frames=2, params={"warp_rms": 1}, seed=0)  # type: ignore[arg-type]
    # the default frame shape is what the margin leaves
    frame = next(iter_frames(canvas, frames=3, params=params, seed=0))
    assert frame.shape == (H, W)
