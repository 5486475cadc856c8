"""A physical seeing model: layered von Karman turbulence seen through a small telescope.

Where :mod:`live_stack.simulate.seeing` warps and blurs a scene with smooth random fields,
this model follows the light: each frame is the scene convolved with short-exposure
point-spread functions computed from the phase of the wavefront in the telescope's pupil.

1. Turbulence: a few thin layers at given heights, each a von Karman phase screen
   (spatial power spectrum ``0.023 r0**(-5/3) (k**2 + 1/L0**2)**(-11/6)``, its share of
   the turbulence given by the layer's weight) on a periodic grid, made by the FFT
   method. Each layer moves with its wind (frozen flow: a phase ramp on its spectrum per
   frame) and slowly evolves ("boils": its Fourier coefficients are a first-order
   autoregressive process of :data:`BOIL_S` seconds), so that a long run never repeats.
2. Anisoplanatism: the frame is divided into ``field_points x field_points`` regions; a
   region at field angle ``theta`` looks through each layer at a footprint shifted by
   ``height * theta``, so distant image points see different turbulence (high layers
   decorrelate first).
3. Short-exposure PSFs: at each field point, the pupil phase (the layers summed) gives the
   image of a point source, ``|FFT(pupil * exp(i phase))|**2`` (speckle, halo,
   diffraction rings). Its tip-tilt (the pupil-averaged phase gradient) is taken out of
   the phase; it is the field point's image motion.
4. Seeing that breathes: ``r0`` varies in time, log-normally (``breathing`` is the RMS of
   ``ln r0``, with an e-folding time of ``breathing_s`` seconds).
5. Mount drift: a linear drift over the run.
6. The camera: Poisson photon noise at ``electrons`` electrons for a full-brightness pixel,
   Gaussian read noise, and quantisation to 8 bits or to 16 bits (an ADC of ``adc_bits``
   scaled into the uint16 range).

The tilt-free images of the field points are blended with bilinear (tent) weights: the
frame is smooth where the PSF changes across the field. The image motion is a smooth field
too: the field points' motions interpolated with the same weights, applied to the blend as
a warp (Lanczos interpolation), so that between two field points the image is displaced
by an amount between theirs, as through a real atmosphere, not cross-faded between two
displaced copies (a double image, which no local shift could undo). The pixel scale is
``pixel_lambda_d`` times ``lambda / D`` (0.5: Nyquist sampling of the diffraction limit,
as planetary cameras are usually matched to their telescope); a pixel's field angle
follows from the aperture and the wavelength.

Offsets convention (as for the other model): the frame at offset ``(dy, dx)`` shows at
its pixel ``(y, x)`` what the truth image (:func:`~live_stack.simulate.seeing.truth_view`
of the canvas) shows at ``(y + dy, x + dx)``, up to the local image motion; the offsets
are the frames' mean image motion (field points averaged). They are not made zero-mean
over the run (the frames are rendered as they are taken), but the drift is centred on
the run's middle and the turbulence's motion has zero mean.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from live_stack.fft import irfft2, rfft2
from live_stack.simulate.seeing import BITS, SimFrame, _check_canvas, _check_frames, _check_seed

__all__ = [
    "PhysicalFrame",
    "TurbulenceParams",
    "expose",
    "iter_physical_frames",
    "physical_margin",
    "render_physical",
]

#: Pupil samples across the aperture diameter (phase-screen pixels per D).
PUPIL_PX = 32
#: Side of each layer's periodic phase screen, in pupil samples (8 D).
SCREEN_PX = 256
#: Time constant of the layers' evolution ("boiling"), seconds.
BOIL_S = 0.5
#: Random stream numbers (the scenes use 1, the other seeing model 2..4).
SCREEN_STREAM = 11
BREATH_STREAM = 12
NOISE_STREAM = 13
#: Half-width of a field point's PSF kept on the image grid, in multiples of the
#: long-exposure seeing FWHM (``lambda / r0``), at least the diffraction pattern's.
PSF_REACH_FWHM = 2.5
#: Margin the image motion may take, in multiples of the expected tip-tilt RMS.
TILT_MARGIN_RMS = 5.0
#: Tip-tilt RMS per axis of a Kolmogorov wavefront, in lambda / D, times (D/r0)**(5/6).
TILT_COEFF = 0.42


@dataclass(frozen=True)
class TurbulenceParams:
    """Parameters of the physical seeing and camera model (see the module docstring)."""

    d_over_r0: float = 5.0  # aperture over Fried parameter at the wavelength (seeing strength)
    aperture_m: float = 0.2  # telescope aperture D, metres
    wavelength_nm: float = 550.0  # observing wavelength, nanometres
    pixel_lambda_d: float = 0.5  # pixel size in lambda / D (0.5 = Nyquist), 0.25..0.5
    layer_heights_m: tuple[float, ...] = (0.0, 1500.0, 8000.0)  # turbulent layers' heights
    layer_weights: tuple[float, ...] = (0.6, 0.25, 0.15)  # each layer's share of the turbulence
    wind_mps: tuple[float, ...] = (2.0, 6.0, 15.0)  # each layer's wind speed, m/s
    wind_deg: tuple[float, ...] = (0.0, 70.0, 160.0)  # each layer's wind direction (0 = +x)
    outer_scale_m: float = 20.0  # von Karman outer scale L0, metres
    frame_interval_s: float = 0.01  # time between frames, seconds
    breathing: float = 0.15  # RMS of ln(r0) over the run (0: steady seeing)
    breathing_s: float = 2.0  # e-folding time of the breathing, seconds
    field_points: int = 4  # PSFs per axis across the frame (anisoplanatism sampling), 1..8
    drift_px: float = 0.0  # total linear mount drift over the run, pixels
    drift_angle_deg: float = 30.0  # drift direction in the image: 0 = +x, 90 = +y (down)
    electrons: float = 2000.0  # electrons collected by a full-brightness pixel
    read_noise: float = 2.0  # read noise, electrons RMS
    adc_bits: int = 12  # ADC depth of 16-bit frames (9..16), scaled into the uint16 range

    def __post_init__(self) -> None:
        positive = {
            "d_over_r0": self.d_over_r0, "aperture_m": self.aperture_m,
            "wavelength_nm": self.wavelength_nm, "outer_scale_m": self.outer_scale_m,
            "frame_interval_s": self.frame_interval_s, "breathing_s": self.breathing_s,
            "electrons": self.electrons,
        }
        for name, value in positive.items():
            if not (_number(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name in ("breathing", "drift_px", "read_noise"):
            value = getattr(self, name)
            if not (_number(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not _number(self.drift_angle_deg):
            raise ValueError(f"drift_angle_deg must be finite, got {self.drift_angle_deg!r}")
        if not (_number(self.pixel_lambda_d) and 0.25 <= self.pixel_lambda_d <= 0.5):
            raise ValueError(f"pixel_lambda_d must be 0.25..0.5, got {self.pixel_lambda_d!r}")
        if self.d_over_r0 > 3 * PUPIL_PX / 4:
            raise ValueError(f"d_over_r0 must be at most {3 * PUPIL_PX // 4} (the pupil is "
                             f"sampled by {PUPIL_PX} points), got {self.d_over_r0!r}")
        layers = len(self.layer_heights_m)
        if layers < 1:
            raise ValueError("layer_heights_m must name at least one layer")
        for name in ("layer_weights", "wind_mps", "wind_deg"):
            values = getattr(self, name)
            if len(values) != layers:
                raise ValueError(f"{name} must have one value per layer ({layers}), "
                                 f"got {len(values)}")
            if not all(_number(v) for v in values):
                raise ValueError(f"{name} must hold finite numbers, got {values!r}")
        if not all(_number(h) and h >= 0 for h in self.layer_heights_m):
            raise ValueError(f"layer_heights_m must be >= 0, got {self.layer_heights_m!r}")
        if not all(w >= 0 for w in self.layer_weights) or sum(self.layer_weights) <= 0:
            raise ValueError(f"layer_weights must be >= 0 with a positive sum, got "
                             f"{self.layer_weights!r}")
        if not all(v >= 0 for v in self.wind_mps):
            raise ValueError(f"wind_mps must be >= 0, got {self.wind_mps!r}")
        if isinstance(self.field_points, bool) or self.field_points not in range(1, 9):
            raise ValueError(f"field_points must be an integer 1..8, got {self.field_points!r}")
        if isinstance(self.adc_bits, bool) or self.adc_bits not in range(9, 17):
            raise ValueError(f"adc_bits must be an integer 9..16, got {self.adc_bits!r}")

    @property
    def psf_size(self) -> int:
        """Side of the computed PSF in image pixels (the pupil padded to it)."""
        return int(round(PUPIL_PX / self.pixel_lambda_d))

    @property
    def pixel_rad(self) -> float:
        """Field angle of one image pixel, radians."""
        return (PUPIL_PX / self.psf_size) * self.wavelength_nm * 1e-9 / self.aperture_m


def _number(value: object) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating))
            and not isinstance(value, bool) and math.isfinite(float(value)))


@dataclass(frozen=True)
class PhysicalFrame:
    """One noise-free frame of :func:`render_physical`."""

    index: int  # frame number in the run, from 0
    image: np.ndarray  # float32 (H, W), on the scene's [0, 1] brightness scale
    offset: tuple[float, float]  # (dy, dx): the frame's mean image motion (module docstring)
    d_over_r0: float  # this frame's D/r0 (breathing seeing)
    #: float64 (field_points, field_points, 2): the image motion (dy, dx) at each field
    #: point (the frame's motion field is their tent interpolation: :func:`motion_field`)
    motions: np.ndarray | None = None
    #: float64 (field_points, field_points): each field point's Strehl ratio (the peak of
    #: its tilt-free PSF over a diffraction-limited PSF's)
    strehl: np.ndarray | None = None


def physical_margin(params: TurbulenceParams, frames: int) -> int:
    """Margin (px, each side) a canvas needs around the frames of a run."""
    tilt = TILT_COEFF * params.d_over_r0 ** (5 / 6) / params.pixel_lambda_d
    breath = math.exp(3 * params.breathing)
    reach = _psf_half(params, params.d_over_r0 * breath)
    return int(math.ceil(params.drift_px / 2 + TILT_MARGIN_RMS * tilt * breath + reach)) + 2


def _psf_half(params: TurbulenceParams, d_over_r0: float) -> int:
    """Half-width (px) of the PSF region kept on the image grid."""
    fwhm = max(d_over_r0, 1.0) / params.pixel_lambda_d  # lambda / r0 in pixels
    return int(min(params.psf_size // 2, math.ceil(PSF_REACH_FWHM * fwhm) + 2))


class _Atmosphere:
    """The layers' phase screens and their evolution over a run."""

    def __init__(self, params: TurbulenceParams, seed: int) -> None:
        self.params = params
        self.rng = np.random.default_rng([seed, SCREEN_STREAM])
        dxp = params.aperture_m / PUPIL_PX  # metres per pupil sample
        self.dxp = dxp
        k = np.fft.fftfreq(SCREEN_PX, d=dxp)  # cycles per metre
        ky, kx = k[:, None], k[None, :]
        k2 = ky * ky + kx * kx
        r0 = params.aperture_m / params.d_over_r0
        # von Karman phase PSD, rad^2 per (cycle/m)^2; the FFT method's amplitude
        psd = 0.023 * r0 ** (-5 / 3) * (k2 + 1.0 / params.outer_scale_m**2) ** (-11 / 6)
        psd[0, 0] = 0.0  # piston is invisible
        df = 1.0 / (SCREEN_PX * dxp)
        self.amp = (np.sqrt(psd) * df * SCREEN_PX * SCREEN_PX).astype(np.complex64)
        weights = np.asarray(params.layer_weights, dtype=np.float64)
        self.scales = np.sqrt(weights / weights.sum())
        self.rho = math.exp(-params.frame_interval_s / BOIL_S)
        self.innov = math.sqrt(1.0 - self.rho**2)
        self.ramps = []
        for speed, angle in zip(params.wind_mps, params.wind_deg, strict=True):
            a = math.radians(angle)
            vy, vx = speed * math.sin(a), speed * math.cos(a)
            step_y, step_x = vy * params.frame_interval_s, vx * params.frame_interval_s
            ramp = np.exp(-2j * np.pi * (ky * step_y + kx * step_x)).astype(np.complex64)
            self.ramps.append(ramp)
        self.coeffs = [self._white() for _ in params.layer_heights_m]

    def _white(self) -> np.ndarray:
        """Unit complex white noise on the screen grid."""
        z = self.rng.standard_normal((2, SCREEN_PX, SCREEN_PX), dtype=np.float32)
        return (z[0] + 1j * z[1]).astype(np.complex64) * np.float32(math.sqrt(0.5))

    def advance(self) -> None:
        """One frame: each layer moves with its wind and boils a little."""
        for i, ramp in enumerate(self.ramps):
            c = self.coeffs[i]
            c *= ramp
            c *= np.float32(self.rho)
            c += np.float32(self.innov) * self._white()

    def screens(self) -> list[np.ndarray]:
        """The layers' phase screens now, radians (float32, ``SCREEN_PX`` square)."""
        out = []
        for c, scale in zip(self.coeffs, self.scales, strict=True):
            s = np.fft.ifft2(c * self.amp).real.astype(np.float32)
            out.append(s * np.float32(scale))
        return out


