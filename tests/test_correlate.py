"""Band-limited phase correlation: sub-pixel shifts with known answers, strengths, errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft as sfft

from live_stack import correlate as correlate_module
from live_stack.correlate import correlate, correlate_spectra, fourier_shift, make_target

#: Patch side of the correlation tests.
N = 128
#: Noise (fraction of full scale) added to the shifted patches.
NOISE = 0.01
#: Largest error of a recovered sub-pixel shift, pixels.
TOL = 0.1

SHIFTS = [(0.0, 0.0), (0.3, -0.7), (0.5, 0.5), (-2.25, 1.6), (7.45, -11.8), (-20.1, 17.35)]


@pytest.fixture(scope="module")
def moon(scene_canvas):
    return scene_canvas("moon", 400, 400)



@pytest.mark.parametrize("dtype", ["float32", "uint8", "uint16"])
@pytest.mark.parametrize(("dy", "dx"), SHIFTS)
def test_subpixel_shift_recovered(moon, shifted_view, as_dtype, dtype, dy, dx) -> None:
    target = make_target(shifted_view(moon, 0.0, 0.0, (N, N)))
    frame = as_dtype(shifted_view(moon, dy, dx, (N, N), noise=NOISE, seed=3), dtype)
    r = correlate(frame, target)
    assert r.dy[0] == pytest.approx(dy, abs=TOL)
    assert r.dx[0] == pytest.approx(dx, abs=TOL)
    assert r.strength[0] > 0.3


def test_subpixel_precision_over_many_fractions(moon, shifted_view) -> None:
    """No bias towards whole pixels: errors stay small over a sweep of fractions."""
    target = make_target(shifted_view(moon, 0.0, 0.0, (N, N)))
    fractions = np.linspace(-1.0, 1.0, 17)
    frames = np.stack([shifted_view(moon, f, -0.5 * f, (N, N), noise=NOISE, seed=i)
                       for i, f in enumerate(fractions)])
    r = correlate(frames, target, index=np.zeros(len(frames), dtype=np.intp))
    err = np.hypot(r.dy - fractions, r.dx + 0.5 * fractions)
    assert err.max() < TOL
    assert np.sqrt(np.mean(err**2)) < TOL / 2


def test_batch_with_index_compares_each_patch_with_its_target(moon, shifted_view) -> None:
    regions = [(-100, -100), (-100, 100), (100, 0)]  # three different parts of the scene
    targets = np.stack([shifted_view(moon, ry, rx, (N, N)) for ry, rx in regions])
    t = make_target(targets)
    true = [(1.25, -0.5), (-3.4, 2.2), (0.6, 5.1), (2.0, 2.0)]
    index = np.array([2, 0, 1, 2])
    frames = np.stack([shifted_view(moon, regions[i][0] + sy, regions[i][1] + sx, (N, N),
                                    noise=NOISE, seed=k)
                       for k, (i, (sy, sx)) in enumerate(zip(index, true, strict=True))])
    r = correlate(frames, t, index=index)
    assert np.allclose(r.dy, [s[0] for s in true], atol=TOL)
    assert np.allclose(r.dx, [s[1] for s in true], atol=TOL)
    # the same patches against the wrong targets: weak peaks
    wrong = correlate(frames, t, index=(index + 1) % 3)
    assert wrong.strength.max() < 0.5 * r.strength.min()


def test_strength_high_for_same_low_for_unrelated(moon, shifted_view) -> None:
    ref = shifted_view(moon, 0.0, 0.0, (N, N))
    t = make_target(ref)
    same = correlate(ref, t)
    assert same.strength[0] == pytest.approx(1.0, abs=0.05)
    assert same.dy[0] == pytest.approx(0.0, abs=0.01) and same.dx[0] == pytest.approx(0.0, abs=0.01)
    noise = np.random.default_rng(5).normal(0.5, 0.1, (N, N))
    other = shifted_view(moon, 110.0, -115.0, (N, N))  # another region of the scene
    r = correlate(np.stack([noise, other]), t, index=np.zeros(2, dtype=np.intp))
    assert r.strength.max() < 0.15


def test_max_shift_bounds_the_search(moon, shifted_view) -> None:
    t = make_target(shifted_view(moon, 0.0, 0.0, (N, N)))
    frame = shifted_view(moon, 10.0, 0.0, (N, N))
    assert correlate(frame, t).dy[0] == pytest.approx(10.0, abs=TOL)
    limited = correlate(frame, t, max_shift=4)
    assert abs(limited.dy[0]) <= 5.5  # the peak is not found beyond the radius (+1 px rim)


@pytest.mark.parametrize(("dy", "dx"), [(0.0, 0.0), (1.3, -2.7), (-6.45, 4.2)])
def test_correlate_spectra_of_unwindowed_patches(moon, shifted_view, dy, dx) -> None:
    """The stacker's path: one rfft2 of the raw patch serves both measuring and stacking."""
    t = make_target(shifted_view(moon, 0.0, 0.0, (N, N)))
    frame = shifted_view(moon, dy, dx, (N, N), noise=NOISE, seed=4)[None]
    r = correlate_spectra(sfft.rfft2(frame), t)
    assert r.dy[0] == pytest.approx(dy, abs=TOL) and r.dx[0] == pytest.approx(dx, abs=TOL)
    # the unwindowed patch's edges leak: a lower peak than correlate's, still well clear
    # of unrelated content
    assert r.strength[0] > 0.3
    other = shifted_view(moon, 100.0, -100.0, (N, N))[None]
    assert correlate_spectra(sfft.rfft2(other), t).strength[0] < 0.15
    with pytest.raises(ValueError, match="spectra"):
        correlate_spectra(np.zeros((1, N, N), np.complex64), t)


