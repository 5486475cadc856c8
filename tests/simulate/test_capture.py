"""simulate_capture and the ``live-stack simulate`` command: files, truth, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from live_stack.cli import main as live_stack_main
from live_stack.io import open_source
from live_stack.io.images import read_image
from live_stack.simulate import OFFSET_CONVENTION, simulate_capture
from live_stack.simulate.cli import main
from live_stack.simulate.score import score
from live_stack.simulate.seeing import SeeingParams

W, H = 96, 72


@pytest.mark.parametrize(("bits", "colour"), [(8, False), (16, False), (8, True), (16, True)])
def test_writes_video_truth_and_json(tmp_path, bits: int, colour: bool) -> None:
    info = simulate_capture(
        "planet",
        frames=5,
        out_dir=tmp_path / "cap",
        seed=3,
        bits=bits,
        width=W,
        height=H,
        colour=colour,
        fps=50.0,
    )
    with open_source(info.video) as src:
        assert len(src) == 5
        assert (src.info.width, src.info.height) == (W, H)
        assert src.info.dtype == (np.uint8 if bits == 8 else np.uint16)
        assert src.info.layout == ("rgb" if colour else "mono")
        frames = [src[i] for i in range(5)]
        stamps = src.timestamps()
    assert stamps is not None
    assert np.allclose(np.diff(stamps), 1 / 50.0, atol=1e-6)
    assert np.allclose(stamps, info.timestamps, atol=1e-6)
    truth, meta = read_image(info.truth)
    assert truth.shape == frames[0].shape
    assert meta["simulated"]["scene"] == "planet"
    record = json.loads((tmp_path / "cap" / "truth.json").read_text())
    assert record["scene"] == "planet" and record["seed"] == 3 and record["bits"] == bits
    assert record["offset_convention"] == OFFSET_CONVENTION
    assert np.allclose(record["offsets"], info.offsets, atol=1e-4)
    assert len(record["blur_sigma"]) == 5
    assert record["params"]["blur_median"] == info.params.blur_median
    # the truth is what the frames show, blurred and noisy: a fair PSNR
    s = score(frames[0], truth)
    assert math.isfinite(s.psnr) and s.psnr > 20
    assert (s.shift_y, s.shift_x) == pytest.approx(tuple(info.offsets[0]), abs=0.5)


def test_same_seed_same_capture(tmp_path) -> None:
    a = simulate_capture("moon", frames=3, out_dir=tmp_path / "a", seed=1, width=W, height=H)
    b = simulate_capture("moon", frames=3, out_dir=tmp_path / "b", seed=1, width=W, height=H)
    c = simulate_capture("moon", frames=3, out_dir=tmp_path / "c", seed=2, width=W, height=H)
    video_a = (tmp_path / "a" / "video.ser").read_bytes()
    assert video_a == (tmp_path / "b" / "video.ser").read_bytes()
    assert np.array_equal(read_image(a.truth)[0], read_image(b.truth)[0])
    assert not np.array_equal(read_image(a.truth)[0], read_image(c.truth)[0])


def test_long_drift(tmp_path) -> None:
    w, h = 320, 240
    info = simulate_capture(
        "sun", frames=5, out_dir=tmp_path, width=w, height=h, drift=200.0, seeing="good"
    )
    span = np.hypot(*(info.offsets[-1] - info.offsets[0]))
    assert span == pytest.approx(200.0, abs=4 * info.params.jitter_rms)
    truth = read_image(info.truth)[0]
    with open_source(info.video) as src:
        for k in (1, 2, 3):  # about 50 px either side of the mean position, and at it
            s = score(src[k], truth)
            assert (s.shift_y, s.shift_x) == pytest.approx(tuple(info.offsets[k]), abs=0.5)


def test_custom_params(tmp_path) -> None:
    params = SeeingParams(jitter_rms=0.0, warp_rms=0.0)
    info = simulate_capture("moon", frames=2, out_dir=tmp_path, width=W, height=H, seeing=params)
    assert np.allclose(info.offsets, 0.0)
    assert json.loads((tmp_path / "truth.json").read_text())["seeing"] == "custom"


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"scene": "mars"}, "scene"),
        ({"frames": 0}, "frames"),
        ({"bits": 12}, "bits"),
        ({"width": 4}, "width"),
        ({"seeing": "terrible"}, "seeing"),
        ({"seed": -1}, "seed"),
        ({"fps": 0.0}, "fps"),
        ({"drift": -5.0}, "drift_px"),
    ],
)
def test_bad_arguments(tmp_path, kwargs: dict, word: str) -> None:
    args = {"scene": "moon", "frames": 2, "width": W, "height": H, **kwargs}
    scene = args.pop("scene")
    with pytest.raises(ValueError, match=word):
        simulate_capture(scene, out_dir=tmp_path, **args)
    assert not (tmp_path / "video.ser").exists()


def test_cli_writes_files(tmp_path, capsys) -> None:
    out = tmp_path / "sim"
    rc = main(
        [
            "sun",
            "--frames",
            "3",
            "-o",
            str(out),
            "--size",
            "80x64",
            "--bits",
            "16",
            "--seed",
            "4",
            "--drift",
            "10",
            "--seeing",
            "poor",
        ]
    )
    assert rc == 0
    assert "3 80x64 16-bit" in capsys.readouterr().out
    record = json.loads((out / "truth.json").read_text())
    assert (record["width"], record["height"], record["bits"], record["seed"]) == (80, 64, 16, 4)
    assert record["params"]["drift_px"] == 10.0 and record["seeing"] == "poor"
    with open_source(out / "video.ser") as src:
        assert len(src) == 3 and src.info.dtype == np.uint16
    # through the top-level dispatcher too
    assert (
        live_stack_main(
            [
                "simulate",
                "moon",
                "-n",
                "1",
                "-o",
                str(tmp_path / "m"),
                "--size",
                "64x48",
                "--colour",
            ]
        )
        == 0
    )
    assert read_image(tmp_path / "m" / "truth.tif")[0].shape == (48, 64, 3)


@pytest.mark.parametrize(
    "argv",
    [
        ["mars", "--frames", "3", "-o", "OUT"],
        ["moon", "--frames", "0", "-o", "OUT"],
        ["moon", "--frames", "x", "-o", "OUT"],
        ["moon", "--frames", "3"],
        ["moon", "--frames", "3", "-o", "OUT", "--size", "640"],
        ["moon", "--frames", "3", "-o", "OUT", "--size", "8x8"],
        ["moon", "--frames", "3", "-o", "OUT", "--bits", "12"],
        ["moon", "--frames", "3", "-o", "OUT", "--drift", "-3"],
        ["moon", "--frames", "3", "-o", "OUT", "--drift", "nan"],
        ["moon", "--frames", "3", "-o", "OUT", "--seeing", "awful"],
        ["moon", "--frames", "3", "-o", "OUT", "--seed", "-1"],
        ["moon", "--frames", "3", "-o", "OUT", "--bogus"],
    ],
)
def test_cli_rejects_bad_arguments(tmp_path, capsys, argv: list[str]) -> None:
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("live-stack simulate: error: ")
    assert err.count("\n") == 1, "one line"
    assert not (tmp_path / "out").exists()


def test_cli_help(capsys) -> None:
    assert main(["--help"]) == 0
    assert "--frames" in capsys.readouterr().out
