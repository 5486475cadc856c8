"""Scoring a stack against the simulator's truth, and a no-reference sharpness measure.

:func:`score` first registers the stack on the truth by a translation: the stack may be
cropped (smaller than the truth) and offset by up to tens of pixels. A central part of
the stack is located in the truth by normalised cross-correlation
(``cv2.matchTemplate``), the integer estimate is refined to sub-pixel precision by phase
correlation (``cv2.phaseCorrelate``) and polished by a few Lucas-Kanade (Gauss-Newton)
translation steps (which also fit a gain and offset, for the registration only). The
truth is then resampled onto the stack's pixel grid (Lanczos-3 interpolation with exact
weights; the stack itself is never resampled) and the two are compared on their overlap,
less a border:

* PSNR with a data range of 1.0 (images on the float32 ``[0, 1]`` scale);
* SSIM of Wang et al. (2004): Gaussian window of sigma 1.5 (11 x 11), K1 = 0.01,
  K2 = 0.03, computed in float64 and averaged over the compared area; colour images are
  compared channel by channel and the channel values averaged.

Nothing else is fitted by default. With ``fit_gain=True`` a linear gain and offset are
fitted (least squares, stack ~ gain * truth + offset over the compared area) and the
stack is corrected by that fit before the metrics; every image scored that way is
corrected by its own fit against the same truth, so comparisons stay fair. It is meant
for stacks that were stretched or normalised, and is reported in :class:`Score`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from live_stack.frames import luminance, to_float32

__all__ = ["Score", "gradient_energy", "noise_evenness", "psnr", "register", "score", "ssim"]

#: SSIM constants (Wang et al. 2004) for a data range of 1.0.
SSIM_K1 = 0.01
SSIM_K2 = 0.03
#: SSIM Gaussian window: sigma and size.
SSIM_SIGMA = 1.5
SSIM_WINDOW = 11
#: Fraction of the (common) image size used as the registration template.
TEMPLATE_FRACTION = 0.5
#: Lucas-Kanade refinement: most iterations, and the step (px) below which it stops.
LK_ITERATIONS = 10
LK_TOLERANCE = 1e-4
#: Lanczos kernel order of the sub-pixel shifts (2 * LANCZOS_A taps per axis).
LANCZOS_A = 3
#: Template standard deviation below which the stack counts as featureless.
FLAT_STD = 1e-6
#: Shifts this close to a whole pixel count as whole for the overlap (px).
SHIFT_EPS = 1e-6
#: Largest condition number of the registration's normal equations (else featureless).
MAX_CONDITION = 1e12
#: Pre-blur sigma (px) of the images the registration works on (noise robustness).
REGISTER_BLUR = 1.0
#: Default pre-blur sigma (px) of :func:`gradient_energy`.
GRADIENT_BLUR = 1.0
#: :func:`noise_evenness`: default tile side (px), the lowest frequency (cycles per pixel,
#: both axes) of the band the noise is measured in, and the share of the truth's
#: brightest tile below which a tile counts as sky and is left out.
EVENNESS_TILE = 32
EVENNESS_BAND = 0.3
EVENNESS_MIN_LEVEL = 0.1


@dataclass(frozen=True)
class Score:
    """The result of :func:`score`."""

    psnr: float  # dB, data range 1.0 (inf for identical images)
    ssim: float  # mean SSIM over the compared area (1.0 for identical images)
    shift_y: float  # stack[y, x] matches truth[y + shift_y, x + shift_x]
    shift_x: float
    height: int  # size of the compared area, pixels
    width: int
    gain: float = 1.0  # fitted gain (1.0 unless fit_gain)
    offset: float = 0.0  # fitted offset (0.0 unless fit_gain)


def _as_float(image: np.ndarray, name: str) -> np.ndarray:
    f = to_float32(image, name=name)
    if not np.isfinite(f).all():
        raise ValueError(f"{name} has non-finite values")
    return f


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two float images of equal shape on the ``[0, 1]`` scale (inf if equal)."""
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def _ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    win = (SSIM_WINDOW, SSIM_WINDOW)

    def blur(x: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(x, win, SSIM_SIGMA, borderType=cv2.BORDER_REFLECT)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return num / den


def ssim(a: np.ndarray, b: np.ndarray, *, border: int = 0) -> float:
    """Mean SSIM of two float images of equal shape on the ``[0, 1]`` scale.

    The SSIM map is computed over the whole images (reflecting at the edges) and
    averaged without the outer ``border`` pixels; colour images are averaged over the
    channels too.
    """
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    if border < 0 or 2 * border >= min(a.shape[:2]):
        raise ValueError(f"border {border} leaves nothing of a {a.shape[1]}x{a.shape[0]} image")
    if a.ndim == 3:
        maps = [_ssim_map(a[:, :, c], b[:, :, c]) for c in range(a.shape[2])]
        m = np.mean(maps, axis=0)
    else:
        m = _ssim_map(a, b)
    if border:
        m = m[border:-border, border:-border]
    return float(m.mean())


def _lanczos_taps(frac: float) -> np.ndarray:
    """Normalised Lanczos weights of the samples at offsets ``-a+1 .. a`` from the
    sample below a point ``frac`` (0 <= frac < 1) of a pixel further on."""
    m = np.arange(-LANCZOS_A + 1, LANCZOS_A + 1, dtype=np.float64)
    d = frac - m
    taps = np.sinc(d) * np.sinc(d / LANCZOS_A)
    return taps / taps.sum()


def _shift_image(image: np.ndarray, shape: tuple[int, int], sy: float, sx: float) -> np.ndarray:
    """``out[y, x] = image(y + sy, x + sx)`` for ``out`` of ``shape``: the whole-pixel
    part by indexing, the fraction by separable Lanczos interpolation with exact weights
    (OpenCV's remap and warpAffine round positions to 1/32 pixel); edges replicated."""
    hs, ws = shape
    ht, wt = image.shape[:2]
    iy, ix = math.floor(sy), math.floor(sx)
    before, after = LANCZOS_A - 1, LANCZOS_A
    # rows iy - before .. iy + hs - 1 + after and likewise columns, padded as needed
    top, left = iy - before, ix - before
    bottom, right = iy + hs + after, ix + ws + after
    pads = (max(0, -top), max(0, bottom - ht), max(0, -left), max(0, right - wt))
    src = image
    if any(pads):
        src = cv2.copyMakeBorder(image, *pads, cv2.BORDER_REPLICATE)
    region = src[top + pads[0] : bottom + pads[0], left + pads[2] : right + pads[2]]
    ky = _lanczos_taps(sy - iy).astype(np.float32)
    kx = _lanczos_taps(sx - ix).astype(np.float32)
    out = cv2.sepFilter2D(
        np.ascontiguousarray(region, dtype=np.float32),
        -1,
        kx,
        ky,
        anchor=(before, before),
        borderType=cv2.BORDER_REPLICATE,
    )
    return out[before : before + hs, before : before + ws]


def truth_on(stack: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The truth's luminance moved onto the pixels of ``stack`` as :func:`score` compares
    them (registered by translation, :func:`register`; Lanczos-interpolated), NaN where
    it does not cover them: float32, ``stack``'s height and width."""
    s = luminance(_as_float(stack, "stack"))
    t = luminance(_as_float(truth, "truth"))
    sy, sx = register(s, t)
    ys, xs = _overlap(s.shape, t.shape, sy, sx)
    out = np.full(s.shape, np.nan, dtype=np.float32)
    out[ys, xs] = _shift_image(t, s.shape, sy, sx)[ys, xs]
    return out


def _overlap(
    stack_shape: tuple[int, int], truth_shape: tuple[int, int], sy: float, sx: float
) -> tuple[slice, slice]:
    """The stack pixels whose positions in the truth lie inside it (with one pixel to
    spare for the interpolation)."""
    (hs, ws), (ht, wt) = stack_shape, truth_shape
    y0 = max(0, math.ceil(-sy - SHIFT_EPS))
    x0 = max(0, math.ceil(-sx - SHIFT_EPS))
    y1 = min(hs, math.floor(ht - 1 - sy + SHIFT_EPS) + 1)
    x1 = min(ws, math.floor(wt - 1 - sx + SHIFT_EPS) + 1)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def register(stack: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Find the translation of ``stack`` in ``truth``.

    Parameters
    ----------
    stack, truth : numpy.ndarray
        Images (any dtype :func:`live_stack.frames.to_float32` takes; colour is reduced
        to luminance). The stack may be smaller than the truth.

    Returns
    -------
    tuple of float
        ``(shift_y, shift_x)`` such that ``stack[y, x]`` matches
        ``truth[y + shift_y, x + shift_x]``.

    Raises
    ------
    ValueError
        If the images cannot be registered (too small, featureless, or no overlap).
    """
    s = cv2.GaussianBlur(luminance(_as_float(stack, "stack")), (0, 0), REGISTER_BLUR)
    t = cv2.GaussianBlur(luminance(_as_float(truth, "truth")), (0, 0), REGISTER_BLUR)
    hs, ws = s.shape
    ht, wt = t.shape
    th = int(min(hs, ht) * TEMPLATE_FRACTION)
    tw = int(min(ws, wt) * TEMPLATE_FRACTION)
    if th < 8 or tw < 8:
        raise ValueError(f"stack ({ws}x{hs}) or truth ({wt}x{ht}) is too small to register")
    ty, tx = (hs - th) // 2, (ws - tw) // 2
    template = s[ty : ty + th, tx : tx + tw]
    if float(template.std()) < FLAT_STD:
        raise ValueError("stack has no structure at its centre to register on")
    corr = cv2.matchTemplate(t, template, cv2.TM_CCOEFF_NORMED)
    _, _, _, (bx, by) = cv2.minMaxLoc(corr)
    sy, sx = float(by - ty), float(bx - tx)

    # phase correlation of the overlapping parts at the integer shift
    ys, xs = _overlap((hs, ws), (ht, wt), sy, sx)
    a = s[ys, xs]
    b = t[ys.start + int(sy) : ys.stop + int(sy), xs.start + int(sx) : xs.stop + int(sx)]
    if min(a.shape) >= 16:
        window = cv2.createHanningWindow((a.shape[1], a.shape[0]), cv2.CV_64F)
        (px, py), _ = cv2.phaseCorrelate(a.astype(np.float64), b.astype(np.float64), window)
        # a(y, x) = b(y + r): phaseCorrelate(a, b) returns about +r (x first)
        if abs(px) < 1.0 and abs(py) < 1.0:
            sy += py
            sx += px

    # Lucas-Kanade polish (Gauss-Newton): minimise sum (s(y, x) - g t(y + sy, x + sx) - o)^2
    # over the shift and a gain g and offset o, so that a brightness difference between
    # stack and truth does not pull the shift
    for _ in range(LK_ITERATIONS):
        ys, xs = _overlap((hs, ws), (ht, wt), sy, sx)
        if ys.stop - ys.start < 8 or xs.stop - xs.start < 8:
            raise ValueError("stack and truth do not overlap")
        moved = _shift_image(t, (hs, ws), sy, sx)[ys, xs].astype(np.float64)
        gy, gx = np.gradient(moved)
        # drop the outer pixels, whose gradients are one-sided
        inner = (slice(1, -1), slice(1, -1))
        target = s[ys, xs].astype(np.float64)[inner].ravel()
        moved = moved[inner].ravel()
        gy, gx = gy[inner].ravel(), gx[inner].ravel()
        design = np.stack([gy, gx, moved, np.ones_like(moved)], axis=1)
        gain = _fit_gain(moved, target)
        normal = design.T @ design
        if np.linalg.cond(normal) > MAX_CONDITION:
            raise ValueError("stack has no structure to register on")
        residual = target - gain[0] * moved - gain[1]
        step = np.linalg.solve(normal, design.T @ residual)
        dy, dx = step[0] / gain[0], step[1] / gain[0]
        sy += dy
        sx += dx
        if abs(dy) < LK_TOLERANCE and abs(dx) < LK_TOLERANCE:
            break
    return sy, sx


def _fit_gain(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares ``y ~ gain * x + offset``; gain 1 if ``x`` or ``y`` is flat."""
    var = float(x.var())
    gain = float(((x - x.mean()) * (y - y.mean())).mean() / var) if var > 0 else 0.0
    if gain == 0.0:
        return 1.0, float(y.mean() - x.mean())
    return gain, float(y.mean() - gain * x.mean())


def score(
    stack: np.ndarray,
    truth: np.ndarray,
    *,
    border: int = 16,
    fit_gain: bool = False,
) -> Score:
    """Register ``stack`` on ``truth`` and measure PSNR and SSIM on the overlap.

    Parameters
    ----------
    stack : numpy.ndarray
        The image to score: uint8, uint16 or float ``[0, 1]``, ``(H, W)`` or
        ``(H, W, 3)``; at most as large as ``truth`` in each dimension, offset from it by
        at most a quarter of its size.
    truth : numpy.ndarray
        The reference (e.g. the simulator's ``truth.tif``), same number of channels.
    border : int
        Pixels left out of the comparison on each side of the overlap (>= 0).
    fit_gain : bool
        Fit and remove a linear gain and offset first (see the module docstring).

    Returns
    -------
    Score

    Raises
    ------
    ValueError
        For images of different channel counts, a stack larger than the truth, a bad
        ``border``, or images that cannot be registered or leave nothing to compare.
    """
    if isinstance(border, bool) or not isinstance(border, (int, np.integer)) or border < 0:
        raise ValueError(f"border must be an integer >= 0, got {border!r}")
    s = _as_float(stack, "stack")
    t = _as_float(truth, "truth")
    if s.ndim != t.ndim:
        raise ValueError(
            f"stack has shape {s.shape} but truth has shape {t.shape}: "
            "both must be mono or both colour"
        )
    if s.shape[0] > t.shape[0] or s.shape[1] > t.shape[1]:
        raise ValueError(
            f"stack ({s.shape[1]}x{s.shape[0]}) must not be larger than truth "
            f"({t.shape[1]}x{t.shape[0]})"
        )
    sy, sx = register(s, t)
    ys, xs = _overlap(s.shape[:2], t.shape[:2], sy, sx)
    h, w = ys.stop - ys.start - 2 * border, xs.stop - xs.start - 2 * border
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(
            f"the overlap of stack and truth less a {border}px border is {max(w, 0)}x"
            f"{max(h, 0)} pixels: too small to compare"
        )
    moved = _shift_image(t, s.shape[:2], sy, sx)
    a = s[ys, xs].astype(np.float64)
    b = moved[ys, xs].astype(np.float64)
    gain, offset = 1.0, 0.0
    if fit_gain:
        inner = (slice(border, border + h), slice(border, border + w))
        x, y = b[inner].ravel(), a[inner].ravel()
        if float(x.var()) == 0.0 or float(y.var()) == 0.0:
            raise ValueError("stack or truth is flat over the compared area: no gain to fit")
        gain, offset = _fit_gain(x, y)
        a = (a - offset) / gain
    # SSIM on the overlap with the border as context; PSNR on the same inner area
    inner = (slice(border, border + h), slice(border, border + w))
    return Score(
        psnr=psnr(a[inner], b[inner]),
        ssim=ssim(a, b, border=border),
        shift_y=float(sy),
        shift_x=float(sx),
        height=int(h),
        width=int(w),
        gain=gain,
        offset=offset,
    )


def gradient_energy(image: np.ndarray, *, sigma: float = GRADIENT_BLUR) -> float:
    """Mean squared gradient of the mildly blurred luminance: a sharpness measure that
    needs no truth (higher is sharper; noise is damped by the blur).

    Parameters
    ----------
    image : numpy.ndarray
        uint8, uint16 or float ``[0, 1]`` image, ``(H, W)`` or ``(H, W, 3)``.
    sigma : float
        Gaussian pre-blur sigma in pixels (> 0).
    """
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    f = luminance(_as_float(image, "image"))
    f = cv2.GaussianBlur(f, (0, 0), float(sigma))
    gx = cv2.Sobel(f, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(f, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    return float(np.mean(gx.astype(np.float64) ** 2 + gy.astype(np.float64) ** 2))


def noise_evenness(stack: np.ndarray, truth: np.ndarray, *, tile: int = EVENNESS_TILE,
                   border: int = 16) -> float:
    """How unevenly the noise of a stack is spread: 0 for noise alike everywhere.

    The stack is registered on the truth (as by :func:`score`) and cut into whole
    ``tile x tile`` tiles. The noise of each tile is measured where the image holds
    almost nothing but noise: the median power of the Hann-windowed tile's spectrum
    where both frequencies are at least :data:`EVENNESS_BAND` cycles per pixel (beyond
    what seeing and the optics pass; the median is robust to what signal is left). Each
    tile's noise level is divided by the square root of the truth's mean brightness in
    the tile (photon noise grows so), tiles darker than :data:`EVENNESS_MIN_LEVEL` of the
    brightest are left out (sky), and the result is the coefficient of variation
    (standard deviation over mean) of those values. A stack whose AP boxes hold
    different numbers of frames scores high.

    Parameters
    ----------
    stack, truth : numpy.ndarray
        As for :func:`score` (colour is reduced to luminance).
    tile : int
        Tile side in pixels (8 or more), about an AP box.
    border : int
        Pixels left out on each side of the overlap (>= 0).

    Returns
    -------
    float

    Raises
    ------
    ValueError
        For a bad ``tile`` or ``border``, images that cannot be registered, or fewer than
        two tiles on the object.
    """
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 8:
        raise ValueError(f"tile must be an integer >= 8, got {tile!r}")
    if isinstance(border, bool) or not isinstance(border, (int, np.integer)) or border < 0:
        raise ValueError(f"border must be an integer >= 0, got {border!r}")
    s = luminance(_as_float(stack, "stack"))
    t = luminance(_as_float(truth, "truth"))
    sy, sx = register(s, t)
    ys, xs = _overlap(s.shape, t.shape, sy, sx)
    moved = _shift_image(t, s.shape, sy, sx)
    a = s[ys, xs][border:-border or None, border:-border or None].astype(np.float64)
    b = moved[ys, xs][border:-border or None, border:-border or None].astype(np.float64)
    ty, tx = a.shape[0] // tile, a.shape[1] // tile
    if ty * tx < 2:
        raise ValueError(f"the compared area {a.shape[1]}x{a.shape[0]} holds fewer than two "
                         f"{tile}-pixel tiles")
    cut = (slice(0, ty * tile), slice(0, tx * tile))
    tiles = a[cut].reshape(ty, tile, tx, tile).transpose(0, 2, 1, 3).reshape(-1, tile, tile)
    level = b[cut].reshape(ty, tile, tx, tile).mean(axis=(1, 3)).ravel()
    w = np.hanning(tile + 2)[1:-1]
    window = np.outer(w, w)
    spec = np.fft.rfft2((tiles - tiles.mean(axis=(1, 2), keepdims=True)) * window)
    fy = np.abs(np.fft.fftfreq(tile))
    fx = np.fft.rfftfreq(tile)
    band = (fy[:, None] >= EVENNESS_BAND) & (fx[None, :] >= EVENNESS_BAND)
    power = np.abs(spec[:, band]) ** 2
    noise = np.sqrt(np.median(power, axis=1))
    lit = level >= EVENNESS_MIN_LEVEL * float(level.max())
    if int(lit.sum()) < 2:
        raise ValueError("fewer than two tiles lie on the object")
    values = noise[lit] / np.sqrt(level[lit])
    return float(values.std() / values.mean())