def _pupil() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The circular pupil mask and its sample coordinates (pupil samples from centre)."""
    c = (np.arange(PUPIL_PX) - (PUPIL_PX - 1) / 2.0).astype(np.float32)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    mask = (yy * yy + xx * xx) <= (PUPIL_PX / 2.0) ** 2
    return mask, yy, xx


def _tents(size: int, points: int, *, inner: tuple[int, int] | None = None) -> np.ndarray:
    """Bilinear weights ``(points, size)`` of field points spread over ``size`` pixels
    (a partition of unity, flat beyond the outermost points); with ``inner = (start,
    length)`` the points are spread over that part of the ``size`` pixels only."""
    if points == 1:
        return np.ones((1, size), np.float32)
    start, length = (0, size) if inner is None else inner
    centres = start + (np.arange(points) + 0.5) * length / points - 0.5
    x = np.clip(np.arange(size, dtype=np.float64), centres[0], centres[-1])
    spacing = centres[1] - centres[0]
    w = np.clip(1.0 - np.abs(x[None, :] - centres[:, None]) / spacing, 0.0, 1.0)
    return w.astype(np.float32)


def render_physical(
    scene_image: np.ndarray,
    *,
    frames: int,
    params: TurbulenceParams,
    seed: int,
    frame_shape: tuple[int, int],
) -> Iterator[PhysicalFrame]:
    """Iterate over the noise-free frames of a run (expose them with :func:`expose`).

    Parameters
    ----------
    scene_image : numpy.ndarray
        The sharp mono scene, float ``[0, 1]``, ``(H, W)``, at least ``frame_shape`` plus
        :func:`physical_margin` on each side; the frames look at its centre.
    frames : int
        Number of frames (>= 1).
    params : TurbulenceParams
        The turbulence (the camera fields are used by :func:`expose`).
    seed : int
        Seed (>= 0); the same arguments give the same frames.
    frame_shape : tuple of int
        ``(height, width)`` of the frames, 16 or more each.

    Returns
    -------
    iterator of PhysicalFrame

    Raises
    ------
    ValueError
        For a bad argument, or a canvas too small for the frames and the motion.
    """
    frames = _check_frames(frames)
    seed = _check_seed(seed)
    if not isinstance(params, TurbulenceParams):
        raise ValueError(f"params must be a TurbulenceParams, got {type(params).__name__}")
    canvas = _check_canvas(scene_image)
    if canvas.ndim != 2:
        raise ValueError(f"scene_image must be mono (H, W) for the physical model, got "
                         f"{canvas.shape}")
    try:
        h, w = (int(v) for v in frame_shape)
    except (TypeError, ValueError):
        raise ValueError(f"frame_shape must be (height, width), got {frame_shape!r}") from None
    if h < 16 or w < 16:
        raise ValueError(f"frame_shape must be at least 16x16, got {frame_shape!r}")
    margin = physical_margin(params, frames)
    if canvas.shape[0] < h + 2 * margin or canvas.shape[1] < w + 2 * margin:
        raise ValueError(
            f"scene_image is {canvas.shape[1]}x{canvas.shape[0]}; {w}x{h} frames with this "
            f"seeing need at least {w + 2 * margin}x{h + 2 * margin} (a {margin}px margin "
            "each side)")
    return _physical_frames(canvas, frames, params, seed, (h, w))


def _physical_frames(canvas: np.ndarray, frames: int, params: TurbulenceParams, seed: int,
                     shape: tuple[int, int]) -> Iterator[PhysicalFrame]:
    h, w = shape
    # the canvas padded to a size the FFT is fast for (the frames never see the padding:
    # the margin covers their motion and their PSFs' reach)
    ch, cw = _fast_size(canvas.shape[0]), _fast_size(canvas.shape[1])
    pad_y, pad_x = ch - canvas.shape[0], cw - canvas.shape[1]
    canvas = np.pad(canvas, ((0, pad_y), (0, pad_x)), mode="reflect")
    atmosphere = _Atmosphere(params, seed)
    mask, pyy, pxx = _pupil()
    mask_f = mask.astype(np.float32)
    tilt_norm_y = float((pyy * pyy * mask).sum())
    tilt_norm_x = float((pxx * pxx * mask).sum())
    n = params.psf_size
    spec = rfft2(canvas.astype(np.float32))
    # where the frame sits in the canvas (its centre), and the field points' pixel offsets
    oy, ox = (ch - pad_y - h) // 2, (cw - pad_x - w) // 2
    g = params.field_points
    py = (np.arange(g) + 0.5) * h / g - h / 2.0
    px = (np.arange(g) + 0.5) * w / g - w / 2.0
    # the tilt-free images are blended over the frame and a rim (``rim`` pixels each side,
    # as far as the canvas reaches), which the motion field then samples
    rim = max(0, min(oy, ox, ch - pad_y - h - oy, cw - pad_x - w - ox))
    ey, ex = h + 2 * rim, w + 2 * rim
    wy = _tents(ey, g, inner=(rim, h))
    wx = _tents(ex, g, inner=(rim, w))
    grid_y, grid_x = np.mgrid[0:h, 0:w].astype(np.float32)
    fwy, fwx = _tents(h, g), _tents(w, g)  # the motion field's weights on the frame
    # layer footprint offsets (pupil samples) per field point: height * angle / sample
    per_px = params.pixel_rad / atmosphere.dxp
    heights = np.asarray(params.layer_heights_m, dtype=np.float64)
    angle = math.radians(params.drift_angle_deg)
    drift_dir = -np.array([math.sin(angle), math.cos(angle)])
    ramp_t = np.arange(frames, dtype=np.float64) / max(frames - 1, 1) - 0.5
    breath = _breathing(params, frames, seed)
    half = _psf_half(params, params.d_over_r0 * float(breath.max()))
    # the PSF's pixel (0, 0) is its centre: the kept square, wrapped, on the canvas grid
    keep = np.r_[0 : half + 1, n - half : n]
    place_y = np.r_[0 : half + 1, ch - half : ch]
    place_x = np.r_[0 : half + 1, cw - half : cw]
    psf_grid = np.zeros((ch, cw), np.float32)
    perfect = np.zeros((n, n), np.complex64)
    perfect[:PUPIL_PX, :PUPIL_PX] = mask_f
    perfect_psf = (np.abs(np.fft.fft2(perfect)) ** 2)[np.ix_(keep, keep)]
    perfect_peak = float(perfect_psf.max() / perfect_psf.sum())
    for index in range(frames):
        if index:
            atmosphere.advance()
        screens = atmosphere.screens()
        scale = np.float32(breath[index] ** (5 / 6))  # phase ~ r0**(-5/6)
        blend = np.zeros((ey, ex), np.float32)
        motions = np.zeros((g, g, 2))
        strehl = np.zeros((g, g))
        drift = params.drift_px * ramp_t[index] * drift_dir
        for i in range(g):
            for j in range(g):
                phase = np.zeros((PUPIL_PX, PUPIL_PX), np.float32)
                for screen, height in zip(screens, heights, strict=True):
                    sy = int(round(height * py[i] * per_px)) % SCREEN_PX
                    sx = int(round(height * px[j] * per_px)) % SCREEN_PX
                    rows = (sy + np.arange(PUPIL_PX)) % SCREEN_PX
                    cols = (sx + np.arange(PUPIL_PX)) % SCREEN_PX
                    phase += screen[np.ix_(rows, cols)]
                phase *= scale
                phase -= (phase * mask).sum() / mask.sum()
                ty = float((phase * pyy * mask).sum()) / tilt_norm_y  # rad per sample
                tx = float((phase * pxx * mask).sum()) / tilt_norm_x
                phase -= ty * pyy + tx * pxx
                field = np.zeros((n, n), np.complex64)
                field[:PUPIL_PX, :PUPIL_PX] = mask_f * np.exp(1j * phase)
                psf = (np.abs(np.fft.fft2(field)) ** 2)[np.ix_(keep, keep)]
                psf /= psf.sum()  # the kept part carries all the light
                strehl[i, j] = float(psf.max()) / perfect_peak
                # a phase slope of 2 pi per n samples moves the image by one pixel; the
                # image of a wavefront tilted by +t moves by +t n / (2 pi) pixels
                motions[i, j] = (ty * n / (2 * np.pi) + drift[0],
                                 tx * n / (2 * np.pi) + drift[1])
                psf_grid[np.ix_(place_y, place_x)] = psf
                image = irfft2(spec * rfft2(psf_grid), (ch, cw))
                image = image[oy - rim : oy + h + rim, ox - rim : ox + w + rim]
                blend += image * (wy[i][:, None] * wx[j][None, :])
        # the image motion is a smooth field over the frame (the field points' motions,
        # interpolated with the same tents): the frame pixel (y, x) shows the scene at
        # (y + my, x + mx). Moving each field point's image by its own motion and
        # blending those instead would cross-fade two displaced copies between field
        # points: a double image no atmosphere makes.
        my, mx = motion_field(motions, fwy, fwx)
        out = cv2.remap(blend, grid_x + mx + np.float32(rim), grid_y + my + np.float32(rim),
                        cv2.INTER_LANCZOS4, borderMode=cv2.BORDER_REFLECT101)
        motion = motions.reshape(-1, 2).mean(axis=0)
        yield PhysicalFrame(index=index, image=out,
                            offset=(float(motion[0]), float(motion[1])),
                            d_over_r0=float(params.d_over_r0 / breath[index]),
                            motions=motions, strehl=strehl)


def motion_field(motions: np.ndarray, tents_y: np.ndarray, tents_x: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The image motion ``(dy, dx)`` at every pixel, float32 ``(H, W)`` each: the field
    points' ``motions`` ``(g, g, 2)`` interpolated with tents ``(g, H)`` and ``(g, W)``
    (:func:`_tents`)."""
    my = np.einsum("iy,ij,jx->yx", tents_y, motions[:, :, 0], tents_x).astype(np.float32)
    mx = np.einsum("iy,ij,jx->yx", tents_y, motions[:, :, 1], tents_x).astype(np.float32)
    return my, mx


