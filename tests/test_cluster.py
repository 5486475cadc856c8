"""Batches on Dask: ``reprocess`` over many recordings on a real ``distributed`` cluster.

Six small simulated recordings (and a corrupt one) go through a 2-worker local cluster
started by ``reprocess --workers 2``; the images must be the same, bit for bit, as
stacking each recording alone in this process; the corrupt recording is reported and the
others written; the report and the contact sheet describe the night; a second run skips
what is done; a worker process killed mid-batch loses no output; an existing cluster is
used through ``--scheduler``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import psutil
import pytest

from live_stack.io.images import read_image
from live_stack.night_report import REPORT_COLUMNS, SheetParams
from live_stack.reprocess_cli import main
from live_stack.simulate import simulate_capture

#: The recordings: name -> (scene, seeing, colour, seed). Three seeings of one target, so
#: the report's seeing estimate can be checked against the simulator's.
RECORDINGS = {
    "moon_good": ("moon", "good", False, 1),
    "moon_normal": ("moon", "normal", False, 1),
    "moon_poor": ("moon", "poor", False, 1),
    "planet": ("planet", "normal", False, 1),
    "sun": ("sun", "normal", False, 1),
    "moon_colour": ("moon", "normal", True, 2),
}
FRAMES = 40
WIDTH, HEIGHT = 320, 240
#: Frames of each recording of the killed-worker test: long enough (about a second per
#: recording on one thread) that the worker is killed in the middle of a recording.
LONG_FRAMES = 400
#: Seconds a batch subprocess may take (start-up, a local cluster, a dozen recordings).
BATCH_TIMEOUT = 240


def _simulate(folder: Path, name: str, scene: str, seeing: str, colour: bool, seed: int,
              frames: int = FRAMES) -> Path:
    info = simulate_capture(scene, frames=frames, out_dir=folder / f"sim-{name}", seed=seed,
                            width=WIDTH, height=HEIGHT, seeing=seeing, colour=colour)
    path = folder / f"{name}.ser"
    os.replace(info.video, path)
    return path


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> dict[str, Path]:
    """The six recordings and a corrupt one, in one folder."""
    folder = tmp_path_factory.mktemp("night")
    paths = {name: _simulate(folder, name, *spec) for name, spec in RECORDINGS.items()}
    paths["corrupt"] = folder / "corrupt.ser"
    paths["corrupt"].write_bytes(b"LUCAM-RECORDER" + bytes(300))
    return paths


def _run(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _pixels(path: Path) -> np.ndarray:
    image, _ = read_image(path)
    return image


@pytest.fixture(scope="module")
def one_by_one(night, tmp_path_factory, live_stack_command) -> dict[str, np.ndarray]:
    """Each good recording stacked one after another in one process of its own, a fresh
    one as the workers are (in this test process, after other tests' stacks, one pixel in
    70,000 has been seen to differ by one 16-bit step, cluster or not): name -> image."""
    folder = tmp_path_factory.mktemp("alone")
    run = subprocess.run([live_stack_command, "reprocess", *(str(night[n]) for n in RECORDINGS),
                          "-o", str(folder), "--workers", "1", "-q"],
                         capture_output=True, text=True, timeout=BATCH_TIMEOUT, check=False)
    assert run.returncode == 0, run.stderr
    assert "cluster" not in run.stdout
    return {name: _pixels(folder / f"{name}_ls10pct.tif") for name in RECORDINGS}


@pytest.fixture(scope="module")
def batch(night, tmp_path_factory) -> dict:
    """The whole night, corrupt recording included, through a 2-worker local cluster."""
    folder = tmp_path_factory.mktemp("batch")
    out = folder / "stacks"
    out.mkdir()
    argv = [str(p) for p in night.values()] + [
        "-o", str(out), "--workers", "2", "--report", str(folder / "night.csv"),
        "--contact-sheet", str(folder / "night.png"), "-q"]
    code, stdout, stderr = _run(argv)
    return {"code": code, "out": stdout, "err": stderr, "stacks": out, "folder": folder,
            "argv": argv}


def test_the_cluster_gives_the_images_of_one_by_one_runs_bit_for_bit(batch, one_by_one):
    assert "local cluster: 2 worker processes, 1 thread per recording" in batch["out"]
    assert "dashboard http://127.0.0.1:" in batch["out"]
    names = sorted(p.name for p in batch["stacks"].iterdir())
    assert names == sorted(f"{name}_ls10pct.tif" for name in RECORDINGS)
    for name, alone in one_by_one.items():
        clustered = _pixels(batch["stacks"] / f"{name}_ls10pct.tif")
        assert clustered.shape == alone.shape, name
        assert np.array_equal(clustered, alone), (name, (clustered != alone).sum())


def test_a_corrupt_recording_is_reported_and_the_others_written(batch, night):
    assert batch["code"] == 1
    errors = batch["err"].strip().splitlines()
    assert len(errors) == 1 and str(night["corrupt"]) in errors[0], errors
    assert errors[0].startswith("live-stack reprocess: error:")
    assert batch["out"].strip().splitlines()[-1] == "6 of 7 inputs stacked, 1 failed"


def test_the_report_has_one_row_per_recording(batch, night):
    with open(batch["folder"] / "night.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == REPORT_COLUMNS
        rows = {Path(r["input"]).stem: r for r in reader}
    assert sorted(rows) == sorted(night)
    bad = rows["corrupt"]
    assert bad["status"] == "failed" and "corrupt.ser" in bad["error"]
    assert bad["outputs"] == "" and bad["frames"] == ""
    for name, (scene, *_) in RECORDINGS.items():
        row = rows[name]
        assert row["status"] == "stacked" and row["error"] == ""
        assert row["mode"] == ("planet" if scene == "planet" else "surface"), row
        assert (int(row["frames"]), int(row["width"]), int(row["height"])) == \
            (FRAMES, WIDTH, HEIGHT)
        # the simulator's timestamps run at 100 frames/s
        assert float(row["duration_s"]) == pytest.approx((FRAMES - 1) / 100, abs=0.02)
        assert row["frames_stacked"] == str(FRAMES // 10)
        assert int(row["aps"]) > 0 and float(row["seconds"]) > 0
        assert Path(row["outputs"]) == batch["stacks"] / f"{name}_ls10pct.tif"
        assert 0 < float(row["seeing"]) <= 1
    seeing = [float(rows[f"moon_{s}"]["seeing"]) for s in ("good", "normal", "poor")]
    assert seeing[0] > seeing[1] > seeing[2], seeing


def test_the_contact_sheet_has_one_distinct_tile_per_stack(batch):
    sheet = cv2.imread(str(batch["folder"] / "night.png"), cv2.IMREAD_UNCHANGED)
    p = SheetParams()
    cols, rows = p.columns, -(-len(RECORDINGS) // p.columns)
    assert sheet.dtype == np.uint8 and sheet.shape == (
        p.gap + rows * (p.tile + p.caption + p.gap), p.gap + cols * (p.tile + p.gap), 3)
    tiles = []
    for k in range(len(RECORDINGS)):
        y0 = p.gap + (k // cols) * (p.tile + p.caption + p.gap)
        x0 = p.gap + (k % cols) * (p.tile + p.gap)
        tile = sheet[y0:y0 + p.tile, x0:x0 + p.tile].astype(np.int16)
        caption = sheet[y0 + p.tile:y0 + p.tile + p.caption, x0:x0 + p.tile]
        assert tile.std() > 10, k  # a stack, not an empty tile
        assert (caption > 128).sum() > 100, k  # its caption is written
        tiles.append(tile)
    for i in range(len(tiles)):
        for j in range(i):
            assert np.abs(tiles[i] - tiles[j]).mean() > 5, (i, j)
    # the colour recording's tile is in colour, the others grey
    coloured = [int(np.abs(t[..., 0] - t[..., 2]).mean() > 1) for t in tiles]
    assert sum(coloured) == 1
    # the grid after the last tile is empty
    k = len(RECORDINGS)
    y0 = p.gap + (k // cols) * (p.tile + p.caption + p.gap)
    x0 = p.gap + (k % cols) * (p.tile + p.gap)
    assert sheet[y0:y0 + p.tile, x0:x0 + p.tile].std() == 0


def test_a_second_run_does_only_what_is_missing(batch, night):
    stacks = batch["stacks"]
    before = {p.name: p.stat().st_mtime_ns for p in stacks.iterdir()}
    (stacks / "sun_ls10pct.tif").unlink()
    report = batch["folder"] / "again.json"
    argv = [str(p) for name, p in night.items() if name != "corrupt"] + [
        "-o", str(stacks), "--workers", "2", "--report", str(report), "-q"]
    code, out, err = _run(argv)
    assert code == 0, err
    assert out.strip().splitlines()[-1] == "1 of 6 inputs stacked, 5 up to date"
    after = {p.name: p.stat().st_mtime_ns for p in stacks.iterdir()}
    assert sorted(after) == sorted(before)
    changed = [name for name in after if after[name] != before.get(name)]
    assert changed == ["sun_ls10pct.tif"]
    rows = {Path(r["input"]).stem: r for r in json.loads(report.read_text())}
    assert rows["sun"]["status"] == "stacked"
    for name in RECORDINGS:
        if name != "sun":  # skipped rows still describe the recording, from the file
            assert rows[name]["status"] == "skipped" and rows[name]["frames"] == FRAMES
            assert rows[name]["seconds"] == 0 and rows[name]["seeing"] > 0


class _Lines:
    """The stdout lines of a running process, read by a thread, each awaited with a
    timeout."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, text: str, timeout: float) -> str:
        while True:
            line = self._queue.get(timeout=timeout)
            if line is None:
                raise AssertionError(f"the process ended without {text!r}: {self.seen}")
            self.seen.append(line)
            if text in line:
                return line

    def rest(self, timeout: float) -> list[str]:
        while (line := self._queue.get(timeout=timeout)) is not None:
            self.seen.append(line)
        return self.seen


