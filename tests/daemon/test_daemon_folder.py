"""The watched-folder source: files written slowly are read once complete, never twice."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from daemon import protocol
from daemon.sources import FramePusher
from daemon.sources.folder import FolderParams, FolderState, FolderWatcher, watch_folder

#: Seconds a file must stay unchanged before the source reads it, in these tests.
SETTLE = 0.5

#: Pause between the chunks of a slowly written file (shorter than SETTLE).
CHUNK_PAUSE = 0.2

#: Seconds any test waits for something to happen over a socket.
WAIT = 15.0


@pytest.fixture
def pull(zctx: zmq.Context) -> Iterator[tuple[zmq.Socket, str]]:
    """A PULL socket standing in for the daemon's ingest."""
    sock = zctx.socket(zmq.PULL)
    sock.linger = 0
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    yield sock, f"tcp://127.0.0.1:{port}"
    sock.close(linger=0)


def _receive(sock: zmq.Socket, timeout: float) -> tuple[dict, np.ndarray, float] | None:
    if not sock.poll(timeout * 1000):
        return None
    header, array = protocol.decode_image(sock.recv_multipart())
    return header, array.copy(), time.monotonic()


def _receive_n(sock: zmq.Socket, n: int) -> list[tuple[dict, np.ndarray, float]]:
    got = []
    for _ in range(n):
        msg = _receive(sock, WAIT)
        assert msg is not None, f"only {len(got)} of {n} frames came"
        got.append(msg)
    return got


class FolderRun:
    """The folder source running in a thread of the test."""

    def __init__(self, params: FolderParams, endpoint: str, ctx: zmq.Context) -> None:
        self.stop = threading.Event()
        self.watchers: list[FolderWatcher] = []
        self.pusher = FramePusher(endpoint, source="folder", context=ctx, stop=self.stop)
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, args=(params,))
        self.thread.start()
        deadline = time.monotonic() + WAIT
        while not (self.watchers and self.watchers[0].ready.wait(0.05)):
            assert time.monotonic() < deadline and not self.errors, self.errors

    def _run(self, params: FolderParams) -> None:
        try:
            self.sender = watch_folder(params, self.pusher, self.stop,
                                       watcher_ready=self.watchers.append)
        except BaseException as exc:
            self.errors.append(exc)

    def close(self) -> None:
        self.stop.set()
        for w in self.watchers:
            w.wake()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        self.pusher.close(flush=1.0)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "capture"
    d.mkdir()
    return d


@pytest.fixture
def start_source(pull: tuple[zmq.Socket, str], zctx: zmq.Context,
                 tmp_path: Path) -> Iterator[Any]:
    runs: list[FolderRun] = []

    def start(directory: Path, **kw: Any) -> FolderRun:
        params = FolderParams(directory, settle=SETTLE, state_file=tmp_path / "state.json",
                              **kw)
        run = FolderRun(params, pull[1], zctx)
        runs.append(run)
        return run

    yield start
    for run in runs:
        if run.thread.is_alive():
            run.close()


def _png_bytes(image: np.ndarray, tmp: Path) -> bytes:
    from live_stack.io.images import write_image

    path = tmp / "encode.png"
    write_image(path, image.astype(np.float32) / 65535)
    data = path.read_bytes()
    path.unlink()
    return data


def _write_slowly(path: Path, data: bytes, chunks: int = 4) -> float:
    """Write ``data`` in chunks with pauses; return when the last byte was written."""
    step = len(data) // chunks + 1
    with path.open("wb") as fh:
        for k in range(0, len(data), step):
            fh.write(data[k:k + step])
            fh.flush()
            time.sleep(CHUNK_PAUSE)  # a slow writer, not a wait for the code under test
        done = time.monotonic()
    return done


def test_an_image_written_slowly_is_read_once_complete_and_once_only(
    folder: Path, start_source: Any, pull: tuple[zmq.Socket, str], tmp_path: Path
) -> None:
    sock = pull[0]
    image = (np.arange(32 * 40, dtype=np.uint32).reshape(32, 40) * 50 % 65536).astype(np.uint16)
    data = _png_bytes(image, tmp_path)
    run = start_source(folder)
    done = _write_slowly(folder / "frame-0001.png", data, chunks=5)
    header, got, when = _receive_n(sock, 1)[0]
    assert when >= done  # not before the last chunk
    np.testing.assert_array_equal(got, image)
    assert header["meta"]["file"] == "frame-0001.png" and header["seq"] == 0
    # touching it again does not send it again
    (folder / "frame-0001.png").write_bytes(data)
    assert _receive(sock, SETTLE * 4) is None
    # a broken file is skipped (logged) and the source goes on
    (folder / "broken.png").write_bytes(b"not a png at all")
    (folder / "frame-0002.png").write_bytes(data)
    header, got, _ = _receive_n(sock, 1)[0]
    assert header["meta"]["file"] == "frame-0002.png"
    assert _receive(sock, SETTLE * 3) is None
    run.close()
    assert run.sender.files_sent == 2


