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


# ---------------------------------------------------------------- the batch's parts


def test_batch_progress_counts_rate_and_time_left() -> None:
    import io

    from live_stack.batch import BatchProgress

    now = [100.0]
    progress = BatchProgress(4, stream=io.StringIO(), clock=lambda: now[0])
    assert not progress.bar and progress.eta() is None
    assert progress.line() == "batch: 0 of 4 done, 0.00 files/s"
    now[0] = 102.0
    progress.update()
    now[0] = 104.0
    progress.update(failed=True)
    assert progress.rate() == pytest.approx(0.5) and progress.eta() == pytest.approx(4.0)
    assert progress.line() == "batch: 2 of 4 done (1 failed), 0.50 files/s, 4 s left"
    now[0] = 104.0 + 1000
    assert progress.line().endswith(", 16 min 44 s left")  # 2 more at 2 per 1004 s
    with pytest.raises(ValueError, match="total"):
        BatchProgress(-1)


def test_cluster_params_and_threads_per_task_check_their_arguments() -> None:
    from live_stack.batch import ClusterParams, threads_per_task

    assert threads_per_task(8, 2) == 4 and threads_per_task(2, 2) == 1
    assert threads_per_task(2, 5) == 1
    with pytest.raises(ValueError, match="cores and tasks"):
        threads_per_task(0, 1)
    assert ClusterParams(workers=3).retries == 1
    for kwargs, words in [({}, "either workers"), ({"workers": 2, "scheduler": "tcp://a:1"},
                                                    "either workers"),
                          ({"scheduler": "a:1"}, "tcp://HOST:8786"),
                          ({"workers": 2000}, "workers must be"),
                          ({"workers": 2, "threads": 99}, "threads must be"),
                          ({"workers": 2, "retries": -1}, "retries must be")]:
        with pytest.raises(ValueError, match=words):
            ClusterParams(**kwargs)


def test_seeing_index_of_quality_distributions() -> None:
    from live_stack.night_report import seeing_index

    assert seeing_index(np.full(50, 3.0)) == 1.0  # every frame as sharp as the best
    rng = np.random.default_rng(0)
    steady = seeing_index(rng.normal(10, 0.5, 500))
    unsteady = seeing_index(rng.lognormal(0, 1.0, 500))
    assert 0.9 < steady <= 1 and unsteady < 0.5
    assert np.isnan(seeing_index(np.zeros(0))) and np.isnan(seeing_index(np.zeros(10)))
    with pytest.raises(ValueError, match="one value per frame"):
        seeing_index(np.ones((3, 3)))


def test_report_and_contact_sheet_refuse_what_they_cannot_write(tmp_path) -> None:
    import json

    from live_stack.night_report import Outcome, write_contact_sheet, write_report

    failed = Outcome("x.ser", "failed", error="x.ser: broken")
    with pytest.raises(ValueError, match="error must be given"):
        Outcome("x.ser", "failed")
    with pytest.raises(ValueError, match="status must be"):
        Outcome("x.ser", "done")
    with pytest.raises(ValueError, match="report format"):
        write_report(tmp_path / "r.txt", [failed])
    write_report(tmp_path / "r.json", [failed])
    (row,) = json.loads((tmp_path / "r.json").read_text())
    assert row["status"] == "failed" and row["frames"] is None and row["outputs"] == []
    with pytest.raises(ValueError, match="no stack"):
        write_contact_sheet(tmp_path / "s.png", [failed])
    with pytest.raises(ValueError, match=".png"):
        write_contact_sheet(tmp_path / "s.jpg", [failed])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temporary left
