"""Batch ``reprocess``: several inputs (files, folders, globs) in turn with one summary; an
input that fails is reported on one line and the others are still written; exit 1."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from live_stack.io.images import read_image
from live_stack.reprocess_cli import main

FRAMES = 40


@pytest.fixture(scope="module")
def inputs(sim_capture, tmp_path_factory):
    """Two SER captures, a folder of PNG frames and a corrupt SER, in one folder."""
    cap = sim_capture("moon")
    d = tmp_path_factory.mktemp("batch")
    for name in ("night1", "night2"):
        shutil.copy(cap.info.video, d / f"{name}.ser")
    frames = d / "frames"
    frames.mkdir()
    for i, f in enumerate(cap.frames[:FRAMES]):
        cv2.imwrite(str(frames / f"f{i:04d}.png"), f)
    (d / "broken.ser").write_bytes(b"LUCAM-RECORDER" + bytes(100))
    return d


def _summaries(out: str) -> list[str]:
    return [line for line in out.splitlines() if "inputs stacked" in line]


def test_files_folders_and_globs_with_failures(inputs, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    argv = [str(inputs / "night*.ser"), str(inputs / "frames"), str(inputs / "broken.ser"),
            str(inputs / "*.nomatch"), "-o", str(out), "--stack", "25%", "-q"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    written = sorted(p.name for p in out.iterdir())
    assert written == ["frames_ls25pct.tif", "night1_ls25pct.tif", "night2_ls25pct.tif"]
    # one line per failure, naming it; one summary at the end
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2
    assert any("broken.ser" in e for e in errors) and any("*.nomatch" in e for e in errors)
    assert all(e.startswith("live-stack reprocess: error:") for e in errors)
    assert _summaries(captured.out) == ["3 of 5 inputs stacked, 2 failed"]
    assert captured.out.strip().splitlines()[-1] == "3 of 5 inputs stacked, 2 failed"
    # each good input has its own summary and a valid image
    for name in ("night1.ser", "night2.ser", "frames"):
        assert sum(line.startswith(str(inputs / name) + ":")
                   for line in captured.out.splitlines()) == 1
    image, meta = read_image(out / "frames_ls25pct.tif")
    assert meta["input"] == "frames" and meta["input_frames"] == FRAMES
    assert image.ndim == 2 and np.isfinite(image).all()


def test_all_good_batch_exits_zero_with_the_same_options_for_each(inputs, tmp_path,
                                                                 capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    argv = [str(inputs / "night1.ser"), str(inputs / "night2.ser"), "-o", str(out),
            "--stack", "10%", "25%", "--drizzle-scale", "1.5", "--format", "png", "-q"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert _summaries(captured.out) == ["2 of 2 inputs stacked"]
    names = sorted(p.name for p in out.iterdir())
    assert names == ["night1_ls10pct.png", "night1_ls25pct.png", "night2_ls10pct.png",
                     "night2_ls25pct.png"]
    for name in names:
        image, meta = read_image(out / name)
        assert meta["parameters"]["drizzle"]["scale"] == 1.5
        y0, x0, y1, x1 = meta["crop_box"]
        assert image.shape[0] == pytest.approx(1.5 * (y1 - y0), abs=1)


def test_every_input_failing(inputs, tmp_path, capsys) -> None:
    argv = [str(inputs / "broken.ser"), str(tmp_path / "absent.ser"), "-q"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 2
    assert _summaries(captured.out) == ["0 of 2 inputs stacked, 2 failed"]


def test_a_single_input_has_no_batch_summary(inputs, tmp_path, capsys) -> None:
    assert main([str(inputs / "broken.ser"), "-q"]) == 1
    captured = capsys.readouterr()
    assert _summaries(captured.out) == [] and "broken.ser" in captured.err
    assert main([str(inputs / "night1.ser"), "-o", str(tmp_path / "one.tif"), "-q"]) == 0
    assert _summaries(capsys.readouterr().out) == []


def test_bad_options_stop_before_any_input(inputs, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert main([str(inputs / "night1.ser"), str(inputs / "night2.ser"), "-o", str(out),
                 "--drizzle-scale", "2.5", "-q"]) == 2
    assert "drizzle_scale" in capsys.readouterr().err
    assert not list(out.iterdir())