@pytest.mark.parametrize(("dy", "dx"), [(3, -2), (-5, 7)])
def test_fourier_shift_whole_pixels_is_a_roll(dy, dx) -> None:
    rng = np.random.default_rng(1)
    patch = rng.random((2, 32, 32)).astype(np.float32)
    spec = sfft.rfft2(patch).astype(np.complex64)
    out = sfft.irfft2(fourier_shift(spec, np.full(2, dy), np.full(2, dx)), s=(32, 32))
    # the spectrum of patch(y + dy, x + dx)
    assert np.allclose(out, np.roll(patch, (-dy, -dx), axis=(1, 2)), atol=1e-5)


def test_fourier_shift_undone_exactly() -> None:
    rng = np.random.default_rng(2)
    patch = rng.random((3, 1, 40, 40)).astype(np.float32)  # (k, C, n, n) layout works too
    spec = sfft.rfft2(patch).astype(np.complex64)
    dy, dx = np.array([0.3, -1.7, 2.5]), np.array([-0.45, 0.9, 3.25])
    there = fourier_shift(spec, dy, dx)
    back = sfft.irfft2(fourier_shift(there, -dy, -dx), s=(40, 40))
    assert np.allclose(back, patch, atol=1e-5)
    # a genuine fractional shift changes the pixels
    assert not np.allclose(sfft.irfft2(there, s=(40, 40)), patch, atol=1e-2)


def test_correlation_measures_what_fourier_shift_undoes(moon, shifted_view) -> None:
    """The two conventions agree: undoing a measured shift re-aligns the patch."""
    ref = shifted_view(moon, 0.0, 0.0, (N, N))
    frame = shifted_view(moon, 2.3, -1.6, (N, N))
    r = correlate(frame, make_target(ref))
    spec = sfft.rfft2(frame[None])
    undone = sfft.irfft2(fourier_shift(spec, r.dy, r.dx), s=(N, N))[0]
    inner = (slice(16, -16), slice(16, -16))
    assert np.abs(undone[inner] - ref[inner]).mean() < 0.02 * np.abs(ref[inner]).mean()


