"""Band-limited phase correlation of image patches, batched, with cached targets.

Both global alignment and the per-alignment-point shifts measure a translation between a
patch of a frame and a patch of a target by phase correlation: the normalised
cross-power spectrum, multiplied by a Gaussian low-pass, is transformed back, and the
peak is located to sub-pixel precision by a parabola fitted to the logarithm of the three
samples around it in each axis. The low-pass makes the correlation peak a sampled
Gaussian (of ``peak_sigma`` pixels), for which that fit is unbiased, and keeps photon
noise out of the estimate. The target's windowed spectrum is computed once and reused
for every frame (:class:`Target`).

At low signal-to-noise plain whitening gives every frequency the same say, also the many
where the patch holds nothing but photon noise, and the peak drowns. So the whitened
cross-power spectrum is further weighted by the expected signal-to-noise of each
frequency, a Wiener taper ``S / (S + N)``: ``N`` is the patch's white noise floor,
measured on the patch itself (the median power of its highest frequencies, where seeing
leaves no signal), ``S`` the signal power: the target's spectrum less its own noise
floor, scaled to the patch's signal (its power above the noise floor, summed), so that
the units and the window of the patch do not matter. Each peak is also given in units
of its noise (:attr:`Shifts.snr`): with the weights ``c`` of the frequencies, a
pure-noise patch gives a correlation surface of standard deviation ``sqrt(sum c**2)``
against a perfect match's ``sum c``, so the test of a peak can be calibrated against
noise instead of a fixed strength.

Shift convention: a measured shift ``(dy, dx)`` means the patch content sits at
``target(y - dy, x - dx)``, i.e. the frame is displaced by ``+(dy, dx)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from live_stack.fft import irfft2, rfft2

#: Small constant keeping the spectrum normalisation finite on empty frequencies.
_EPS = 1e-12
#: The noise floor of a patch is measured where both frequencies are at least this many
#: cycles per pixel (the corner of the spectrum: no signal after the seeing, and away
#: from the axes, where an unwindowed patch's edges leak).
NOISE_BAND = 0.3
#: Median over mean of exponentially distributed powers (the noise's): ln 2.
_MEDIAN_OF_EXP = float(np.log(2.0))
#: The correlation surface is computed only in the search window (two small matrix
#: products) when the window's side is at most the patch side divided by this; a larger
#: window is cheaper by the whole inverse transform.
PRUNE_SHARE = 3


@lru_cache(maxsize=64)
def _wrapped(n: int, radius: int) -> np.ndarray:
    """Indices ``-radius..radius`` wrapped into ``0..n-1`` (cached)."""
    idx = np.arange(-radius, radius + 1) % n
    idx.setflags(write=False)
    return idx


@lru_cache(maxsize=16)
def hann2d(size: int) -> np.ndarray:
    """Separable 2-D Hann window of ``size x size`` (float32, cached; do not modify)."""
    w = np.hanning(size + 2)[1:-1].astype(np.float32)
    win = np.outer(w, w)
    win.setflags(write=False)
    return win


@lru_cache(maxsize=32)
def tukey2d(size: int, taper: float) -> np.ndarray:
    """Separable 2-D Tukey window of ``size x size`` (float32, cached; do not modify):
    flat but for a cosine taper over ``taper / 2`` of the side at each edge; ``taper``
    1 is the Hann window (:func:`hann2d`).

    A Hann window gives the patch's centre its whole weight and leaves little of the
    rest (the sum of its squares is 0.375 of the side in each axis, so about a seventh of
    the pixels count); a flatter window keeps more of a faint patch's signal while its
    taper still keeps the patch's edges out of the spectrum.
    """
    if not 0.0 < taper <= 1.0:
        raise ValueError(f"taper must be in (0, 1], got {taper}")
    if taper == 1.0:
        return hann2d(size)
    x = np.arange(1, size + 1) / (size + 1.0)  # as hann2d: the edges' zeros left out
    w = np.ones(size)
    half = taper / 2.0
    lo, hi = x < half, x > 1.0 - half
    w[lo] = 0.5 * (1.0 - np.cos(np.pi * x[lo] / half))
    w[hi] = 0.5 * (1.0 - np.cos(np.pi * (1.0 - x[hi]) / half))
    win = np.outer(w, w).astype(np.float32)
    win.setflags(write=False)
    return win


@lru_cache(maxsize=16)
def gaussian_lowpass(size: int, sigma: float) -> np.ndarray:
    """Real-FFT-domain Gaussian whose inverse transform has ``sigma`` pixels (cached)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    g = np.exp(-2.0 * np.pi**2 * sigma**2 * (fy**2 + fx**2)).astype(np.float32)
    g.setflags(write=False)
    return g