def _ser_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 4096, (24, 32), dtype=np.uint16) for _ in range(n)]


def _write_ser(path: Path, frames: list[np.ndarray], pause: float = 0.0) -> float:
    from live_stack.io.ser import SerWriter

    with SerWriter(path, width=32, height=24, layout="RGGB", bit_depth=12) as w:
        for k, f in enumerate(frames):
            w.write(f, timestamp=1000.0 + k)
            if pause:
                time.sleep(pause)  # a slow camera
    return time.monotonic()


def test_a_ser_written_slowly_is_sent_whole_then_only_its_new_frames(
    folder: Path, start_source: Any, pull: tuple[zmq.Socket, str]
) -> None:
    sock = pull[0]
    frames = _ser_frames(8)
    run = start_source(folder)
    done = _write_ser(folder / "cap.ser", frames[:5], pause=CHUNK_PAUSE)
    got = _receive_n(sock, 5)
    assert min(w for _, _, w in got) >= done
    for k, (h, a, _) in enumerate(got):
        np.testing.assert_array_equal(a, frames[k])
        assert h["layout"] == "RGGB" and h["meta"]["frame"] == k
        assert h["time"] == pytest.approx(1000.0 + k)
    # the capture program rewrites the file with more frames: only the new ones are sent
    _write_ser(folder / "cap.ser", frames)
    got = _receive_n(sock, 3)
    assert [h["meta"]["frame"] for h, _, _ in got] == [5, 6, 7]
    np.testing.assert_array_equal(got[2][1], frames[7])
    assert _receive(sock, SETTLE * 3) is None
    run.close()


def test_nothing_is_sent_twice_across_restarts(
    folder: Path, start_source: Any, pull: tuple[zmq.Socket, str], tmp_path: Path
) -> None:
    sock = pull[0]
    image = np.full((16, 16), 1234, np.uint16)
    data = _png_bytes(image, tmp_path)
    (folder / "a.png").write_bytes(data)
    _write_ser(folder / "b.ser", _ser_frames(3))
    run = start_source(folder)
    got = _receive_n(sock, 4)  # files already there are sent too
    assert sorted(h["meta"]["file"] for h, _, _ in got) == ["a.png", "b.ser", "b.ser", "b.ser"]
    run.close()
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["files"]["b.ser"]["frames"] == 3 and state["files"]["a.png"]["frames"] == 1

    run = start_source(folder)
    assert _receive(sock, SETTLE * 4) is None  # nothing again
    (folder / "c.png").write_bytes(data)
    header, _, _ = _receive_n(sock, 1)[0]
    assert header["meta"]["file"] == "c.png"
    run.close()


def test_skip_existing(folder: Path, start_source: Any, pull: tuple[zmq.Socket, str],
                       tmp_path: Path) -> None:
    data = _png_bytes(np.full((16, 16), 7, np.uint16), tmp_path)
    (folder / "old.png").write_bytes(data)
    run = start_source(folder, skip_existing=True)
    assert _receive(pull[0], SETTLE * 4) is None
    (folder / "new.png").write_bytes(data)
    header, _, _ = _receive_n(pull[0], 1)[0]
    assert header["meta"]["file"] == "new.png"
    run.close()


def test_a_damaged_state_file_is_refused(tmp_path: Path, folder: Path) -> None:
    bad = tmp_path / "state.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="state file .*state.json cannot be read"):
        FolderState(bad, folder)
    bad.write_text(json.dumps({"version": 99, "files": {}}))
    with pytest.raises(ValueError, match="version 99"):
        FolderState(bad, folder)


def test_folder_source_process_restart(folder: Path, pull: tuple[zmq.Socket, str],
                                       tmp_path: Path) -> None:
    """The command: SIGTERM stops it; after a restart nothing is sent twice."""
    sock, endpoint = pull
    data = _png_bytes(np.full((16, 16), 99, np.uint16), tmp_path)
    cmd = [sys.executable, "-m", "live_stack.cli", "source", "folder", str(folder), "--to",
           endpoint, "--settle", str(SETTLE), "--state", str(tmp_path / "s.json")]

    def run_once(new_file: str) -> list[str]:
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + WAIT
            while "watching" not in proc.stderr.readline():
                assert time.monotonic() < deadline and proc.poll() is None
            (folder / new_file).write_bytes(data)
            names = []
            while (msg := _receive(sock, SETTLE * 4)) is not None:
                names.append(msg[0]["meta"]["file"])
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(WAIT) == 0
            assert time.monotonic() - t0 < 2.0
            return names
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stderr.close()

    assert run_once("one.png") == ["one.png"]
    assert run_once("two.png") == ["two.png"]


def test_folder_source_errors(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "live_stack.cli", "source", "folder",
                        str(tmp_path / "missing")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "missing is not a folder" in r.stderr
    bad_state = tmp_path / "s.json"
    bad_state.write_text("[]")
    r = subprocess.run([sys.executable, "-m", "live_stack.cli", "source", "folder",
                        str(tmp_path), "--state", str(bad_state)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "cannot be read" in r.stderr