@pytest.mark.parametrize("shape", [(4, 32, 30), (5,), (2, 3, 4, 4)])
def test_make_target_rejects_non_square(shape) -> None:
    with pytest.raises(ValueError, match="patches"):
        make_target(np.zeros(shape))


def test_correlate_rejects_wrong_patch_size() -> None:
    t = make_target(np.random.default_rng(0).random((32, 32)))
    with pytest.raises(ValueError, match=r"patches must be \(k, 32, 32\)"):
        correlate(np.zeros((2, 16, 16)), t)


@pytest.mark.parametrize("n", [64, 80, 81, 128])
@pytest.mark.parametrize("radius", [1, 5, 10])
def test_search_window_equals_the_whole_inverse_transform_there(n, radius) -> None:
    """The matrix-product inverse over the search window is the inverse FFT's window."""
    rng = np.random.default_rng(n + radius)
    spec = sfft.rfft2(rng.random((3, n, n)).astype(np.float32)).astype(np.complex64)
    at = np.arange(-radius, radius + 1) % n
    whole = sfft.irfft2(spec, s=(n, n))[:, at[:, None], at[None, :]]
    win = correlate_module._inverse_window(spec, n, radius)
    assert win.shape == (3, 2 * radius + 1, 2 * radius + 1)
    np.testing.assert_allclose(win, whole, atol=2e-6 * np.abs(whole).max())


def test_pruned_and_whole_search_find_the_same_shifts(moon, shifted_view, monkeypatch) -> None:
    t = make_target(shifted_view(moon, 0.0, 0.0, (N, N)))
    frames = np.stack([shifted_view(moon, dy, dx, (N, N), noise=NOISE, seed=7)
                       for dy, dx in [(1.3, -2.7), (-6.45, 4.2), (0.2, 0.1)]])
    spec = sfft.rfft2(frames)
    one = np.zeros(len(frames), dtype=np.intp)
    pruned = correlate_spectra(spec, t, index=one, max_shift=8)
    monkeypatch.setattr(correlate_module, "PRUNE_SHARE", N)  # never prune
    whole = correlate_spectra(spec, t, index=one, max_shift=8)
    np.testing.assert_allclose(pruned.dy, whole.dy, atol=1e-4)
    np.testing.assert_allclose(pruned.dx, whole.dx, atol=1e-4)
    np.testing.assert_allclose(pruned.strength, whole.strength, rtol=1e-4)
    assert pruned.dy[1] == pytest.approx(-6.45, abs=TOL)


def test_fourier_shift_overwrite_writes_into_the_input() -> None:
    rng = np.random.default_rng(3)
    spec = sfft.rfft2(rng.random((2, 24, 24)).astype(np.float32)).astype(np.complex64)
    dy, dx = np.array([0.5, -1.25]), np.array([2.0, 0.3])
    expected = fourier_shift(spec, dy, dx)
    out = fourier_shift(spec, dy, dx, overwrite=True)
    assert out is spec
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(ValueError, match="complex64"):
        fourier_shift(spec.astype(np.complex128), dy, dx, overwrite=True)


# --- low signal (issue 13) ---------------------------------------------------------------

#: Patch side of the stacker (AP box 64 plus twice the search of 8).
AP_PATCH = 80
#: Electrons at full brightness of the low-signal patches, their seeing blur (px) and
#: the known shift.
LOW_ELECTRONS = 500.0
LOW_BLUR = 1.5
LOW_SHIFT = (1.3, -0.7)