def _fast_size(n: int) -> int:
    """The smallest ``2**a * 3**b * 5**c`` at least ``n``."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p3 = p5
        while p3 < best:
            p2 = p3
            while p2 < n:
                p2 *= 2
            best = min(best, p2)
            p3 *= 3
        p5 *= 5
    return best


def _breathing(params: TurbulenceParams, frames: int, seed: int) -> np.ndarray:
    """``r0(t) / r0``: log-normal, AR(1) in time, unit geometric mean."""
    rng = np.random.default_rng([seed, BREATH_STREAM])
    rho = math.exp(-params.frame_interval_s / params.breathing_s)
    x = np.empty(frames)
    x[0] = rng.standard_normal()
    innov = math.sqrt(1 - rho * rho)
    for t in range(1, frames):
        x[t] = rho * x[t - 1] + innov * rng.standard_normal()
    return np.exp(params.breathing * x)


def expose(image: np.ndarray, *, params: TurbulenceParams, rng: np.random.Generator,
           bits: int = 8) -> np.ndarray:
    """A raw frame from a noise-free one: photons, read noise, quantisation.

    Parameters
    ----------
    image : numpy.ndarray
        float ``[0, 1]`` brightness (1 = ``params.electrons`` electrons).
    params : TurbulenceParams
        ``electrons``, ``read_noise`` and ``adc_bits`` are used.
    rng : numpy.random.Generator
        The noise's random stream.
    bits : int
        8 (uint8) or 16 (uint16, ``adc_bits`` significant bits scaled into the range).

    Returns
    -------
    numpy.ndarray
        uint8 or uint16, the shape of ``image``.
    """
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    mean = np.clip(image, 0.0, None).astype(np.float64) * params.electrons
    electrons = rng.poisson(mean).astype(np.float32)
    if params.read_noise > 0:
        electrons += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(
            params.read_noise)
    adc_max = 255.0 if bits == 8 else float(2**params.adc_bits - 1)
    codes = np.floor(electrons * np.float32(adc_max / params.electrons) + np.float32(0.5))
    np.clip(codes, 0.0, adc_max, out=codes)
    if bits == 8:
        return codes.astype(np.uint8)
    return np.floor(codes * np.float32(65535.0 / adc_max) + np.float32(0.5)).astype(np.uint16)


def iter_physical_frames(
    scene_image: np.ndarray,
    *,
    frames: int,
    params: TurbulenceParams,
    seed: int,
    bits: int = 8,
    frame_shape: tuple[int, int],
) -> Iterator[SimFrame]:
    """Iterate over raw frames of the physical model with their ground truth.

    As :func:`render_physical`, each frame exposed with :func:`expose`; ``blur_sigma``
    of each :class:`~live_stack.simulate.seeing.SimFrame` holds the seeing FWHM of the
    frame (``lambda / r0``) in pixels.
    """
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    noise = np.random.default_rng([_check_seed(seed), NOISE_STREAM])
    rendered = render_physical(scene_image, frames=frames, params=params, seed=seed,
                               frame_shape=frame_shape)

    def generate() -> Iterator[SimFrame]:
        for f in rendered:
            yield SimFrame(index=f.index, image=expose(f.image, params=params, rng=noise,
                                                       bits=bits),
                           offset=f.offset, blur_sigma=f.d_over_r0 / params.pixel_lambda_d)

    return generate()
