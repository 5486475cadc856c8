"""Calibration: master darks and flats (functions and ``live-stack master-dark/-flat``),
and applying them, which removes a simulated hot-pixel pattern and vignetting."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from live_stack.calibrate import (
    CalibParams,
    CalibratedSource,
    Calibration,
    MasterParams,
    calibrate_source,
    combine,
    flat_gain,
    load_calibration,
    master_dark,
    master_flat,
)
from live_stack.calibrate_cli import dark_main, flat_main
from live_stack.io import open_source
from live_stack.io.images import read_image, write_image
from live_stack.io.ser import SerWriter
from live_stack.live import LiveParams, LiveStacker
from live_stack.reprocess_cli import main as reprocess_main
from live_stack.simulate.score import score

H, W = 240, 320  # the simulated capture's frame size (tests/conftest.py)
#: Camera model of the corrupted capture (8-bit ADU).
BIAS = 10.0
HOT_SHARE = 1 / 400  # share of the pixels that are hot
HOT_ADU = (40.0, 80.0)  # their excess signal
VIGNETTE = 0.45  # light lost in the corners
LIGHT_GAIN = 0.6  # the scene's full scale, so that hot pixels do not saturate
FLAT_ADU = 180.0
DARK_NOISE, FLAT_NOISE = 1.5, 3.0
CALIBRATION_FRAMES = 16
CAPTURE_FRAMES = 60
#: Mean error (ADU) left at the hot pixels of a calibrated frame (it is ~60 before).
HOT_RESIDUAL_ADU = 1.5
#: Largest brightness difference between the centre and the corners after flat-fielding.
FLATNESS = 0.02
#: The calibrated stack must beat the uncalibrated one by this much (dB), and come this
#: close to the stack of the clean frames.
CALIBRATION_GAIN_DB = 1.0
CLEAN_LOSS_DB = 0.5


def _u8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


class Camera:
    """Hot pixels, bias and vignetting of a simulated sensor and optics."""

    def __init__(self, seed: int = 5) -> None:
        rng = np.random.default_rng(seed)
        self.rng = rng
        self.hot = np.zeros((H, W))
        idx = rng.choice(H * W, int(H * W * HOT_SHARE), replace=False)
        self.hot.flat[idx] = rng.uniform(*HOT_ADU, len(idx))
        y, x = np.mgrid[0:H, 0:W]
        r2 = ((y - H / 2) ** 2 + (x - W / 2) ** 2) / ((H / 2) ** 2 + (W / 2) ** 2)
        self.vignette = 1.0 - VIGNETTE * r2

    def light(self, frame: np.ndarray) -> np.ndarray:
        return _u8(frame * LIGHT_GAIN * self.vignette + BIAS + self.hot)

    def dark(self) -> np.ndarray:
        return _u8(BIAS + self.hot + self.rng.normal(0, DARK_NOISE, (H, W)))

    def flat(self) -> np.ndarray:
        return _u8(FLAT_ADU * self.vignette + BIAS + self.hot
                   + self.rng.normal(0, FLAT_NOISE, (H, W)))


def _ser(path: Path, frames: list[np.ndarray]) -> Path:
    with SerWriter(path, width=frames[0].shape[1], height=frames[0].shape[0]) as writer:
        for f in frames:
            writer.write(f)
    return path


@pytest.fixture(scope="module")
def camera() -> Camera:
    return Camera()


@pytest.fixture(scope="module")
def files(camera, sim_capture, tmp_path_factory) -> dict[str, Path]:
    """Dark frames (a folder of PNGs), flat frames (SER), a corrupted capture (SER), and
    masters built from them with the command-line tools."""
    d = tmp_path_factory.mktemp("calib")
    darks = d / "darks"
    darks.mkdir()
    for i in range(CALIBRATION_FRAMES):
        cv2.imwrite(str(darks / f"dark{i:03d}.png"), camera.dark())
    flats = _ser(d / "flats.ser", [camera.flat() for _ in range(CALIBRATION_FRAMES)])
    frames = sim_capture("moon").frames[:CAPTURE_FRAMES]
    lights = _ser(d / "lights.ser", [camera.light(f) for f in frames])
    clean = _ser(d / "clean.ser", frames)
    assert dark_main([str(darks), "-o", str(d / "dark.tif")]) == 0
    assert flat_main([str(flats), "--dark", str(d / "dark.tif"), "-o", str(d / "flat.fits")]) == 0
    return {"darks": darks, "flats": flats, "lights": lights, "clean": clean,
            "dark": d / "dark.tif", "flat": d / "flat.fits", "dir": d}


def test_masters_record_what_they_are(files) -> None:
    dark, meta = read_image(files["dark"])
    assert dark.shape == (H, W)
    assert meta["master"] == "dark" and meta["frames"] == CALIBRATION_FRAMES
    assert meta["method"] == "median" and meta["layout"] == "mono"
    flat, meta = read_image(files["flat"])
    assert meta["master"] == "flat" and meta["dark_subtracted"] and meta["dark"] == "dark.tif"
    assert flat.shape == (H, W)


def test_calibration_removes_hot_pixels_and_vignetting(files, camera, sim_capture) -> None:
    cal = load_calibration(CalibParams(dark=str(files["dark"]), flat=str(files["flat"])))
    assert cal is not None and cal.shape == (H, W)
    frame = sim_capture("moon").frames[0]
    raw = camera.light(frame)
    out = cal.apply(raw)
    assert out.dtype == np.uint8 and out.shape == raw.shape
    expected = frame * LIGHT_GAIN * camera.vignette.mean()
    hot = camera.hot > 0
    before = np.abs(raw - (frame * LIGHT_GAIN * camera.vignette + BIAS))[hot].mean()
    after = np.abs(out - expected)[hot].mean()
    assert before > HOT_ADU[0] and after < HOT_RESIDUAL_ADU
    # vignetting: the ratio to the scene is the same in the centre and in the corners
    lit = frame > 0.2
    ratio = np.where(lit, out / np.maximum(frame, 1e-6), np.nan)
    centre = np.nanmedian(ratio[H // 3 : 2 * H // 3, W // 3 : 2 * W // 3])
    corners = np.nanmedian(np.concatenate([ratio[:H // 5, :W // 5].ravel(),
                                           ratio[-H // 5:, -W // 5:].ravel()]))
    assert abs(corners / centre - 1) < FLATNESS
    raw_ratio = np.where(lit, raw / np.maximum(frame, 1e-6), np.nan)
    assert np.nanmedian(raw_ratio[:H // 5, :W // 5]) < 0.8 * np.nanmedian(
        raw_ratio[H // 3 : 2 * H // 3, W // 3 : 2 * W // 3])


def test_reprocess_with_dark_and_flat(files, sim_capture, tmp_path, capsys) -> None:
    truth = sim_capture("moon").truth
    outs = {}
    for name, extra in (("clean", []), ("bad", []),
                        ("cal", ["--dark", str(files["dark"]), "--flat", str(files["flat"])])):
        src = files["clean"] if name == "clean" else files["lights"]
        outs[name] = tmp_path / f"{name}.tif"
        assert reprocess_main([str(src), "-o", str(outs[name]), "--stack", "25%", "-q"]
                              + extra) == 0
    psnr = {k: score(read_image(p)[0], truth, fit_gain=True).psnr for k, p in outs.items()}
    assert psnr["cal"] > psnr["bad"] + CALIBRATION_GAIN_DB
    assert psnr["cal"] > psnr["clean"] - CLEAN_LOSS_DB
    meta = read_image(outs["cal"])[1]
    assert meta["calibration"] == {"dark": "dark.tif", "flat": "flat.fits"}


def test_calibration_in_a_config_file(files, tmp_path, capsys) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[calib]\ndark = "{files["dark"]}"\n')
    out = tmp_path / "o.tif"
    assert reprocess_main([str(files["lights"]), "-o", str(out), "--config", str(config),
                           "-q"]) == 0
    assert read_image(out)[1]["calibration"]["dark"] == "dark.tif"


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_apply_keeps_the_dtype(as_dtype, dtype) -> None:
    rng = np.random.default_rng(0)
    scene = rng.uniform(0.2, 0.8, (16, 24))
    dark = np.full((16, 24), 0.05, np.float32)
    flat = np.full((16, 24), 0.5, np.float32)
    flat[:, :12] = 0.25  # the left half gets half the light
    cal = Calibration(dark=dark, gain=flat_gain(flat))
    lit = scene * np.where(np.arange(24) < 12, 0.5, 1.0)[None, :] + 0.05
    out = cal.apply(as_dtype(lit, dtype))
    assert out.dtype == np.dtype(dtype)
    scale = {"uint8": 255.0, "uint16": 65535.0, "float32": 1.0}[dtype]
    # mean(flat) / flat is 1.5 on the left and 0.75 on the right
    expected = scene * 0.75
    np.testing.assert_allclose(out / scale, expected, atol=2.5 / 255 if dtype == "uint8" else 1e-4)


def test_dark_subtraction_clips_at_zero_and_the_top() -> None:
    cal = Calibration(dark=np.full((8, 8), 0.5, np.float32), gain=np.full((8, 8), 4.0, np.float32))
    frame = np.zeros((8, 8), np.uint8)
    frame[0, 0], frame[1, 1] = 255, 100
    out = cal.apply(frame)
    assert out[0, 0] == 255 and out[1, 1] == 0 and out[2, 2] == 0


def test_flat_gain_per_bayer_cell_and_channel() -> None:
    # a yellowish flat: red cells brighter than blue ones, and a vignette
    y, x = np.mgrid[0:16, 0:16]
    vig = 1.0 - 0.3 * ((y - 8) ** 2 + (x - 8) ** 2) / 128.0
    cells = np.tile(np.array([[0.8, 0.6], [0.6, 0.3]]), (8, 8))  # RGGB levels
    gain = flat_gain((cells * vig).astype(np.float32), "RGGB")
    flattened = cells * vig * gain
    for dy in (0, 1):
        for dx in (0, 1):
            part = flattened[dy::2, dx::2]
            # each cell keeps its own mean (the colour balance) and loses the vignette
            np.testing.assert_allclose(part, (cells * vig)[dy::2, dx::2].mean(), rtol=1e-5)
    rgb = np.stack([vig * 0.9, vig * 0.6, vig * 0.3], axis=-1).astype(np.float32)
    flat_rgb = rgb * flat_gain(rgb)
    for c in range(3):
        np.testing.assert_allclose(flat_rgb[..., c], rgb[..., c].mean(), rtol=1e-5)
    # a dead pixel is left alone rather than amplified
    dead = np.full((8, 8), 0.5, np.float32)
    dead[3, 3] = 0.0
    assert flat_gain(dead)[3, 3] == 1.0


def test_median_rejects_an_outlier_frame(tmp_path) -> None:
    frames = [np.full((8, 10), 20, np.uint8) for _ in range(5)]
    frames[2] = frames[2].copy()
    frames[2][4, 4] = 255  # a cosmic ray
    path = _ser(tmp_path / "d.ser", frames)
    with open_source(path) as src:
        med, used = combine(src, MasterParams(method="median"))
        mean, _ = combine(src, MasterParams(method="mean"))
        few, few_used = combine(src, MasterParams(max_frames=2))
    assert used == 5 and few_used == 2
    assert med[4, 4] == pytest.approx(20 / 255) and med.dtype == np.float32
    assert mean[4, 4] == pytest.approx((4 * 20 + 255) / 5 / 255)
    assert few[0, 0] == pytest.approx(20 / 255)


def test_calibrated_source(files) -> None:
    cal = load_calibration(CalibParams(dark=str(files["dark"])))
    with open_source(files["lights"]) as raw:
        src = calibrate_source(raw, cal)
        assert isinstance(src, CalibratedSource) and src.info.layout == "mono"
        assert len(src) == len(raw)
        np.testing.assert_array_equal(src[3], cal.apply(raw[3]))
        assert src.info.metadata["calibration"]["dark"] == "dark.tif"
        assert calibrate_source(raw, None) is raw
        assert load_calibration(CalibParams()) is None


def test_live_frames_calibrated_before_add(files, camera, sim_capture) -> None:
    """The daemon calibrates each frame (Calibration.apply) before the live stacker."""
    cal = load_calibration(CalibParams(dark=str(files["dark"]), flat=str(files["flat"])))
    cap = sim_capture("moon")
    psnrs = []
    for calibrate in (False, True):
        st = LiveStacker(LiveParams(buffer_size=40, warmup=20))
        for frame in cap.frames[:CAPTURE_FRAMES]:
            raw = camera.light(frame)
            st.add(cal.apply(raw) if calibrate else raw)
        psnrs.append(score(st.snapshot().image, cap.truth, fit_gain=True).psnr)
    assert psnrs[1] > psnrs[0] + CALIBRATION_GAIN_DB


def test_bad_masters_are_named(files, tmp_path, capsys) -> None:
    with pytest.raises(ValueError, match="no such master dark"):
        load_calibration(CalibParams(dark=str(tmp_path / "nodark.tif")))
    with pytest.raises(ValueError, match="master flat, given as the master dark"):
        load_calibration(CalibParams(dark=str(files["flat"])))
    small = tmp_path / "small.tif"
    write_image(small, np.zeros((16, 16), np.float32), metadata={"master": "dark"})
    with pytest.raises(ValueError, match="small.tif"):
        load_calibration(CalibParams(dark=str(small), flat=str(files["flat"])))
    cal = load_calibration(CalibParams(dark=str(small)))
    with pytest.raises(ValueError, match="small.tif.*16x16.*320x240"):
        cal.apply(np.zeros((H, W), np.uint8))
    with open_source(files["lights"]) as raw, pytest.raises(ValueError, match="small.tif"):
        calibrate_source(raw, cal)
    # reprocess: a missing master is a usage error; a master of the wrong size fails the
    # input (and the batch goes on)
    assert reprocess_main([str(files["lights"]), "--dark", str(tmp_path / "x.tif"), "-q"]) == 2
    assert "x.tif" in capsys.readouterr().err
    assert reprocess_main([str(files["lights"]), "--dark", str(small), "-q"]) == 1
    err = capsys.readouterr().err
    assert "small.tif" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="calib_dark"):
        CalibParams(dark=3)  # type: ignore[arg-type]


def test_bad_master_inputs(files, tmp_path, capsys) -> None:
    assert dark_main([str(tmp_path / "nothing"), "-o", str(tmp_path / "d.tif")]) == 1
    err = capsys.readouterr().err
    assert "nothing" in err and len(err.strip().splitlines()) == 1
    assert dark_main([str(files["darks"]), "-o", str(tmp_path / "d.jpg")]) == 2
    assert ".jpg" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dark_main([str(files["darks"]), "--method", "mode"])
    # a dark of another size than the flats, and a black flat
    small = tmp_path / "small.tif"
    write_image(small, np.zeros((16, 16), np.float32), metadata={"master": "dark"})
    assert flat_main([str(files["flats"]), "--dark", str(small)]) == 1
    assert "16x16" in capsys.readouterr().err
    black = _ser(tmp_path / "black.ser", [np.zeros((16, 16), np.uint8)] * 3)
    assert flat_main([str(black), "-o", str(tmp_path / "f.tif")]) == 1
    assert "black" in capsys.readouterr().err
    assert flat_main([str(files["flats"]), "--dark", str(files["flat"])]) == 1
    assert "not a dark" in capsys.readouterr().err
    with open_source(black) as src, pytest.raises(ValueError, match="dark is 8x8, the flat"):
        master_flat(src, dark=np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="max_frames"):
        MasterParams(max_frames=0)


def test_master_dark_default_output_and_subprocess(files, tmp_path,
                                                   live_stack_command) -> None:
    with open_source(files["flats"]) as src:
        m = master_dark(src, MasterParams(method="mean"))
    assert m.kind == "dark" and m.frames == CALIBRATION_FRAMES and m.metadata["layout"] == "mono"
    proc = subprocess.run([live_stack_command, "master-dark", str(files["darks"])],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    default = files["dir"] / "darks_dark.tif"
    assert default.is_file() and str(default) in proc.stdout
