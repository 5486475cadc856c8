"""The INDI source end to end, against a real indiserver running the CCD simulator.

Each test starts its own indiserver on a random port (see conftest_indi.py), runs
``live-stack source indi`` as a real process and receives what it pushes on a PULL
socket (or through a real daemon). They are skipped only when indiserver or PyIndi is
truly missing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from conftest_indi import (
    SIM_DEVICE,
    SIM_HEIGHT,
    SIM_WIDTH,
    FrameReceiver,
    IndiServer,
    requires_indi,
)

from daemon.sources.indi import EXIT_NO_DEVICE, EXIT_OK

pytestmark = [pytest.mark.indi, requires_indi]


@pytest.fixture
def receiver() -> Iterator[FrameReceiver]:
    rx = FrameReceiver()
    try:
        yield rx
    finally:
        rx.close()


#: Seconds the first frames may take (server start, camera connection, first frames).
FIRST_FRAMES = 30.0
#: Seconds frames may take to flow again after the server came back.
RECOVERY = 40.0
#: Frames checked per test.
FRAMES = 3


def _source_args(server: IndiServer, rx: Any, *extra: str) -> list[str]:
    return ["--port", str(server.port), "--device", SIM_DEVICE, "--to", rx.endpoint,
            "--stall-timeout", "2", *extra]


def _check_frames(frames: list, *, width: int, height: int, dtype: str, layout: str,
                  mode: str) -> None:
    now = time.time()
    seqs = [h["seq"] for h, _ in frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs
    for header, image in frames:
        assert (header["width"], header["height"]) == (width, height)
        assert image.shape == (height, width)
        assert header["dtype"] == dtype and image.dtype == np.dtype(dtype)
        assert header["layout"] == layout
        assert header["kind"] == "frame"
        assert header["meta"]["mode"] == mode
        assert header["meta"]["device"] == SIM_DEVICE
        assert abs(header["time"] - now) < FIRST_FRAMES + 10, header["time"]


@pytest.mark.parametrize("bayer", [False, True], ids=["mono", "bayer"])
def test_stream_frames_arrive(indi_server: IndiServer, receiver: Any, start_source: Any,
                              bayer: bool) -> None:
    indi_server.configure(bayer=bayer)
    src = start_source(*_source_args(indi_server, receiver, "--mode", "stream",
                                     "--exposure", "0.001", "--binning", "2"))
    frames = receiver.frames(FRAMES, FIRST_FRAMES)
    _check_frames(frames, width=SIM_WIDTH // 2, height=SIM_HEIGHT // 2, dtype="uint8",
                  layout="RGGB" if bayer else "mono", mode="stream")
    assert frames[0][0]["meta"]["format"] == ".stream"
    assert frames[0][0]["exposure"] == pytest.approx(0.001)
    assert max(int(img.max()) for _, img in frames) > 0  # the simulator's noise got through
    assert src.stop() == EXIT_OK
    assert indi_server.getprop(f"{SIM_DEVICE}.CCD_VIDEO_STREAM.STREAM_ON") == "Off"


@pytest.mark.parametrize("bayer", [False, True], ids=["mono", "bayer"])
def test_exposure_frames_arrive(indi_server: IndiServer, receiver: Any, start_source: Any,
                                bayer: bool) -> None:
    indi_server.configure(bayer=bayer)
    start = time.time()
    src = start_source(*_source_args(indi_server, receiver, "--mode", "exposure",
                                     "--exposure", "0.02", "--gain", "40",
                                     "--roi", "64", "32", "320", "240"))
    frames = receiver.frames(FRAMES, FIRST_FRAMES)
    _check_frames(frames, width=320, height=240, dtype="uint16",
                  layout="RGGB" if bayer else "mono", mode="exposure")
    for header, _ in frames:
        assert header["meta"]["format"] == ".fits"
        assert header["exposure"] == pytest.approx(0.02)  # EXPTIME from the FITS header
        # DATE-OBS (start of the exposure, millisecond precision) after the source began
        assert start - 1 <= header["time"] <= time.time()
    assert src.stop() == EXIT_OK


@pytest.mark.parametrize(("mode", "fmt", "dtype"), [("stream", ".stream.z", "uint8"),
                                                   ("exposure", ".fits.fz", "uint16")])
def test_compressed_blobs_are_decoded(indi_server: IndiServer, receiver: Any,
                                      start_source: Any, mode: str, fmt: str,
                                      dtype: str) -> None:
    """CCD_COMPRESSION on: zlib stream frames, fpack'ed FITS (padded by indiserver 1.9)."""
    indi_server.configure()
    indi_server.setprop(f"{SIM_DEVICE}.CONNECTION.CONNECT=On")
    indi_server.setprop(f"{SIM_DEVICE}.CCD_COMPRESSION.INDI_ENABLED=On")
    src = start_source(*_source_args(indi_server, receiver, "--mode", mode,
                                     "--exposure", "0.001" if mode == "stream" else "0.01",
                                     "--binning", "2"))
    frames = receiver.frames(FRAMES, FIRST_FRAMES)
    _check_frames(frames, width=SIM_WIDTH // 2, height=SIM_HEIGHT // 2, dtype=dtype,
                  layout="mono", mode=mode)
    assert {h["meta"]["format"] for h, _ in frames} == {fmt}
    assert all(h["meta"]["undecodable"] == 0 for h, _ in frames)
    assert src.stop() == EXIT_OK


