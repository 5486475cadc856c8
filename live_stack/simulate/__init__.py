"""Simulated captures with a known truth, and scoring against it.

:func:`simulate_capture` renders a scene (:mod:`live_stack.simulate.scenes`), sees it
through a simulated atmosphere and camera (:mod:`live_stack.simulate.seeing`) and
writes, into an output folder:

* ``video.ser``: the frames, with timestamps at a nominal frame rate;
* ``truth.tif``: the sharp scene at the run's mean position, the size of the frames
  (16-bit TIFF written by :func:`live_stack.io.images.write_image`);
* ``truth.json``: the scene, seed, parameters and per-frame ground truth (global offsets
  and blur).

:func:`live_stack.simulate.score.score` compares a stack with the truth (import it from
its module: ``from live_stack.simulate.score import score``).

To make frames without files (e.g. to feed a live stacker directly)::

    params = seeing_params("normal", drift_px=200.0)
    offsets = global_offsets(frames=n, params=params, seed=0)
    margin = canvas_margin(offsets, params)
    canvas = render_scene("moon", width=640 + 2 * margin, height=480 + 2 * margin,
                          seed=0, scale=480)
    truth = truth_view(canvas, (480, 640))
    for frame in iter_frames(canvas, frames=n, params=params, seed=0,
                             frame_shape=(480, 640)):
        ...
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass

import numpy as np

from live_stack.io.images import write_image
from live_stack.io.ser import SerWriter
from live_stack.simulate.scenes import SCENES, render_scene
from live_stack.simulate.seeing import (
    BITS,
    SEEING_PRESETS,
    SeeingParams,
    SimFrame,
    canvas_margin,
    global_offsets,
    iter_frames,
    iter_sim_frames,
    seeing_params,
    truth_view,
)
from live_stack.simulate.turbulence import (
    TurbulenceParams,
    iter_physical_frames,
    physical_margin,
)

__all__ = [
    "CaptureInfo",
    "DEFAULT_FPS",
    "DEFAULT_START_TIME",
    "OFFSET_CONVENTION",
    "SCENES",
    "SEEING_PRESETS",
    "SeeingParams",
    "SimFrame",
    "TurbulenceParams",
    "canvas_margin",
    "global_offsets",
    "iter_frames",
    "iter_sim_frames",
    "render_scene",
    "seeing_params",
    "simulate_capture",
    "truth_view",
]

#: Nominal frame rate of the simulated capture (frames per second).
DEFAULT_FPS = 100.0
#: Capture time of the first frame, Unix seconds (2024-01-01T00:00:00Z): fixed, so that
#: the same arguments give the same files.
DEFAULT_START_TIME = 1704067200.0
#: File names written into the output folder.
VIDEO_NAME = "video.ser"
TRUTH_NAME = "truth.tif"
TRUTH_JSON_NAME = "truth.json"
#: Decimal places of the offsets and blur values stored in truth.json.
JSON_DECIMALS = 4
#: The offsets convention, as stored in truth.json.
OFFSET_CONVENTION = (
    "frame[y, x] shows truth[y + dy, x + dx] (up to local warps); offsets are (dy, dx) "
    "in pixels and have zero mean over the run"
)


@dataclass(frozen=True, eq=False)
class CaptureInfo:
    """What :func:`simulate_capture` wrote."""

    out_dir: str  # the output folder
    video: str  # path of video.ser
    truth: str  # path of truth.tif
    truth_json: str  # path of truth.json
    scene: str  # scene name
    frames: int  # number of frames
    width: int  # frame width, pixels
    height: int  # frame height, pixels
    bits: int  # 8 or 16
    colour: bool  # RGB frames (else mono)
    seed: int  # the seed
    params: SeeingParams | TurbulenceParams  # the seeing and camera model
    offsets: np.ndarray  # float64 (frames, 2): per-frame (dy, dx), see OFFSET_CONVENTION
    blur_sigma: np.ndarray  # float64 (frames,): per-frame median blur sigma (physical
    # model: seeing FWHM lambda / r0), px
    timestamps: np.ndarray  # float64 (frames,): Unix seconds


def simulate_capture(
    scene: str,
    *,
    frames: int,
    out_dir: str | os.PathLike[str],
    seed: int = 0,
    bits: int = 8,
    width: int = 640,
    height: int = 480,
    drift: float | None = None,
    seeing: str | SeeingParams | TurbulenceParams = "normal",
    colour: bool = False,
    fps: float = DEFAULT_FPS,
    start_time: float = DEFAULT_START_TIME,
) -> CaptureInfo:
    """Simulate a capture and write it with its truth into ``out_dir``.

    Parameters
    ----------
    scene : str
        One of :data:`live_stack.simulate.scenes.SCENES`: ``"moon"``, ``"planet"``,
        ``"sun"``.
    frames : int
        Number of frames (>= 1).
    out_dir : str or os.PathLike
        Output folder, created if needed; existing files of the same names are replaced.
    seed : int
        Seed (>= 0): the same arguments write the same frames and truth.
    bits : int
        8 or 16 bits per sample (16: a 12-bit ADC scaled into the uint16 range, see
        :class:`SeeingParams` ``adc_bits``).
    width, height : int
        Frame size in pixels.
    drift : float, optional
        Total drift over the run in pixels; overrides the seeing's ``drift_px``.
    seeing : str, SeeingParams or TurbulenceParams
        A preset name (``"good"``, ``"normal"``, ``"poor"``, ``"worsening"``) or the
        full parameters of the warp-and-blur model; or the parameters of the physical
        model (:mod:`live_stack.simulate.turbulence`: layered von Karman turbulence,
        short-exposure PSFs, Poisson and read noise; mono only; ``drift`` overrides its
        ``drift_px``; its offsets are not made zero-mean).
    colour : bool
        Write RGB frames (SER layout ``"rgb"``) and an RGB truth.
    fps : float
        Nominal frame rate for the timestamps (> 0).
    start_time : float
        Timestamp of the first frame, Unix seconds.

    Returns
    -------
    CaptureInfo

    Raises
    ------
    ValueError
        If an argument is invalid (naming it).
    OSError
        If the files cannot be written.
    """
    if scene not in SCENES:
        raise ValueError(f"scene must be one of {SCENES}, got {scene!r}")
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    physical = isinstance(seeing, TurbulenceParams)
    if physical and colour:
        raise ValueError("colour: the physical seeing model renders mono frames only")
    if isinstance(seeing, (SeeingParams, TurbulenceParams)):
        params = seeing
        seeing_name = "physical" if physical else "custom"
    else:
        params = seeing_params(seeing)
        seeing_name = seeing
    if drift is not None:
        params = dataclasses.replace(params, drift_px=float(drift))
    if not (isinstance(fps, (int, float)) and np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if not (isinstance(start_time, (int, float)) and np.isfinite(start_time)):
        raise ValueError(f"start_time must be finite Unix seconds, got {start_time!r}")
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 16:
            raise ValueError(f"{name} must be an integer >= 16, got {value!r}")

    if physical:
        offsets = np.zeros((frames, 2))  # filled in as the frames are rendered
        margin = physical_margin(params, frames)
    else:
        offsets = global_offsets(frames=frames, params=params, seed=seed)
        margin = canvas_margin(offsets, params)
    canvas = render_scene(
        scene,
        width=int(width) + 2 * margin,
        height=int(height) + 2 * margin,
        seed=seed,
        colour=colour,
        scale=float(height),
    )
    truth = truth_view(canvas, (int(height), int(width)))

    out = os.fspath(out_dir)
    os.makedirs(out, exist_ok=True)
    video = os.path.join(out, VIDEO_NAME)
    truth_path = os.path.join(out, TRUTH_NAME)
    json_path = os.path.join(out, TRUTH_JSON_NAME)
    timestamps = start_time + np.arange(frames, dtype=np.float64) / float(fps)
    sigmas = np.empty(frames, np.float64)
    with SerWriter(
        video,
        width=int(width),
        height=int(height),
        layout="rgb" if colour else "mono",
        bit_depth=bits,
        observer="live-stack simulate",
        instrument=f"simulated {scene}",
    ) as writer:
        make = iter_physical_frames if physical else iter_sim_frames
        for sim in make(
            canvas,
            frames=frames,
            params=params,  # type: ignore[arg-type]
            seed=seed,
            bits=bits,
            frame_shape=(int(height), int(width)),
        ):
            writer.write(sim.image, float(timestamps[sim.index]))
            sigmas[sim.index] = sim.blur_sigma
            offsets[sim.index] = sim.offset

    description = {
        "scene": scene,
        "seed": int(seed),
        "frames": int(frames),
        "width": int(width),
        "height": int(height),
        "bits": int(bits),
        "colour": bool(colour),
        "fps": float(fps),
        "start_time": float(start_time),
        "seeing": seeing_name,
        "params": dataclasses.asdict(params),
    }
    write_image(truth_path, truth, metadata={"simulated": description})
    record = {
        **description,
        "margin": margin,
        "offset_convention": OFFSET_CONVENTION,
        "offsets": np.round(offsets, JSON_DECIMALS).tolist(),
        "blur_sigma": np.round(sigmas, JSON_DECIMALS).tolist(),
    }
    tmp = json_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    os.replace(tmp, json_path)
    return CaptureInfo(
        out_dir=out,
        video=video,
        truth=truth_path,
        truth_json=json_path,
        scene=scene,
        frames=int(frames),
        width=int(width),
        height=int(height),
        bits=int(bits),
        colour=bool(colour),
        seed=int(seed),
        params=params,
        offsets=offsets,
        blur_sigma=sigmas,
        timestamps=timestamps,
    )