def _mare_pairs(scene_canvas, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` (reference, frame) patches of the low-contrast mare: the frame shifted by
    LOW_SHIFT, blurred and exposed at LOW_ELECTRONS; the reference 30 times brighter."""
    import cv2

    canvas = scene_canvas("mare", 600, 600)
    rng = np.random.default_rng(seed)
    n = AP_PATCH
    moved = cv2.warpAffine(np.ascontiguousarray(canvas, dtype=np.float32),
                           np.float32([[1, 0, LOW_SHIFT[1]], [0, 1, LOW_SHIFT[0]]]),
                           (600, 600), flags=cv2.INTER_CUBIC)
    blurred = cv2.GaussianBlur(moved, (0, 0), LOW_BLUR)
    refs, frames = [], []
    for y, x in rng.integers(100, 400, (count, 2)):
        ref = cv2.GaussianBlur(np.ascontiguousarray(canvas[y : y + n, x : x + n]), (0, 0), 1.0)
        refs.append(rng.poisson(ref * LOW_ELECTRONS * 30) / (LOW_ELECTRONS * 30))
        frames.append(rng.poisson(blurred[y : y + n, x : x + n] * LOW_ELECTRONS) / LOW_ELECTRONS)
    return np.asarray(refs, np.float32), np.asarray(frames, np.float32)


def test_snr_weights_measure_low_signal_shifts_better_than_whitening(scene_canvas) -> None:
    """On noisy patches of a 4 %-contrast mare at 500 electrons, the signal-to-noise
    weighted correlation is more accurate than plain whitening (the stacker's path:
    unwindowed patch spectra). Not to 0.2 px: issue 13 asks for that, and neither
    weighting reaches it on such patches."""
    refs, frames = _mare_pairs(scene_canvas, 120, seed=4)
    errors = {}
    for weighted in (False, True):
        target = make_target(refs, peak_sigma=1.2, weighted=weighted)
        r = correlate_spectra(sfft.rfft2(frames).astype(np.complex64), target, max_shift=8)
        errors[weighted] = np.hypot(r.dy - LOW_SHIFT[0], r.dx - LOW_SHIFT[1])
    # measured: median 0.43 against 0.54 px; within 0.5 px 61 % against 42 %
    assert np.median(errors[True]) < 0.85 * np.median(errors[False])
    assert np.mean(errors[True] < 0.5) > np.mean(errors[False] < 0.5) + 0.1


@pytest.mark.parametrize("weighted", [False, True])
def test_peak_snr_is_calibrated_against_noise(scene_canvas, weighted: bool) -> None:
    """Pure-noise patches: the highest peak in the search window stays under 5 noise
    standard deviations (the default local_min_snr); most real low-signal patches
    pass it."""
    refs, frames = _mare_pairs(scene_canvas, 200, seed=5)
    target = make_target(refs, peak_sigma=1.2, weighted=weighted)
    rng = np.random.default_rng(6)
    noise = (rng.poisson(0.55 * LOW_ELECTRONS, frames.shape) / LOW_ELECTRONS).astype(np.float32)
    null = correlate_spectra(sfft.rfft2(noise).astype(np.complex64), target, max_shift=8)
    real = correlate_spectra(sfft.rfft2(frames).astype(np.complex64), target, max_shift=8)
    assert null.snr.max() < 5.0
    if not weighted:  # the noise's own peaks: not a degenerate scale
        assert np.quantile(null.snr, 0.5) > 1.5
    else:  # no signal above the noise floor: mostly no weight at all
        assert np.mean(null.snr == 0.0) > 0.5
    assert np.mean(real.snr >= 5.0) > 0.5


def test_snr_weighted_shift_does_not_depend_on_units(scene_canvas) -> None:
    """The weights follow the patch's own signal and noise: the same patch in 8-bit
    codes or on the [0, 1] scale gives the same shift and peak."""
    refs, frames = _mare_pairs(scene_canvas, 4, seed=7)
    target = make_target(refs, peak_sigma=1.2, weighted=True)
    a = correlate(frames, target, max_shift=8)
    b = correlate(frames * 255.0, target, max_shift=8)
    assert np.allclose(a.dy, b.dy, atol=1e-4)
    assert np.allclose(a.snr, b.snr, rtol=1e-3)
