"""Shared fixtures of the pipeline and live-engine tests.

Simulated captures are rendered once per test session (they are the slow part) into
``tmp_path_factory`` folders and shared through factory fixtures; so are the offline
pipeline's results on them. Everything here is small on purpose (320x240, about a hundred
frames) so that the pipeline and live tests together run in a few minutes on two cores.

Helpers the tests need as plain functions (known sub-pixel shifts, dtype conversion) are
exposed as fixtures returning callables, so that no test imports from a conftest module.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.fft as sfft

from live_stack.io import open_source
from live_stack.io.images import read_image
from live_stack.pipeline import PipelineParams, PipelineResult, run
from live_stack.simulate import CaptureInfo, render_scene, simulate_capture

#: Frame size of the simulated test captures.
SIM_WIDTH, SIM_HEIGHT = 320, 240
#: Frames of a simulated test capture (enough for a 10 % stack of a dozen frames).
SIM_FRAMES = 120
#: Seed of every simulated capture (fixed: known answers must not depend on luck).
SIM_SEED = 1
#: Stack sizes of the cached offline results (10 % is the comparison with the baselines).
SIM_STACK_SIZES = ("10%", "25%")

#: The real capture shipped beside the repository (see ../shared/data/README.md).
REAL_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
REAL_CAPTURE = REAL_DATA / "moon_pss_short.avi"


@dataclass(frozen=True, eq=False)
class Capture:
    """A simulated capture loaded into memory with its truth."""

    info: CaptureInfo  # what simulate_capture wrote (paths, offsets, timestamps)
    frames: list[np.ndarray]  # the raw frames as read back from video.ser
    truth: np.ndarray  # float32 [0, 1] truth, the size of the frames

    @property
    def scene(self) -> str:
        return self.info.scene


@pytest.fixture(scope="session")
def sim_capture(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Capture]:
    """Factory ``sim_capture(scene, *, frames=120, seeing="normal", drift=None, bits=8,
    colour=False, seed=1)``: a simulated 320x240 capture, rendered once per session."""
    cache: dict[tuple, Capture] = {}

    def get(scene: str, *, frames: int = SIM_FRAMES, seeing: str = "normal",
            drift: float | None = None, bits: int = 8, colour: bool = False,
            seed: int = SIM_SEED) -> Capture:
        key = (scene, frames, seeing, drift, bits, colour, seed)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"sim-{scene}-{frames}")
            info = simulate_capture(scene, frames=frames, out_dir=out, seed=seed, bits=bits,
                                    width=SIM_WIDTH, height=SIM_HEIGHT, drift=drift,
                                    seeing=seeing, colour=colour)
            with open_source(info.video) as src:
                loaded = [np.array(src[i], copy=True) for i in range(len(src))]
            truth, _ = read_image(info.truth)
            cache[key] = Capture(info=info, frames=loaded, truth=truth)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def offline_result(sim_capture: Callable[..., Capture]) -> Callable[[str], PipelineResult]:
    """Factory ``offline_result(scene)``: the pipeline (default parameters, stack sizes
    10% and 25%) on ``sim_capture(scene)``, run once per session."""
    cache: dict[str, PipelineResult] = {}

    def get(scene: str) -> PipelineResult:
        if scene not in cache:
            cache[scene] = run(sim_capture(scene).frames,
                               PipelineParams(stack_sizes=SIM_STACK_SIZES))
        return cache[scene]

    return get


@pytest.fixture(scope="session")
def scene_canvas() -> Callable[..., np.ndarray]:
    """Factory ``scene_canvas(name, width, height, *, scale=240, seed=1)``: a sharp
    float32 scene from :func:`live_stack.simulate.render_scene` (cached)."""
    cache: dict[tuple, np.ndarray] = {}

    def get(name: str, width: int, height: int, *, scale: float = SIM_HEIGHT,
            seed: int = SIM_SEED) -> np.ndarray:
        key = (name, width, height, scale, seed)
        if key not in cache:
            img = render_scene(name, width=width, height=height, seed=seed, scale=scale)
            img.setflags(write=False)
            cache[key] = img
        return cache[key]

    return get


def _fourier_shift(image: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """``out(y, x) = image(y - dy, x - dx)``, circularly, by an exact Fourier phase ramp."""
    img = np.asarray(image, dtype=np.float64)
    h, w = img.shape
    fy = sfft.fftfreq(h)[:, None]
    fx = sfft.rfftfreq(w)[None, :]
    ramp = np.exp(-2j * np.pi * (fy * dy + fx * dx))
    return sfft.irfft2(sfft.rfft2(img) * ramp, s=(h, w))


@pytest.fixture(scope="session")
def shifted_view() -> Callable[..., np.ndarray]:
    """Factory ``shifted_view(canvas, dy, dx, shape, *, noise=0.0, seed=0)``.

    The central ``shape`` part of ``canvas`` with its content displaced by ``+(dy, dx)``
    (the convention of :mod:`live_stack.correlate`: the view shows the zero-shift view
    at ``(y - dy, x - dx)``). The integer part is a crop, the fractional part an exact
    Fourier shift of a slightly larger crop (so the circular wrap stays out of the view).
    Gaussian noise of ``noise`` (on the [0, 1] scale) is added. float64 result.
    """
    pad = 16

    def view(canvas: np.ndarray, dy: float, dx: float, shape: tuple[int, int], *,
             noise: float = 0.0, seed: int = 0) -> np.ndarray:
        h, w = shape
        ch, cw = canvas.shape[:2]
        iy, ix = int(np.floor(dy)), int(np.floor(dx))
        fy, fx = dy - iy, dx - ix
        y0 = (ch - h) // 2 - iy - pad
        x0 = (cw - w) // 2 - ix - pad
        if y0 < 0 or x0 < 0 or y0 + h + 2 * pad > ch or x0 + w + 2 * pad > cw:
            raise ValueError(f"canvas {cw}x{ch} too small for a {w}x{h} view at ({dy}, {dx})")
        crop = canvas[y0 : y0 + h + 2 * pad, x0 : x0 + w + 2 * pad]
        out = _fourier_shift(crop, fy, fx)[pad : pad + h, pad : pad + w]
        if noise:
            out = out + np.random.default_rng(seed).normal(0.0, noise, out.shape)
        return out

    return view


@pytest.fixture(scope="session")
def as_dtype() -> Callable[[np.ndarray, str], np.ndarray]:
    """Factory ``as_dtype(image01, dtype_name)``: a [0, 1] image as uint8/uint16/float32."""

    def convert(image: np.ndarray, dtype: str) -> np.ndarray:
        img = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
        if dtype == "uint8":
            return np.round(img * 255).astype(np.uint8)
        if dtype == "uint16":
            return np.round(img * 65535).astype(np.uint16)
        if dtype == "float32":
            return img.astype(np.float32)
        raise ValueError(f"dtype must be uint8, uint16 or float32, got {dtype!r}")

    return convert


@pytest.fixture(scope="session")
def live_stack_command() -> str:
    """Path of the ``live-stack`` console script of the environment running the tests.

    It sits beside ``sys.executable`` (``.venv/bin`` for ``scripts/test.sh``), so the tests
    never depend on PATH. The symlink of a venv's python is not resolved: the script is in
    the venv, not beside the interpreter it points to. Fails (never skips) when absent:
    the project is then not installed in the environment running the tests.
    """
    exe = Path(sys.executable).parent / "live-stack"
    if not exe.is_file():
        pytest.fail(f"the live-stack console script is not beside {sys.executable} "
                    "(install the project into this environment: bash scripts/setup.sh)")
    return str(exe)


@pytest.fixture(scope="session")
def real_capture() -> Path:
    """Path of ../shared/data/moon_pss_short.avi; skips the test if it is not there."""
    if not REAL_CAPTURE.is_file():
        pytest.skip(f"real capture {REAL_CAPTURE} is absent (the ../shared/data folder "
                    "is not part of this checkout)")
    return REAL_CAPTURE


@pytest.fixture(scope="session")
def poor_light_capture(tmp_path_factory: pytest.TempPathFactory):
    """A low-contrast mare at 500 electrons in D/r0 = 7 seeing, 120 frames of 192x192,
    from the physical seeing model (issue 13): many local shifts fall back. The same as
    ``live-stack simulate mare --frames 120 --size 192x192 --seeing physical --d-r0 7
    --electrons 500 --seed 3``."""
    from live_stack.simulate import simulate_capture
    from live_stack.simulate.turbulence import TurbulenceParams

    params = TurbulenceParams(d_over_r0=7.0, electrons=500.0)
    return simulate_capture("mare", frames=120, out_dir=tmp_path_factory.mktemp("poor"),
                            seed=3, width=192, height=192, seeing=params)


@pytest.fixture(scope="session")
def decodable_frames() -> Callable[[Path], int]:
    """``decodable_frames(path)``: how many frames OpenCV decodes from a video file, read
    to its end here, independently of live-stack's video reader."""

    def count(path: Path) -> int:
        cap = cv2.VideoCapture(str(path))
        try:
            n = 0
            while cap.read()[0]:
                n += 1
            return n
        finally:
            cap.release()

    return count