@contextlib.contextmanager
def _running(cmd: list[str]) -> Iterator[tuple[subprocess.Popen, _Lines]]:
    """``cmd`` running with its stdout lines followed; killed if the test fails."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1")) as proc:
        try:
            yield proc, _Lines(proc)
        except BaseException:
            proc.kill()
            raise


def _finish(proc: subprocess.Popen, lines: _Lines) -> tuple[int, list[str], str]:
    """Wait for the process to end: its exit code, stdout lines and stderr."""
    code = proc.wait(BATCH_TIMEOUT)
    return code, lines.rest(BATCH_TIMEOUT), proc.stderr.read()


def _worker_processes(pid: int) -> list[psutil.Process]:
    """The Dask worker processes a ``live-stack`` process started (multiprocessing's
    spawned children)."""
    return [c for c in psutil.Process(pid).children(recursive=True)
            if any("spawn_main" in part for part in c.cmdline())]


def test_a_worker_killed_mid_batch_loses_no_output(tmp_path, live_stack_command):
    first = _simulate(tmp_path, "r0", "moon", "normal", False, 1, frames=LONG_FRAMES)
    inputs = [first] + [tmp_path / f"r{i}.ser" for i in range(1, 6)]
    for path in inputs[1:]:
        shutil.copyfile(first, path)
    out = tmp_path / "stacks"
    out.mkdir()
    cmd = [live_stack_command, "reprocess", *map(str, inputs), "-o", str(out),
           "--workers", "2"]
    with _running(cmd) as (proc, lines):
        lines.wait_for("local cluster: 2 worker processes", BATCH_TIMEOUT)
        # once the first recording is done both workers are stacking one (four are left)
        lines.wait_for(" -> ", BATCH_TIMEOUT)
        workers = _worker_processes(proc.pid)
        assert len(workers) == 2, workers
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(BATCH_TIMEOUT)
        code, stdout, stderr = _finish(proc, lines)
    assert code == 0, (stdout, stderr)
    assert stdout[-1].strip() == "6 of 6 inputs stacked", stdout
    # the worker was killed in the middle of a recording, which was started again (and
    # so was the next one if the scheduler had sent it there before it saw the death)
    assert re.fullmatch(r"(1 recording was|2 recordings were) started again after the "
                        r"worker process it was sent to died", stdout[-2].strip()), stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.stem}_ls10pct.tif"
                                                          for p in inputs)
    for p in inputs:
        _, meta = read_image(out / f"{p.stem}_ls10pct.tif")
        assert meta["input_frames"] == LONG_FRAMES
    # nothing left to do: a second run skips all six without starting a cluster
    code, text, err = _run([*map(str, inputs), "-o", str(out), "-q"])
    assert code == 0 and "local cluster" not in text, err
    assert text.strip().splitlines()[-1] == "0 of 6 inputs stacked, 6 up to date"


def test_an_existing_cluster_through_its_scheduler(night, one_by_one, tmp_path):
    from distributed import LocalCluster

    out = tmp_path / "stacks"
    out.mkdir()
    names = ["planet", "moon_colour"]
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster:
        code, text, err = _run([*(str(night[n]) for n in names), "-o", str(out),
                                "--scheduler", cluster.scheduler_address, "-q"])
    assert code == 0, err
    cores = len(os.sched_getaffinity(0))  # one task at a time: it has every core
    assert (f"cluster at {cluster.scheduler_address}: 1 worker, {cores} threads per "
            "recording") in text
    for name in names:
        assert np.array_equal(_pixels(out / f"{name}_ls10pct.tif"), one_by_one[name])


def test_cluster_options_are_checked_before_any_work(night, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    two = [str(night["planet"]), str(night["sun"])]
    assert main([*two, "-o", str(out), "--workers", "2", "--scheduler",
                 "tcp://127.0.0.1:1", "-q"]) == 2
    assert "give one of them" in capsys.readouterr().err
    assert main([*two, "-o", str(out), "--workers", "0", "-q"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err
    assert main([*two, "-o", str(out), "--scheduler", "localhost:1", "-q"]) == 2
    assert "tcp://HOST:8786" in capsys.readouterr().err
    assert main([*two, "-o", str(out), "--report", str(tmp_path / "r.txt"), "-q"]) == 2
    assert "r.txt" in capsys.readouterr().err
    assert main([*two, "-o", str(out), "--contact-sheet", str(tmp_path / "s.jpg"), "-q"]) == 2
    assert "s.jpg" in capsys.readouterr().err
    assert not list(out.iterdir())


def test_a_recording_whose_worker_dies_every_time_is_reported(tmp_path, live_stack_command):
    import dask
    from distributed import Client, LocalCluster

    first = _simulate(tmp_path, "a", "moon", "normal", False, 1, frames=LONG_FRAMES)
    second = tmp_path / "b.ser"
    shutil.copyfile(first, second)
    out = tmp_path / "stacks"
    out.mkdir()
    # a scheduler that gives up on a task at its first lost worker
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        cmd = [live_stack_command, "reprocess", str(first), str(second), "-o", str(out),
               "--scheduler", cluster.scheduler_address]
        with _running(cmd) as (proc, lines):
            # one worker, one thread: once the first is done the second is running
            lines.wait_for(" -> ", BATCH_TIMEOUT)
            (pid,) = client.run(os.getpid).values()
            os.kill(pid, signal.SIGKILL)
            code, stdout, stderr = _finish(proc, lines)
    assert code == 1, (stdout, stderr)
    assert stderr.strip() == (f"live-stack reprocess: error: {second}: its worker process died "
                              "while stacking it, each time it was tried (killed, or out of "
                              "memory?)"), stderr
    assert stdout[-1].strip() == "1 of 2 inputs stacked, 1 failed"
    assert sorted(p.name for p in out.iterdir()) == ["a_ls10pct.tif"]
