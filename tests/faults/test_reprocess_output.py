"""Faults of ``reprocess`` output (issue #18 item 8), as an operator meets them.

An existing file under an output's name (an image of other parameters, a non-image named
``.tif``) is never replaced without ``--overwrite``; an output that is up to date is
skipped; an output folder that cannot take a file fails before any work; Ctrl-C ends
with exit code 130 and one line, and leaves no partial file, in one process and on a
local cluster (where the terminal's Ctrl-C reaches every worker process too).
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import threading
from pathlib import Path

import psutil
import pytest

from live_stack.io.images import read_image
from live_stack.reprocess_cli import main

#: Seconds a reprocess subprocess may take.
TIMEOUT = 120
#: Seconds the processes a run started may take to be gone once it has ended.
EXIT_TIMEOUT = 10
#: Frames of the recordings interrupted by Ctrl-C: a few tenths of a second each.
FRAMES = 300


@pytest.fixture
def video(sim_capture, tmp_path) -> Path:
    """This test's own copy of the simulated Moon capture."""
    return Path(shutil.copy(sim_capture("moon").info.video, tmp_path / "moon.ser"))


def _one_error(capsys, *names: str) -> tuple[str, str]:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("live-stack reprocess: error:")
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0], captured.out


def test_a_non_image_under_the_output_name_is_never_replaced(video, tmp_path, capsys):
    out = tmp_path / "notes.tif"
    out.write_bytes(b"my observing notes, not an image")
    assert main([str(video), "-o", str(out), "-q"]) == 1
    _, stdout = _one_error(capsys, "notes.tif", "not an image", "--overwrite")
    assert "frames" not in stdout  # refused before any work
    assert out.read_bytes() == b"my observing notes, not an image"
    assert main([str(video), "-o", str(out), "--overwrite", "-q"]) == 0
    image, meta = read_image(out)
    assert meta["input"] == "moon.ser" and image.ndim == 2


