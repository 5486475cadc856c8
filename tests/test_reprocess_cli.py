"""``live-stack reprocess``: outputs, metadata, options, config files, errors, batches, and
the real capture (sharper than the mean of its frames, without seams)."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from live_stack.apgrid import APParams
from live_stack.io import open_source
from live_stack.io.images import read_image
from live_stack.pipeline import PipelineParams, run
from live_stack.reference import mean_aligned
from live_stack.reprocess_cli import main
from live_stack.simulate.score import gradient_energy, score

#: Metadata every output file carries.
META_KEYS = {"software", "input", "input_frames", "parameters", "summary", "stack_size",
             "frames_per_ap", "crop_box"}
#: Seconds a subprocess may take (process start-up and a 120-frame capture).
SUBPROCESS_TIMEOUT = 120


@pytest.fixture(scope="module")
def capture(sim_capture):
    return sim_capture("moon")


@pytest.fixture
def video(capture, tmp_path) -> Path:
    """A private copy of the moon capture's SER (outputs land beside it)."""
    dst = tmp_path / "in" / "moon.ser"
    dst.parent.mkdir()
    shutil.copy(capture.info.video, dst)
    return dst


def _one_line_error(capsys, *names: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("live-stack reprocess: error:")
    for name in names:
        assert name in err, (name, err)
    return err


@pytest.mark.parametrize("suffix", [".tif", ".png", ".fits"])
def test_output_writes_exactly_path_with_metadata(capture, video, tmp_path, capsys,
                                                  suffix) -> None:
    out = tmp_path / "result" / f"stack{suffix}"
    out.parent.mkdir()
    assert main([str(video), "-o", str(out), "-q"]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
    image, meta = read_image(out)
    assert META_KEYS <= set(meta)
    assert meta["input"] == "moon.ser" and meta["input_frames"] == len(capture.frames)
    assert meta["stack_size"] == "10%" and meta["frames_per_ap"] == 12
    assert meta["parameters"]["ap"]["size"] == APParams().size
    assert meta["parameters"]["quality"]["method"] == "laplacian"
    assert meta["summary"]["frames"] == len(capture.frames)
    y0, x0, y1, x1 = meta["crop_box"]
    assert image.shape == (y1 - y0, x1 - x0)
    # the written stack is the pipeline's (16-bit quantisation aside)
    assert score(image, capture.truth).psnr > score(capture.frames[0], capture.truth).psnr + 1
    summary = capsys.readouterr().out
    assert "APs" in summary and str(out) in summary


def test_default_output_beside_the_input(video, capsys) -> None:
    assert main([str(video), "-q"]) == 0
    assert (video.parent / "moon_ls10pct.tif").is_file()
    assert sorted(p.name for p in video.parent.iterdir()) == ["moon.ser", "moon_ls10pct.tif"]


def test_several_stack_sizes_named_by_size(video, tmp_path, capsys) -> None:
    out = tmp_path / "s.png"
    assert main([str(video), "-o", str(out), "--stack", "5%", "10%", "25%", "-q"]) == 0
    names = {"s_5pct.png": "5%", "s_10pct.png": "10%", "s_25pct.png": "25%"}
    assert sorted(p.name for p in tmp_path.glob("s*.png")) == sorted(names)
    per_ap = []
    for name, size in names.items():
        _, meta = read_image(tmp_path / name)
        assert meta["stack_size"] == size
        assert meta["summary"]["stacks"] == {"5%": 6, "10%": 12, "25%": 30}
        per_ap.append(meta["frames_per_ap"])
    assert per_ap == [6, 12, 30]


def test_count_stack_size_and_folder_output(video, tmp_path, capsys) -> None:
    folder = tmp_path / "outdir"
    folder.mkdir()
    assert main([str(video), "-o", str(folder), "--stack", "20", "--format", "fits",
                 "-q"]) == 0
    _, meta = read_image(folder / "moon_ls20.fits")
    assert meta["frames_per_ap"] == 20


def test_config_sets_params_and_the_command_line_wins(video, tmp_path, capsys) -> None:
    config = tmp_path / "params.toml"
    config.write_text('stack = ["15%"]\nthreads = 1\n[ap]\nsize = 32\nsearch = 6\n'
                      '[quality]\nmethod = "gradient"\n')
    out = tmp_path / "c.tif"
    assert main([str(video), "-o", str(out), "--config", str(config), "-q"]) == 0
    _, meta = read_image(out)
    assert meta["parameters"]["ap"]["size"] == 32 and meta["parameters"]["ap"]["search"] == 6
    assert meta["parameters"]["quality"]["method"] == "gradient"
    assert meta["stack_size"] == "15%"
    assert main([str(video), "-o", str(out), "--config", str(config), "--ap-size", "40",
                 "--stack", "10%", "--mode", "planet", "--overwrite", "-q"]) == 0
    _, meta = read_image(out)
    assert meta["parameters"]["ap"]["size"] == 40  # the option wins
    assert meta["parameters"]["ap"]["search"] == 6  # the rest still from the file
    assert meta["parameters"]["align"]["mode"] == "planet"
    assert meta["stack_size"] == "10%"


@pytest.mark.parametrize(("argv", "names"), [
    (["{missing}"], ["nothere.ser", "no such file"]),
    (["{video}", "-o", "{tmp}/out.jpg"], ["out.jpg", ".jpg"]),
    (["{unknown}"], ["notes.txt", ".txt"]),
    (["{video}", "--stack", "10x"], ["10x"]),
    (["{video}", "--stack", "0%"], ["0%"]),
    (["{video}", "--config", "{badkey}"], ["bad.toml", "ap_sise"]),
    (["{video}", "--config", "{badtoml}"], ["broken.toml", "TOML"]),
    (["{video}", "--config", "{tmp}/absent.toml"], ["absent.toml"]),
    (["{video}", "--ap-size", "33"], ["ap_size", "33"]),
    (["{tmp}/*.nomatch"], ["*.nomatch"]),
])
def test_bad_input_exits_non_zero_with_one_line(video, tmp_path, capsys, argv, names) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "bad.toml").write_text("ap_sise = 3\n")
    (tmp_path / "broken.toml").write_text("[ap\nsize = \n")
    subs = {"missing": str(tmp_path / "nothere.ser"),
            "unknown": str(tmp_path / "notes.txt"), "video": str(video), "tmp": str(tmp_path),
            "badkey": str(tmp_path / "bad.toml"), "badtoml": str(tmp_path / "broken.toml")}
    code = main([a.format(**subs) for a in argv] + ["-q"])
    assert code != 0
    _one_line_error(capsys, *names)
    assert not list(tmp_path.glob("*.tif")) and not list(video.parent.glob("*.tif"))


def test_bad_option_value_is_a_usage_error(video, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([str(video), "--ap-size", "abc"])
    assert exc.value.code == 2
    assert "--ap-size" in capsys.readouterr().err


def test_batch_with_one_failure(capture, tmp_path, capsys) -> None:
    inputs = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        shutil.copy(capture.info.video, d / f"{name}.ser")
        inputs.append(str(d / f"{name}.ser"))
    bad = tmp_path / "c" / "c.ser"
    bad.parent.mkdir()
    bad.write_bytes(b"not a ser file at all" * 20)
    code = main([inputs[0], str(bad), inputs[1], "-q"])
    assert code == 1
    assert (tmp_path / "a" / "a_ls10pct.tif").is_file()
    assert (tmp_path / "b" / "b_ls10pct.tif").is_file()
    assert not list(bad.parent.glob("*.tif"))
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1 and "c.ser" in captured.err
    assert "inputs stacked, 1 failed" in captured.out


def test_batch_summary_counts_the_inputs(capture, tmp_path, capsys) -> None:
    shutil.copy(capture.info.video, tmp_path / "a.ser")
    (tmp_path / "c.ser").write_bytes(b"not a ser file at all" * 20)
    shutil.copy(capture.info.video, tmp_path / "b.ser")
    assert main([str(tmp_path / n) for n in ("a.ser", "c.ser", "b.ser")] + ["-q"]) == 1
    assert "2 of 3 inputs stacked, 1 failed" in capsys.readouterr().out


def test_batch_into_a_folder(capture, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for name in ("a", "b"):
        shutil.copy(capture.info.video, tmp_path / f"{name}.ser")
    assert main([str(tmp_path / "*.ser"), "-o", str(out), "--format", "png", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_ls10pct.png", "b_ls10pct.png"]
    # with several inputs, -o must be a folder
    assert main([str(tmp_path / "a.ser"), str(tmp_path / "b.ser"), "-o",
                 str(tmp_path / "x.tif"), "-q"]) == 1
    assert "existing folder" in capsys.readouterr().err


def test_subprocess_live_stack_reprocess(video, tmp_path, live_stack_command) -> None:
    out = tmp_path / "sub.tif"
    proc = subprocess.run([live_stack_command, "reprocess", str(video), "-o", str(out)],
                          capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    assert "moon.ser: 120 frames" in proc.stdout and "time:" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "live_stack.cli", "reprocess",
                          str(tmp_path / "missing.ser")], capture_output=True, text=True,
                         timeout=SUBPROCESS_TIMEOUT, check=False)
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0 and "missing.ser" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_16_bit_capture(sim_capture, tmp_path, capsys) -> None:
    cap = sim_capture("moon", frames=40, bits=16)
    out = tmp_path / "16.tif"
    assert main([cap.info.video, "-o", str(out), "-q"]) == 0
    image, meta = read_image(out)
    with open_source(cap.info.video) as src:
        assert src.info.bit_depth == 16  # the simulator scales its 12-bit ADC to 16 bits
    assert meta["output_gain"] == 1.0
    assert score(image, cap.truth).psnr > score(cap.frames[0], cap.truth).psnr + 0.5


# ---------------------------------------------------------------- the real capture
#: Largest change of the AP weight map per pixel (a smooth bump: pi / size; a seam would
#: be a jump of about 1).
WEIGHT_SLOPE_FACTOR = 1.1
#: Bounds of the seam ratio (second differences across AP box edges over elsewhere).
SEAM_RATIO = (0.85, 1.15)


def seam_ratio(image: np.ndarray, edges: np.ndarray, axis: int) -> float:
    """Mean |second difference| across the lines ``edges`` (box edges along ``axis``)
    over its mean elsewhere: about 1 without seams, above 1 with a step at the edges."""
    img = image.astype(np.float64)
    d2 = np.abs(np.diff(img, n=2, axis=axis)).mean(axis=1 - axis)  # d2[j] centred at j+1
    on = np.zeros(len(d2), bool)
    for e in edges:  # a step between pixels e-1 and e shows at centres e-1 and e
        for centre in (e - 1, e):
            if 1 <= centre <= len(d2):
                on[centre - 1] = True
    return float(d2[on].mean() / d2[~on].mean())


def test_seam_ratio_detects_a_seam() -> None:
    """The seam measure's own check: a 0.5 % step along box edges is caught."""
    rng = np.random.default_rng(0)
    import cv2

    img = cv2.GaussianBlur(rng.random((240, 320)).astype(np.float32), (0, 0), 2.0)
    edges = np.arange(20, 300, 36)
    assert SEAM_RATIO[0] < seam_ratio(img, edges, 1) < SEAM_RATIO[1]
    stepped = img.copy()
    for k, e in enumerate(edges):
        stepped[:, e:] += 0.005 * (-1) ** k
    assert seam_ratio(stepped, edges, 1) > SEAM_RATIO[1]


@pytest.fixture(scope="module")
def real_result(real_capture):
    with open_source(real_capture) as src:
        result = run(src, PipelineParams())
        ok = np.flatnonzero(result.alignment.ok)
        mean_all = mean_aligned((src[int(i)] for i in ok), result.alignment.shifts[ok])
    return result, mean_all


@pytest.mark.realdata
def test_real_capture_sharper_than_the_mean(real_capture, real_result, tmp_path,
                                            capsys) -> None:
    result, mean_all = real_result
    out = tmp_path / "moon.tif"
    assert main([str(real_capture), "-o", str(out), "-q"]) == 0
    image, meta = read_image(out)
    y0, x0, y1, x1 = meta["crop_box"]
    assert tuple(meta["crop_box"]) == result.stacks[0].box
    assert meta["input_frames"] == 101
    mean_crop = mean_all[y0:y1, x0:x1]
    sharp, blurred = gradient_energy(image), gradient_energy(mean_crop)
    assert sharp > 1.1 * blurred, (sharp, blurred)
    # what reprocess wrote is the pipeline's stack, up to 16-bit rounding and the order
    # in which the worker threads summed the float32 spectra
    diff = np.abs(image - result.stacks[0].image)
    assert diff.max() < 1e-3 and diff.mean() < 2 / 65535


@pytest.mark.realdata
def test_real_capture_has_no_seams(real_capture, real_result) -> None:
    result, _ = real_result
    stack = result.stacks[0]
    size = result.grid.size
    w = stack.ap_weight.astype(np.float64)
    assert w.max() > 0.5  # the APs cover the field
    step = max(np.abs(np.diff(w, axis=0)).max(), np.abs(np.diff(w, axis=1)).max())
    ramp = size - result.grid.step  # the weights ramp over the boxes' overlap
    assert step < WEIGHT_SLOPE_FACTOR * math.pi / (2 * ramp)
    y0, x0, _, _ = stack.box
    centres = result.grid.centres - np.array([y0, x0])
    half = size // 2
    cols = np.unique(np.concatenate([centres[:, 1] - half, centres[:, 1] + half]))
    rows = np.unique(np.concatenate([centres[:, 0] - half, centres[:, 0] + half]))
    lum = stack.image if stack.image.ndim == 2 else stack.image.mean(axis=2)
    # The capture is DivX: its frames carry the codec's 16-px block edges, and with the
    # default grid the box edges fall next to them. So the stack is compared with its
    # own input at the same lines: blending must add no roughness there.
    y0, x0, y1, x1 = stack.box
    with open_source(real_capture) as src:
        frame = src[result.alignment.target_index].astype(np.float32)[y0:y1, x0:x1]
    for edges, axis in ((cols, 1), (rows, 0)):
        ratio = seam_ratio(lum, edges, axis)
        own = seam_ratio(frame, edges, axis)
        assert ratio < own * SEAM_RATIO[1], (axis, ratio, own)
        # box edges moved off the codec's block edges: no extra roughness there either
        # (a ratio below 1 just says the codec's lines are rougher than these)
        off_grid = seam_ratio(lum, edges + 5, axis)
        assert off_grid < SEAM_RATIO[1], (axis, off_grid)