@lru_cache(maxsize=16)
def _noise_band(size: int) -> tuple[slice, slice]:
    """Rows and columns of the half-spectrum's noise band (see NOISE_BAND): one block,
    the frequencies of at least NOISE_BAND cycles per pixel being contiguous in both."""
    fy = np.abs(np.fft.fftfreq(size))
    fx = np.fft.rfftfreq(size)
    rows, cols = np.flatnonzero(fy >= NOISE_BAND), np.flatnonzero(fx >= NOISE_BAND)
    if not len(rows) or not len(cols):
        return slice(0, 0), slice(0, 0)
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


@lru_cache(maxsize=16)
def _mirror(size: int) -> np.ndarray:
    """Weights of the half-spectrum's columns in sums over the whole spectrum (cached)."""
    kx = np.arange(size // 2 + 1)
    w = np.where((kx == 0) | (2 * kx == size), 1.0, 2.0).astype(np.float32)
    w.setflags(write=False)
    return w


def noise_floor(spectra: np.ndarray, magnitude: np.ndarray | None = None) -> np.ndarray:
    """White-noise power per frequency of half-spectra ``(k, n, n // 2 + 1)``: ``(k,)``.

    The mean power of the noise, from the median power in the spectrum's corner (see
    :data:`NOISE_BAND`). ``magnitude``, the spectra's ``abs`` if the caller has it,
    saves taking it again.
    """
    rows, cols = _noise_band(spectra.shape[-2])
    corner = (np.abs(spectra[:, rows, cols]) if magnitude is None
              else magnitude[:, rows, cols])
    power = np.square(corner, dtype=np.float64).reshape(len(spectra), -1)
    return np.median(power, axis=1) / _MEDIAN_OF_EXP


def _prepare(patches: np.ndarray, taper: float = 1.0) -> np.ndarray:
    """Mean-subtract and window (:func:`tukey2d`) a batch of square patches ``(..., n, n)``."""
    p = patches.astype(np.float32, copy=True)
    p -= p.mean(axis=(-2, -1), dtype=np.float32, keepdims=True)
    p *= tukey2d(p.shape[-1], taper)
    return p


@dataclass(frozen=True)
class Target:
    """A batch of target patches prepared for correlation.

    Attributes
    ----------
    spectrum : numpy.ndarray
        complex64 ``(m, n, n // 2 + 1)``: the conjugate of each windowed target's
        normalised spectrum times the low-pass filter.
    size : int
        Patch side ``n``.
    norm : float
        Peak height of a perfect match, used to express peak strengths in ``[0, 1]``
        (without the signal-to-noise weights).
    power : numpy.ndarray or None
        float32 ``(m, n, n // 2 + 1)``: each target's signal power per frequency (its
        windowed spectrum's power less its noise floor, at least 0) over its sum, for
        the signal-to-noise weights; None: plain whitening.
    spread : float
        The root of the summed squared low-pass (whole spectrum, zero frequency left
        out): a pure-noise surface's standard deviation times ``n**2`` (unweighted).
    lowpass : numpy.ndarray or None
        float32 ``(n, n // 2 + 1)`` the low-pass filter (read-only).
    """

    spectrum: np.ndarray
    size: int
    norm: float
    power: np.ndarray | None = None
    spread: float = 1.0
    lowpass: np.ndarray | None = None


def make_target(patches: np.ndarray, *, peak_sigma: float = 1.0,
                weighted: bool = False, taper: float = 1.0) -> Target:
    """Prepare target patches ``(m, n, n)`` (or one ``(n, n)``) for :func:`correlate`.

    Parameters
    ----------
    patches : numpy.ndarray
        Square patches, float or integer.
    peak_sigma : float
        Width in pixels of the correlation peak after the low-pass filter.
    weighted : bool
        Weight the frequencies by their expected signal-to-noise (the module docstring);
        else plain whitening.
    taper : float
        The window of the target patches (:func:`tukey2d`): 1, a Hann window.

    Returns
    -------
    Target
    """
    patches = np.asarray(patches)
    if patches.ndim == 2:
        patches = patches[None]
    if patches.ndim != 3 or patches.shape[1] != patches.shape[2]:
        raise ValueError(f"patches must be square, (m, n, n); got shape {patches.shape}")
    n = patches.shape[-1]
    spec = rfft2(_prepare(patches, taper))
    power = None
    if weighted:
        floor = noise_floor(spec)
        power = spec.real**2 + spec.imag**2
        power -= floor[:, None, None].astype(power.dtype)
        np.maximum(power, 0.0, out=power)
        total = (power * _mirror(n)).sum(axis=(1, 2), keepdims=True)
        power = (power / np.maximum(total, _EPS)).astype(np.float32)
    spec = np.conj(spec) / (np.abs(spec) + _EPS)
    low = gaussian_lowpass(n, peak_sigma)
    spec = (spec * low).astype(np.complex64)
    # Peak of the inverse real FFT of the low-pass itself (full Hermitian sum / n^2).
    norm = float(irfft2(low.astype(np.complex128), (n, n))[0, 0])
    low2 = np.square(low, dtype=np.float64) * _mirror(n)
    spread = float(np.sqrt(low2.sum() - low2[0, 0]))
    return Target(spectrum=spec, size=n, norm=norm, power=power, spread=spread, lowpass=low)


@dataclass(frozen=True)
class Shifts:
    """Result of :func:`correlate`.

    Attributes
    ----------
    dy, dx : numpy.ndarray
        float64 ``(m,)`` sub-pixel shift of each patch against its target.
    strength : numpy.ndarray
        float64 ``(m,)`` peak height relative to a perfect match (about 1 for identical
        content, near 0 for unrelated content).
    snr : numpy.ndarray or None
        float64 ``(m,)`` peak height in standard deviations of the correlation surface
        of a pure-noise patch with the same frequency weights (``strength`` times the
        square root of their effective number); a pure-noise patch's highest peak in the
        search window is below 4.5 but for about one in a thousand.
    """

    dy: np.ndarray
    dx: np.ndarray
    strength: np.ndarray
    snr: np.ndarray | None = None


def correlate(
    patches: np.ndarray,
    target: Target,
    *,
    index: np.ndarray | None = None,
    max_shift: float | None = None,
    taper: float = 1.0,
) -> Shifts:
    """Measure the shift of each patch against its target.

    Parameters
    ----------
    patches : numpy.ndarray
        ``(k, n, n)`` frame patches (or one ``(n, n)``).
    target : Target
        Prepared targets; patch ``j`` is compared with target ``index[j]``.
    index : numpy.ndarray, optional
        ``(k,)`` target index of each patch; default ``arange(k)``.
    max_shift : float, optional
        Search radius in pixels; default ``n // 2 - 2``.
    taper : float
        The patches' window (:func:`tukey2d`; the target's is its own).

    Returns
    -------
    Shifts
    """
    patches = np.asarray(patches)
    if patches.ndim == 2:
        patches = patches[None]
    k, n = patches.shape[0], target.size
    if patches.shape[1:] != (n, n):
        raise ValueError(f"patches must be (k, {n}, {n}) to match the target, got {patches.shape}")
    idx = np.arange(k) if index is None else np.asarray(index)
    spec = rfft2(_prepare(patches, taper))
    return correlate_spectra(spec, target, index=idx, max_shift=max_shift)


def correlate_spectra(
    spectra: np.ndarray,
    target: Target,
    *,
    index: np.ndarray | None = None,
    max_shift: float | None = None,
) -> Shifts:
    """:func:`correlate` on patches already transformed with :func:`~live_stack.fft.rfft2`.

    The patches need not be windowed (the target is): the stacker transforms each patch
    once and uses the same spectrum to measure its shift and to stack it. Their mean is
    ignored (the zero frequency is left out).

    Parameters
    ----------
    spectra : numpy.ndarray
        complex ``(k, n, n // 2 + 1)``.
    target, index, max_shift
        As for :func:`correlate`.

    Returns
    -------
    Shifts
    """
    spec = np.asarray(spectra)
    k, n = spec.shape[0], target.size
    if spec.shape[1:] != (n, n // 2 + 1):
        raise ValueError(f"spectra must be (k, {n}, {n // 2 + 1}), got {spec.shape}")
    idx = np.arange(k) if index is None else np.asarray(index)
    cross = target.spectrum[idx]  # a gathered copy: changed in place below
    cross *= spec
    # whiten: multiply by 1 / |spec| (dividing the complex array by the real one costs
    # about 2.5 times as much: a complex division per element)
    inv = np.abs(spec).astype(np.float32, copy=False)
    weights = None if target.power is None else _snr_weights(spec, inv, target, idx)
    inv += _EPS
    np.reciprocal(inv, out=inv)
    if weights is not None:
        inv *= weights  # one pass over the complex array instead of two
    cross *= inv
    cross[:, 0, 0] = 0.0
    limit = n // 2 - 2 if max_shift is None else int(np.ceil(max_shift)) + 1
    limit = max(1, min(limit, n // 2 - 2))
    # the search window around zero shift, with a one-pixel rim for the sub-pixel fit
    wrap = _wrapped(n, limit + 1)
    side = len(wrap)
    if side * PRUNE_SHARE <= n:
        win = _inverse_window(cross, n, limit + 1)
    else:
        surf = irfft2(cross, (n, n))
        win = surf[:, wrap[:, None], wrap[None, :]]
    inner = win[:, 1:-1, 1:-1].reshape(k, -1)
    py, px = np.divmod(inner.argmax(axis=1), side - 2)
    py += 1
    px += 1
    rows = np.arange(k)
    peak = win[rows, py, px]
    dy = _log_parabola(win[rows, py - 1, px], peak, win[rows, py + 1, px])
    dx = _log_parabola(win[rows, py, px - 1], peak, win[rows, py, px + 1])
    sy = py - (limit + 1) + dy
    sx = px - (limit + 1) + dx
    n2 = float(n * n)
    if weights is None:
        strength = peak / target.norm if target.norm > 0 else peak
        snr = peak * (n2 / target.spread)
    else:
        # the magnitudes of the frequencies' terms (the weights times the low-pass):
        # their sum is a perfect match's peak, the root of their squares' sum a
        # pure-noise surface's standard deviation (both times n^2); ``weights`` is no
        # longer needed and takes them
        weights *= target.lowpass
        weights[:, 0, 0] = 0.0
        mirror = _mirror(n)
        total = (weights @ mirror).sum(axis=1, dtype=np.float64)
        np.square(weights, out=weights)
        spread = np.sqrt((weights @ mirror).sum(axis=1, dtype=np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):
            strength = np.where(total > 0, peak * n2 / total, 0.0)
            snr = np.where(spread > 0, peak * n2 / spread, 0.0)
    return Shifts(dy=sy.astype(np.float64), dx=sx.astype(np.float64),
                  strength=np.asarray(strength, dtype=np.float64),
                  snr=np.asarray(snr, dtype=np.float64))


def _snr_weights(spec: np.ndarray, mag: np.ndarray, target: Target,
                 idx: np.ndarray) -> np.ndarray:
    """The Wiener taper ``S / (S + N)`` of each patch's frequencies, ``(k, n, n//2+1)``.

    ``mag`` is ``|spec|``. ``N`` is each patch's noise floor; ``S`` the target's signal
    power shape scaled to the patch's signal power (its power above the floor, summed).
    """
    n = target.size
    floor = noise_floor(spec, mag)
    mirror = _mirror(n)
    # sums over the whole spectrum: the half-spectrum's columns weighted (a matrix-vector
    # product per row, in float32), then its rows added in float64
    power = (np.square(mag) @ mirror).sum(axis=1, dtype=np.float64)
    power -= mag[:, 0, 0].astype(np.float64) ** 2  # the mean is no signal for the shift
    count = n * n - 1
    signal = np.maximum(power - count * floor, 0.0)  # the patch's summed signal power
    s = target.power[idx]  # a gathered copy, scaled in place
    s *= (signal / np.maximum(floor, _EPS)).astype(np.float32)[:, None, None]
    den = np.add(s, np.float32(1.0))
    np.divide(s, den, out=s)
    return s


def _inverse_window(cross: np.ndarray, n: int, radius: int) -> np.ndarray:
    """The inverse real transform of half-spectra ``(k, n, n // 2 + 1)``, only at shifts
    ``-radius..radius`` in each axis: ``(k, 2 * radius + 1, 2 * radius + 1)``.

    Two small matrix products (the complex inverse along y, then the real part of the
    inverse along x, Hermitian halves counted twice) instead of the whole transform:
    about 4 times less work for an 80-pixel patch and a search of 8 pixels.
    """
    ey, exr, exi = _window_bases(n, radius)
    half = np.matmul(ey, cross)  # (k, side, n // 2 + 1)
    win = np.matmul(half.real, exr)
    win -= np.matmul(half.imag, exi)
    return win


@lru_cache(maxsize=16)
def _window_bases(n: int, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bases of :func:`_inverse_window` (cached, read-only): complex64 ``(side, n)`` for
    y, float32 real and imaginary ``(n // 2 + 1, side)`` for x, with the ``1 / n**2``
    normalisation of the inverse transform."""
    at = np.arange(-radius, radius + 1)
    ey = np.exp(2j * np.pi * np.outer(at, np.arange(n)) / n).astype(np.complex64)
    kx = np.arange(n // 2 + 1)
    twice = np.where((kx == 0) | (2 * kx == n), 1.0, 2.0)  # the half-spectrum's mirror
    ex = twice[:, None] * np.exp(2j * np.pi * np.outer(kx, at) / n) / (n * n)
    bases = (ey, np.ascontiguousarray(ex.real, dtype=np.float32),
             np.ascontiguousarray(ex.imag, dtype=np.float32))
    for b in bases:
        b.setflags(write=False)
    return bases


def _log_parabola(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Vertex offset of the parabola through log(a), log(b), log(c) at -1, 0, +1."""
    floor = np.maximum(b * 1e-3, 1e-12)
    la = np.log(np.maximum(a, floor))
    lb = np.log(np.maximum(b, floor))
    lc = np.log(np.maximum(c, floor))
    den = la - 2 * lb + lc
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(den < 0, 0.5 * (la - lc) / den, 0.0)
    return np.clip(off, -0.5, 0.5)


def fourier_shift(spectra: np.ndarray, dy: np.ndarray, dx: np.ndarray, *,
                  overwrite: bool = False) -> np.ndarray:
    """Undo measured shifts ``(dy, dx)`` on real-FFT spectra ``(k, ..., n, n // 2 + 1)``.

    The result is the spectrum of ``patch(y + dy, x + dx)`` (circularly). The phase ramp
    is separable, so it is built from two small vectors per patch instead of an
    exponential over the whole spectrum. ``overwrite``: the result is written into
    ``spectra`` (complex64) and returned, instead of a new array.
    """
    n = spectra.shape[-2]
    k = spectra.shape[0]
    fy = np.fft.fftfreq(n)
    fx = np.fft.rfftfreq(n)
    ey = np.exp((2j * np.pi) * np.asarray(dy, dtype=np.float64).reshape(k, 1) * fy)
    ex = np.exp((2j * np.pi) * np.asarray(dx, dtype=np.float64).reshape(k, 1) * fx)
    lead = (k,) + (1,) * (spectra.ndim - 3)
    ey = ey.astype(np.complex64).reshape(lead + (n, 1))
    if overwrite:
        if spectra.dtype != np.complex64:
            raise ValueError(f"spectra must be complex64 to be overwritten, got {spectra.dtype}")
        out = spectra
        out *= ey
    else:
        out = spectra * ey
    out *= ex.astype(np.complex64).reshape(lead + (1, len(fx)))
    return out
