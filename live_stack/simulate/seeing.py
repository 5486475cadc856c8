"""Atmospheric seeing and camera noise: a sharp scene becomes a sequence of raw frames.

Each frame of a run is made from the sharp scene ("canvas") in five steps, all driven by
seeded random processes that are correlated in time (first-order autoregressive, with
e-folding times in frames):

1. global motion: tip-tilt jitter plus a linear drift over the run; the per-frame offsets
   are the ground truth (:func:`global_offsets`);
2. local, anisoplanatic warps: a smooth random displacement field (a coarse random grid
   upsampled with cubic B-splines), of zero mean over the frame so that the global
   offset is exactly the frame's mean displacement; the mean is weighted by the scene's
   squared gradient (see :func:`detail_weights`), which is where registration sees the
   displacement (on a planet, the disk rather than the sky); steps 1 and 2 are one
   ``cv2.remap``;
3. blur that varies across the field and in time: a log-normal Gaussian-sigma map (a
   per-frame part times a smooth local part) approximated by mixing a few Gaussian blur
   levels with smooth weights, so that a few per cent of frames are "lucky" (sharp), and
   lucky only in some regions;
4. photon (Poisson, by its normal approximation) and read noise, in electrons;
5. quantisation to uint8, or to uint16 from an ADC of ``adc_bits`` scaled into the full
   uint16 range.

Offsets convention: the frame at offset ``(dy, dx)`` shows at its pixel ``(y, x)`` what
the truth image (the sharp scene at the run's mean position, see :func:`truth_view`)
shows at ``(y + dy, x + dx)``, up to the local warps. The offsets have zero mean over
the run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "PROFILES",
    "SEEING_PRESETS",
    "SeeingParams",
    "SimFrame",
    "canvas_margin",
    "detail_weights",
    "global_offsets",
    "iter_frames",
    "iter_sim_frames",
    "profile_factor",
    "seeing_params",
    "truth_view",
]

#: Time profiles of the seeing quality.
PROFILES = ("steady", "worsening")
#: Named seeing presets accepted by :func:`seeing_params`.
SEEING_PRESETS = ("good", "normal", "poor", "worsening")
#: Output sample depths.
BITS = (8, 16)

#: Random stream numbers (the scenes use stream 1).
OFFSET_STREAM = 2
FIELD_STREAM = 3
NOISE_STREAM = 4

#: Canvas margin allowance for the local warps, in multiples of their RMS.
WARP_MARGIN_RMS = 5.0
#: Extra frame border blurred along with the frame (then cropped), in multiples of the
#: largest blur sigma, so that the blur sees real scene content at the frame's edges.
BLUR_PAD_SIGMAS = 3.0
#: Pre-blur and spread (Gaussian sigmas, px) of :func:`detail_weights`.
DETAIL_BLUR = 1.0
DETAIL_SPREAD = 2.0
#: Most Gaussian levels the blur may be rendered with.
MAX_BLUR_LEVELS = 8


@dataclass(frozen=True)
class SeeingParams:
    """Parameters of the seeing and camera model (see the module docstring)."""

    blur_median: float = 1.5  # median Gaussian sigma (px) of the seeing blur, frames and field
    blur_spread: float = 0.38  # standard deviation of ln(sigma) over frames and field
    blur_local_share: float = 0.5  # share of the ln(sigma) variance that varies across the field
    blur_min: float = 0.5  # smallest rendered blur sigma (px): the sharpest a frame gets
    blur_max: float = 4.6  # largest rendered blur sigma (px); sigma is clamped to min..max
    blur_level_count: int = 5  # Gaussian levels (geometric min..max) mixed to render the blur
    warp_rms: float = 1.2  # RMS (px, per axis) of the local displacements
    cell_frac: float = 0.25  # size of warp/blur patches, fraction of the frame's larger side
    coherence_frames: float = 3.0  # e-folding time (frames) of the warps and the blur
    jitter_rms: float = 2.0  # RMS (px, per axis) of the global image motion
    jitter_frames: float = 8.0  # e-folding time (frames) of the global image motion
    drift_px: float = 0.0  # total linear drift over the run (px)
    drift_angle_deg: float = 30.0  # drift direction in the image: 0 = +x, 90 = +y (down)
    profile: str = "steady"  # time profile: "steady" or "worsening"
    worsen_factor: float = 2.0  # "worsening": blur sigma and warp multiplier after the change
    worsen_at: float = 0.5  # "worsening": centre of the change, fraction of the run
    worsen_ramp: float = 0.04  # "worsening": duration of the change, fraction of the run
    full_well: float = 2000.0  # electrons at full scale (photon noise: sqrt(electrons))
    read_noise: float = 2.0  # read noise, electrons RMS
    adc_bits: int = 12  # ADC depth of 16-bit frames (9..16), scaled into the uint16 range

    def __post_init__(self) -> None:
        positive = {
            "blur_median": self.blur_median,
            "cell_frac": self.cell_frac,
            "coherence_frames": self.coherence_frames,
            "jitter_frames": self.jitter_frames,
            "full_well": self.full_well,
            "worsen_factor": self.worsen_factor,
            "worsen_ramp": self.worsen_ramp,
        }
        for name, value in positive.items():
            if not _finite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        non_negative = {
            "blur_spread": self.blur_spread,
            "warp_rms": self.warp_rms,
            "jitter_rms": self.jitter_rms,
            "drift_px": self.drift_px,
            "read_noise": self.read_noise,
        }
        for name, value in non_negative.items():
            if not _finite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not _finite(self.drift_angle_deg):
            raise ValueError(f"drift_angle_deg must be finite, got {self.drift_angle_deg!r}")
        if not (_finite(self.blur_local_share) and 0 <= self.blur_local_share <= 1):
            raise ValueError(f"blur_local_share must be 0..1, got {self.blur_local_share!r}")
        if not 0 < self.cell_frac <= 1:
            raise ValueError(f"cell_frac must be in (0, 1], got {self.cell_frac!r}")
        if not (_finite(self.worsen_at) and 0 <= self.worsen_at <= 1):
            raise ValueError(f"worsen_at must be 0..1, got {self.worsen_at!r}")
        for name in ("blur_min", "blur_max"):
            value = getattr(self, name)
            if not _finite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.blur_max <= self.blur_min:
            raise ValueError(
                f"blur_max ({self.blur_max!r}) must be larger than blur_min ({self.blur_min!r})"
            )
        count = self.blur_level_count
        if isinstance(count, bool) or count not in range(2, MAX_BLUR_LEVELS + 1):
            raise ValueError(
                f"blur_level_count must be an integer 2..{MAX_BLUR_LEVELS}, got {count!r}"
            )
        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, got {self.profile!r}")
        if isinstance(self.adc_bits, bool) or self.adc_bits not in range(9, 17):
            raise ValueError(f"adc_bits must be an integer 9..16, got {self.adc_bits!r}")


def _finite(value: object) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


#: The presets: overrides of the :class:`SeeingParams` defaults (which are "normal").
_PRESETS: dict[str, dict[str, object]] = {
    "good": {"blur_median": 1.0, "warp_rms": 0.7, "jitter_rms": 1.2},
    "normal": {},
    "poor": {"blur_median": 2.6, "warp_rms": 2.0, "jitter_rms": 3.0},
    "worsening": {"profile": "worsening", "worsen_factor": 2.0},
}


def seeing_params(name: str = "normal", **overrides: object) -> SeeingParams:
    """Return the :class:`SeeingParams` of a named preset, with fields overridden.

    Parameters
    ----------
    name : str
        One of :data:`SEEING_PRESETS`: ``"good"``, ``"normal"``, ``"poor"``, or
        ``"worsening"`` (normal seeing whose blur and warps double half-way through).
    **overrides
        :class:`SeeingParams` fields to set.

    Raises
    ------
    ValueError
        If ``name`` is not a preset, a field name is unknown or a value is invalid.
    """
    if name not in _PRESETS:
        raise ValueError(f"seeing must be one of {SEEING_PRESETS}, got {name!r}")
    fields = {f.name for f in dataclasses.fields(SeeingParams)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown seeing parameter(s): {', '.join(unknown)}")
    return SeeingParams(**{**_PRESETS[name], **overrides})  # type: ignore[arg-type]


def profile_factor(index: int | np.ndarray, *, frames: int, params: SeeingParams) -> np.ndarray:
    """Multiplier of the blur sigma and the warps at frame ``index`` (1 while steady)."""
    t = (np.asarray(index, dtype=np.float64) + 0.5) / max(frames, 1)
    if params.profile == "steady":
        return np.ones_like(t)
    x = np.clip((t - params.worsen_at) / params.worsen_ramp + 0.5, 0.0, 1.0)
    return 1.0 + (params.worsen_factor - 1.0) * x * x * (3.0 - 2.0 * x)


def _check_frames(frames: int) -> int:
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1:
        raise ValueError(f"frames must be an integer >= 1, got {frames!r}")
    return int(frames)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def _ar1(rng: np.random.Generator, shape: tuple[int, ...], frames: int, tau: float) -> np.ndarray:
    """``frames`` steps of a stationary unit-variance AR(1) process of e-folding time
    ``tau`` frames, for each element of ``shape``: array ``(frames, *shape)``."""
    rho = math.exp(-1.0 / tau)
    innov = math.sqrt(1.0 - rho * rho)
    eps = rng.standard_normal((frames, *shape))
    out = np.empty_like(eps)
    out[0] = eps[0]
    for t in range(1, frames):
        out[t] = rho * out[t - 1] + innov * eps[t]
    return out


def global_offsets(*, frames: int, params: SeeingParams, seed: int) -> np.ndarray:
    """The ground-truth global offsets of a run: jitter plus linear drift, zero mean.

    Parameters
    ----------
    frames : int
        Number of frames (>= 1).
    params : SeeingParams
        ``jitter_rms``, ``jitter_frames``, ``drift_px`` and ``drift_angle_deg`` are used.
    seed : int
        Seed (>= 0).

    Returns
    -------
    numpy.ndarray
        float64 ``(frames, 2)``: ``(dy, dx)`` per frame, in the convention of the module
        docstring; their mean over the run is zero.
    """
    frames = _check_frames(frames)
    rng = np.random.default_rng([_check_seed(seed), OFFSET_STREAM])
    jitter = params.jitter_rms * _ar1(rng, (2,), frames, params.jitter_frames)
    ramp = np.arange(frames, dtype=np.float64) / max(frames - 1, 1)
    angle = math.radians(params.drift_angle_deg)
    # the scene moves along the drift direction, so the view shifts the other way
    direction = -np.array([math.sin(angle), math.cos(angle)])
    offsets = jitter + params.drift_px * ramp[:, None] * direction[None, :]
    return offsets - offsets.mean(axis=0, keepdims=True)


def canvas_margin(offsets: np.ndarray, params: SeeingParams) -> int:
    """Margin (px, each side) a canvas needs around the frame for these offsets."""
    offsets = np.asarray(offsets, dtype=np.float64)
    reach = float(np.abs(offsets).max()) if offsets.size else 0.0
    warp = WARP_MARGIN_RMS * params.warp_rms * max(params.worsen_factor, 1.0)
    blur = BLUR_PAD_SIGMAS * params.blur_max
    return int(math.ceil(reach + warp + blur)) + 2


def truth_view(scene_image: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
    """The sharp scene as the frames see it at zero offset: the canvas's central
    ``frame_shape`` part (interpolated if the margins are odd), float32."""
    canvas = _check_canvas(scene_image)
    h, w = _check_shape(frame_shape, canvas)
    oy = (canvas.shape[0] - h) / 2.0
    ox = (canvas.shape[1] - w) / 2.0
    if oy.is_integer() and ox.is_integer():
        return canvas[int(oy) : int(oy) + h, int(ox) : int(ox) + w].copy()
    map_y, map_x = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(
        canvas,
        map_x + np.float32(ox),
        map_y + np.float32(oy),
        cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_REFLECT101,
    )


def detail_weights(image: np.ndarray) -> np.ndarray:
    """Weights (summing to 1) of the pixels in a frame's mean displacement: the squared
    gradient of the mildly blurred image (luminance: channel mean), spread over
    :data:`DETAIL_SPREAD` pixels; uniform for a featureless image."""
    lum = image.mean(axis=2) if image.ndim == 3 else image
    lum = cv2.GaussianBlur(lum.astype(np.float32), (0, 0), DETAIL_BLUR)
    gx = cv2.Sobel(lum, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    gy = cv2.Sobel(lum, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    energy = cv2.GaussianBlur(gx * gx + gy * gy, (0, 0), DETAIL_SPREAD).astype(np.float64)
    total = float(energy.sum())
    if not total > 0.0:
        return np.full(lum.shape, 1.0 / lum.size)
    return energy / total


def _check_canvas(scene_image: np.ndarray) -> np.ndarray:
    if not isinstance(scene_image, np.ndarray):
        raise ValueError(f"scene_image must be a numpy array, got {type(scene_image).__name__}")
    if not (scene_image.ndim == 2 or (scene_image.ndim == 3 and scene_image.shape[2] == 3)):
        raise ValueError(f"scene_image must be (H, W) or (H, W, 3), got {scene_image.shape}")
    if scene_image.dtype.kind != "f":
        raise ValueError(f"scene_image must be float on the [0, 1] scale, got {scene_image.dtype}")
    return scene_image.astype(np.float32, copy=False)


def _check_shape(frame_shape: tuple[int, int], canvas: np.ndarray) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in frame_shape)
    except (TypeError, ValueError):
        raise ValueError(f"frame_shape must be (height, width), got {frame_shape!r}") from None
    if h < 8 or w < 8:
        raise ValueError(f"frame_shape must be at least 8x8, got {frame_shape!r}")
    if h > canvas.shape[0] or w > canvas.shape[1]:
        raise ValueError(
            f"frame_shape {h}x{w} is larger than the scene image "
            f"{canvas.shape[0]}x{canvas.shape[1]}"
        )
    return h, w


@dataclass(frozen=True)
class SimFrame:
    """One simulated frame and its ground truth."""

    index: int  # frame number in the run, from 0
    image: np.ndarray  # the raw frame: uint8 or uint16, (H, W) or (H, W, 3)
    offset: tuple[float, float]  # (dy, dx) global offset, see the module docstring
    blur_sigma: float  # median over the field of the seeing blur sigma (px)


def iter_frames(
    scene_image: np.ndarray,
    *,
    frames: int,
    params: SeeingParams,
    seed: int,
    bits: int = 8,
    frame_shape: tuple[int, int] | None = None,
) -> Iterator[np.ndarray]:
    """Iterate over the raw frames of a run (see :func:`iter_sim_frames`)."""
    sims = iter_sim_frames(
        scene_image, frames=frames, params=params, seed=seed, bits=bits, frame_shape=frame_shape
    )
    return (sim.image for sim in sims)


def iter_sim_frames(
    scene_image: np.ndarray,
    *,
    frames: int,
    params: SeeingParams,
    seed: int,
    bits: int = 8,
    frame_shape: tuple[int, int] | None = None,
) -> Iterator[SimFrame]:
    """Iterate over the frames of a run with their ground truth.

    The arguments are checked at once; the frames are rendered as they are taken.

    Parameters
    ----------
    scene_image : numpy.ndarray
        The sharp scene (canvas), float ``[0, 1]``, ``(H, W)`` or ``(H, W, 3)``, larger
        than the frames by :func:`canvas_margin` on each side; the frames look at its
        centre (see :func:`truth_view`).
    frames : int
        Number of frames (>= 1).
    params : SeeingParams
        The seeing and camera model.
    seed : int
        Seed (>= 0); the same arguments give the same frames.
    bits : int
        8 (uint8 frames) or 16 (uint16 frames, ``params.adc_bits`` significant bits
        scaled into the full range).
    frame_shape : tuple of int, optional
        ``(height, width)`` of the frames; defaults to the canvas shrunk by
        :func:`canvas_margin` on each side.

    Returns
    -------
    iterator of SimFrame

    Raises
    ------
    ValueError
        For a bad argument, or a canvas too small for the frames and the motion.
    """
    frames = _check_frames(frames)
    seed = _check_seed(seed)
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    if not isinstance(params, SeeingParams):
        raise ValueError(f"params must be a SeeingParams, got {type(params).__name__}")
    canvas = _check_canvas(scene_image)
    offsets = global_offsets(frames=frames, params=params, seed=seed)
    margin = canvas_margin(offsets, params)
    if frame_shape is None:
        frame_shape = (canvas.shape[0] - 2 * margin, canvas.shape[1] - 2 * margin)
        if min(frame_shape) < 8:
            raise ValueError(
                f"scene_image {canvas.shape[1]}x{canvas.shape[0]} leaves no frame inside "
                f"the {margin}px margin the motion needs"
            )
    h, w = _check_shape(frame_shape, canvas)
    need_h, need_w = h + 2 * margin, w + 2 * margin
    if canvas.shape[0] < need_h or canvas.shape[1] < need_w:
        raise ValueError(
            f"scene_image is {canvas.shape[1]}x{canvas.shape[0]}; {w}x{h} frames with this "
            f"motion need at least {need_w}x{need_h} (a {margin}px margin each side)"
        )
    renderer = _Renderer(canvas, (h, w), frames=frames, params=params, seed=seed, bits=bits)
    return _generate(renderer, offsets)


def _generate(renderer: _Renderer, offsets: np.ndarray) -> Iterator[SimFrame]:
    for index in range(offsets.shape[0]):
        dy, dx = (float(v) for v in offsets[index])
        image, sigma = renderer.render(index, dy, dx)
        yield SimFrame(index=index, image=image, offset=(dy, dx), blur_sigma=sigma)


def _spline_matrix(size: int, spacing: float) -> np.ndarray:
    """Cubic B-spline weights ``(size, nodes)`` that turn node values spaced ``spacing``
    pixels apart (centred on the field, one spare node beyond each end) into a smooth
    field of ``size`` pixels. Each row is scaled to unit L2 norm, so that independent
    unit-variance node values give a field of unit variance at every pixel."""
    nodes = int(math.ceil(size / spacing)) + 3
    first = (size - 1) / 2.0 - (nodes - 1) * spacing / 2.0
    pos = (np.arange(size, dtype=np.float64)[:, None] - first) / spacing
    u = np.abs(pos - np.arange(nodes, dtype=np.float64)[None, :])
    outer = np.where(u < 2.0, (2.0 - u) ** 3 / 6.0, 0.0)
    w = np.where(u < 1.0, 2.0 / 3.0 - u * u + 0.5 * u**3, outer)
    w /= np.sqrt((w * w).sum(axis=1, keepdims=True))
    return w.astype(np.float32)


class _Renderer:
    """The per-frame work, with the buffers and random states of a run."""

    def __init__(
        self,
        canvas: np.ndarray,
        shape: tuple[int, int],
        *,
        frames: int,
        params: SeeingParams,
        seed: int,
        bits: int,
    ) -> None:
        self.canvas = canvas
        self.params = params
        h, w = shape
        self.shape = shape
        # geometric blur levels; level k has sigma blur_min * ratio**k
        count = params.blur_level_count
        self.log_ratio = math.log(params.blur_max / params.blur_min) / (count - 1)
        sigmas = [params.blur_min * math.exp(k * self.log_ratio) for k in range(count)]
        # incremental sigmas of the blur cascade: level k = level k-1 blurred by step k
        pairs = zip(sigmas[:-1], sigmas[1:], strict=True)
        self.steps = [sigmas[0]] + [math.sqrt(b * b - a * a) for a, b in pairs]
        self.pad = pad = int(math.ceil(BLUR_PAD_SIGMAS * params.blur_max))
        hp, wp = h + 2 * pad, w + 2 * pad
        # canvas coordinates of the padded frame's pixels at zero offset
        oy = (canvas.shape[0] - h) / 2.0 - pad
        ox = (canvas.shape[1] - w) / 2.0 - pad
        self.base_y = np.repeat((np.arange(hp, dtype=np.float32) + np.float32(oy))[:, None], wp, 1)
        self.base_x = np.repeat((np.arange(wp, dtype=np.float32) + np.float32(ox))[None, :], hp, 0)
        spacing = params.cell_frac * max(h, w)
        self.interp_y = _spline_matrix(hp, spacing)
        self.interp_x = np.ascontiguousarray(_spline_matrix(wp, spacing).T)
        grid = (self.interp_y.shape[1], self.interp_x.shape[0])
        # weights of the node values in the detail-weighted mean over the frame
        weights = np.zeros((hp, wp), np.float64)
        weights[pad : pad + h, pad : pad + w] = detail_weights(truth_view(canvas, shape))
        self.node_weights = self.interp_y.T.astype(np.float64) @ weights @ self.interp_x.T
        self.field_rng = np.random.default_rng([seed, FIELD_STREAM])
        self.noise_rng = np.random.default_rng([seed, NOISE_STREAM])
        self.rho = math.exp(-1.0 / params.coherence_frames)
        self.innov = math.sqrt(1.0 - self.rho * self.rho)
        self.state = self.field_rng.standard_normal((3, *grid))  # warp y, warp x, blur
        self.global_blur = float(self.field_rng.standard_normal())
        self.factors = profile_factor(np.arange(frames), frames=frames, params=params)
        if bits == 8:
            self.adc_max, self.out_max, self.dtype = 255.0, 255.0, np.uint8
        else:
            self.adc_max = float(2**params.adc_bits - 1)
            self.out_max, self.dtype = 65535.0, np.uint16
        self.out_shape = shape + canvas.shape[2:]

    def _advance(self, index: int) -> None:
        if index == 0:
            return
        noise = self.field_rng.standard_normal(self.state.shape)
        self.state = self.rho * self.state + self.innov * noise
        g = float(self.field_rng.standard_normal())
        self.global_blur = self.rho * self.global_blur + self.innov * g

    def _upsample(self, grid: np.ndarray) -> np.ndarray:
        """The smooth, unit-variance, full-resolution (padded) field of node values."""
        # einsum rather than a matrix product: these products are small, and a threaded
        # BLAS spins its idle threads on the other cores for longer than the work takes
        rows = np.einsum("ij,jk->ik", self.interp_y, grid.astype(np.float32))
        return np.einsum("ij,jk->ik", rows, self.interp_x)

    def render(self, index: int, dy: float, dx: float) -> tuple[np.ndarray, float]:
        p = self.params
        self._advance(index)
        factor = float(self.factors[index])
        # local displacements of zero (detail-weighted) mean over the frame: the global
        # offset is the frame's mean displacement. The weighted mean of the upsampled
        # field is a weighted sum of the node values (self.node_weights).
        warp = p.warp_rms * factor
        warp_y = self._upsample(self.state[0])
        warp_x = self._upsample(self.state[1])
        warp_y *= np.float32(warp)
        warp_x *= np.float32(warp)
        mean_y = warp * float(np.sum(self.node_weights * self.state[0]))
        mean_x = warp * float(np.sum(self.node_weights * self.state[1]))
        map_y = self.base_y + warp_y
        map_y += np.float32(dy - mean_y)
        map_x = self.base_x + warp_x
        map_x += np.float32(dx - mean_x)
        view = cv2.remap(
            self.canvas, map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT101
        )
        # blur: ln(sigma) = frame part + local part; its level position is linear in it
        share = p.blur_local_share
        log_median = (
            math.log(p.blur_median * factor)
            + p.blur_spread * math.sqrt(1.0 - share) * self.global_blur
        )
        level = self._upsample(self.state[2])
        level *= np.float32(p.blur_spread * math.sqrt(share) / self.log_ratio)
        level += np.float32((log_median - math.log(p.blur_min)) / self.log_ratio)
        image = self._blur(view, level)
        out = self._expose(image)
        median_sigma = float(np.clip(math.exp(log_median), p.blur_min, p.blur_max))
        return out, median_sigma

    def _blur(self, view: np.ndarray, level: np.ndarray) -> np.ndarray:
        """Mix the blur levels by the fractional level position ``level`` of each pixel,
        then crop the padding."""
        if view.ndim == 3:
            level = level[:, :, None]
        current = cv2.GaussianBlur(view, (0, 0), self.steps[0])
        out = current.copy()
        weight = np.empty_like(level)
        for k, step in enumerate(self.steps[1:]):
            nxt = cv2.GaussianBlur(current, (0, 0), step)
            np.subtract(level, np.float32(k), out=weight)
            np.clip(weight, 0.0, 1.0, out=weight)
            current = np.subtract(nxt, current, out=current)
            current *= weight
            out += current
            current = nxt
        pad = self.pad
        h, w = self.shape
        return out[pad : pad + h, pad : pad + w]

    def _expose(self, image: np.ndarray) -> np.ndarray:
        """Photon and read noise, then quantisation."""
        p = self.params
        electrons = np.maximum(image, 0.0).reshape(image.shape[0], -1)
        electrons *= np.float32(p.full_well)
        std = cv2.sqrt(electrons + np.float32(p.read_noise**2))
        noise = np.empty_like(electrons)
        # OpenCV's per-thread RNG, reseeded from the run's noise stream before each use:
        # the frames do not depend on anything else that used it, and it is ~4x faster
        # than numpy's normal generator for float32
        cv2.setRNGSeed(int(self.noise_rng.integers(0, 2**31 - 1)))
        cv2.randn(noise, 0.0, 1.0)
        noise *= std
        electrons += noise
        electrons *= np.float32(self.adc_max / p.full_well)
        electrons += np.float32(0.5)
        np.clip(electrons, 0.0, self.adc_max, out=electrons)
        if self.adc_max != self.out_max:
            codes = np.floor(electrons)
            codes *= np.float32(self.out_max / self.adc_max)
            codes += np.float32(0.5)
            electrons = codes
        return electrons.astype(self.dtype).reshape(self.out_shape)