def test_stream_roi_falls_back_to_cropping(indi_server: IndiServer, receiver: Any,
                                           start_source: Any) -> None:
    """The simulator streams no frames for a camera ROI; the source crops the stream."""
    indi_server.configure()
    src = start_source(*_source_args(indi_server, receiver, "--mode", "stream",
                                     "--exposure", "0.001", "--roi", "100", "50", "200", "120"))
    frames = receiver.frames(FRAMES, FIRST_FRAMES)
    _check_frames(frames, width=200, height=120, dtype="uint8", layout="mono", mode="stream")
    assert src.stop() == EXIT_OK
    assert "cropping the stream instead" in src.output()


def test_survives_server_restart(indi_server: IndiServer, receiver: Any,
                                 start_source: Any) -> None:
    indi_server.configure()
    src = start_source(*_source_args(indi_server, receiver, "--mode", "stream",
                                     "--exposure", "0.001", "--binning", "4"))
    before = receiver.frames(FRAMES, FIRST_FRAMES)
    port = indi_server.port
    indi_server.kill()
    # Whatever was still in flight arrives; then nothing until the server is back.
    while receiver.recv(1.0) is not None:
        pass
    assert src.running(), src.output()
    indi_server.start(port)
    indi_server.configure()
    after = receiver.frames(FRAMES, RECOVERY)
    assert after[0][0]["seq"] > before[-1][0]["seq"]
    assert after[0][0]["meta"]["reconnects"] >= 1
    _check_frames(after, width=SIM_WIDTH // 4, height=SIM_HEIGHT // 4, dtype="uint8",
                  layout="mono", mode="stream")
    assert src.stop() == EXIT_OK
    log = src.output()
    assert "server lost" in log and "cannot reach the INDI server" in log


def test_survives_camera_disconnect(indi_server: IndiServer, receiver: Any,
                                    start_source: Any) -> None:
    indi_server.configure()
    src = start_source(*_source_args(indi_server, receiver, "--mode", "exposure",
                                     "--exposure", "0.01", "--binning", "4"))
    before = receiver.frames(FRAMES, FIRST_FRAMES)
    indi_server.setprop(f"{SIM_DEVICE}.CONNECTION.DISCONNECT=On")
    deadline = time.monotonic() + RECOVERY
    after: list = []
    while len(after) < FRAMES:
        item = receiver.recv(max(0.0, deadline - time.monotonic()))
        assert item is not None, f"frames did not come back:\n{src.output()[-3000:]}"
        if item[0]["meta"]["reconnects"] >= 1:
            after.append(item)
    assert after[0][0]["seq"] > before[-1][0]["seq"]
    assert src.running()
    assert src.stop() == EXIT_OK
    assert "device lost" in src.output()


def test_unknown_device_is_an_error(indi_server: IndiServer, receiver: Any,
                                    start_source: Any) -> None:
    src = start_source("--port", str(indi_server.port), "--device", "No Such Camera",
                       "--to", receiver.endpoint, "--device-timeout", "1")
    assert src.wait(FIRST_FRAMES) == EXIT_NO_DEVICE
    log = src.output()
    assert "No Such Camera" in log and SIM_DEVICE in log  # names what exists


def test_first_camera_is_found_without_a_name(indi_server: IndiServer, receiver: Any,
                                              start_source: Any) -> None:
    indi_server.configure()
    src = start_source("--port", str(indi_server.port), "--to", receiver.endpoint,
                       "--binning", "4", "--exposure", "0.001")
    header, _ = receiver.frames(1, FIRST_FRAMES)[0]
    assert header["meta"]["device"] == SIM_DEVICE
    assert header["meta"]["mode"] == "stream"  # auto: the simulator offers a stream
    assert header["source"].startswith("indi:")
    assert src.stop() == EXIT_OK