def test_up_to_date_outputs_are_skipped_and_others_refused(video, tmp_path, capsys):
    out = tmp_path / "moon.tif"
    assert main([str(video), "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    written = out.stat().st_mtime_ns
    # same input, same parameters: nothing to do
    assert main([str(video), "-o", str(out), "-q"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert out.stat().st_mtime_ns == written
    # other parameters: the existing image is not replaced
    assert main([str(video), "-o", str(out), "--ap-size", "48", "-q"]) == 1
    _one_error(capsys, "moon.tif", "other parameters", "--overwrite")
    # the input changed since: not replaced either
    os.utime(video, ns=(written, written))
    assert main([str(video), "-o", str(out), "-q"]) == 1
    _one_error(capsys, "moon.tif", "earlier version of the input")
    # another input: not replaced
    other = tmp_path / "other.ser"
    shutil.copy(video, other)
    assert main([str(other), "-o", str(out), "-q"]) == 1
    _one_error(capsys, "moon.tif", "another input (moon.ser)")
    assert out.stat().st_mtime_ns == written
    assert main([str(video), "-o", str(out), "--ap-size", "48", "--overwrite", "-q"]) == 0
    assert read_image(out)[1]["parameters"]["ap"]["size"] == 48


@pytest.mark.parametrize("suffix", [".tif", ".png"])
def test_a_cut_off_output_is_not_taken_as_up_to_date(video, tmp_path, capsys, suffix):
    from live_stack.reprocess_cli import stored_metadata

    out = tmp_path / f"moon{suffix}"
    assert main([str(video), "-o", str(out), "-q"]) == 0
    capsys.readouterr()
    assert stored_metadata(out) == read_image(out)[1]  # the TIFF's without its pixels
    data = out.read_bytes()
    out.write_bytes(data[: len(data) // 2])  # copied by hand onto a full disk, say
    assert main([str(video), "-o", str(out), "-q"]) == 1
    _one_error(capsys, out.name, "not an image live-stack wrote", "--overwrite")
    assert out.stat().st_size == len(data) // 2


def test_two_inputs_with_one_output_name(video, tmp_path, capsys):
    for night in ("a", "b"):
        (tmp_path / night).mkdir()
        shutil.copy(video, tmp_path / night / "jupiter.ser")
    out = tmp_path / "out"
    out.mkdir()
    assert main([str(tmp_path / "a" / "jupiter.ser"), str(tmp_path / "b" / "jupiter.ser"),
                 "-o", str(out), "--workers", "1", "-q"]) == 1
    _one_error(capsys, str(tmp_path / "b" / "jupiter.ser"), "also the output of",
               str(tmp_path / "a" / "jupiter.ser"))
    _, meta = read_image(out / "jupiter_ls10pct.tif")
    assert meta["job"]["input"] == str(tmp_path / "a" / "jupiter.ser")


@pytest.fixture
def read_only_folder(tmp_path) -> Path:
    """An empty folder no file can be created in: a read-only tmpfs mounted there when
    running as root (root ignores permissions), else a folder without write permission."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs",
                              str(folder)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"running as root, and a read-only tmpfs cannot be mounted here "
                    f"({mounted.stderr.strip()}): root could write to any folder")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_an_output_folder_that_cannot_be_written_fails_before_any_work(
        video, read_only_folder, tmp_path, capsys):
    for target in (read_only_folder, read_only_folder / "moon.png"):
        assert main([str(video), "-o", str(target), "-q"]) == 1
        _, stdout = _one_error(capsys, str(read_only_folder), "cannot write")
        assert stdout == ""  # nothing was stacked
    assert main([str(video), "-o", str(tmp_path / "absent" / "moon.tif"), "-q"]) == 1
    _, stdout = _one_error(capsys, "absent", "does not exist")
    assert stdout == ""
    # the report too is checked first
    assert main([str(video), "-o", str(tmp_path / "moon.tif"), "--report",
                 str(read_only_folder / "night.csv"), "-q"]) == 1
    _one_error(capsys, str(read_only_folder), "cannot write")
    assert not (tmp_path / "moon.tif").exists()


@pytest.fixture(scope="module")
def long_recordings(sim_capture, tmp_path_factory) -> list[Path]:
    """Four copies of a longer recording (each a few tenths of a second to stack)."""
    cap = sim_capture("moon", frames=FRAMES)
    folder = tmp_path_factory.mktemp("long")
    paths = [folder / f"rec{i}.ser" for i in range(4)]
    for p in paths:
        shutil.copyfile(cap.info.video, p)
    return paths


def _interrupt_after_first_output(
        cmd: list[str]) -> tuple[int, list[str], str, list[psutil.Process]]:
    """Run ``cmd`` in a session of its own, press Ctrl-C (SIGINT to the whole process
    group, as a terminal does) once the first output is reported; return the exit code,
    stdout lines, stderr and the pids of the processes it had started."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1")) as proc:
        try:
            lines: queue.Queue[str | None] = queue.Queue()

            def read() -> None:
                for line in proc.stdout:
                    lines.put(line)
                lines.put(None)

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            seen = []
            while (line := lines.get(timeout=TIMEOUT)) is not None:
                seen.append(line)
                if " -> " in line:
                    break
            assert line is not None, f"no output was reported: {seen}"
            children = psutil.Process(proc.pid).children(recursive=True)
            os.killpg(proc.pid, signal.SIGINT)
            code = proc.wait(TIMEOUT)
            reader.join(TIMEOUT)
            while (line := lines.get(timeout=TIMEOUT)) is not None:
                seen.append(line)
            return code, seen, proc.stderr.read(), children
        except BaseException:
            proc.kill()
            raise


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_exits_130_with_one_line_and_no_partial_file(long_recordings, tmp_path,
                                                            live_stack_command, workers):
    out = tmp_path / "stacks"
    out.mkdir()
    cmd = [live_stack_command, "reprocess", *map(str, long_recordings), "-o", str(out),
           "--workers", workers]
    code, stdout, stderr, children = _interrupt_after_first_output(cmd)
    assert code == 130, (stdout, stderr)
    assert stderr.strip() == ("live-stack reprocess: interrupted: the outputs finished are "
                              "kept, none is half-written"), stderr
    # only complete images, each named as an output, nothing else (no temporary file):
    # those reported, and any a worker finished as the Ctrl-C came
    files = sorted(p.name for p in out.iterdir())
    done = {Path(line.rsplit(" -> ", 1)[1].strip()).name for line in stdout if " -> " in line}
    assert done <= set(files) and done, (files, stdout)
    assert set(files) <= {f"{p.stem}_ls10pct.tif" for p in long_recordings}, files
    assert len(files) < len(long_recordings)
    for name in files:
        assert read_image(out / name)[1]["input_frames"] == FRAMES
    # no process of the run is left (a killed worker may take a moment to be gone)
    _, alive = psutil.wait_procs(children, timeout=EXIT_TIMEOUT)
    assert not alive, alive
    # and a second run does exactly what is left
    code = subprocess.run(cmd + ["-q"], capture_output=True, text=True, timeout=TIMEOUT,
                          check=False)
    assert code.returncode == 0, code.stderr
    assert code.stdout.strip().splitlines()[-1] == (
        f"{len(long_recordings) - len(files)} of {len(long_recordings)} inputs stacked, "
        f"{len(files)} up to date")
