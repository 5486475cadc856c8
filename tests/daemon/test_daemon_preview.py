"""Previews of the raw frames: the newest frame, decimated, with its levels (issue 16)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import zmq

from daemon import protocol
from daemon.client import Subscriber
from daemon.preview import PreviewParams, decimate, full_scale, levels, viewable
from daemon.service import StackingService
from daemon.sources import FramePusher

#: Seconds any test waits for something to happen over a socket.
WAIT = 30.0


def test_previews_of_a_replayed_capture_are_its_frames(
    make_service: Callable[..., StackingService], small_capture: Any, zctx: zmq.Context,
    replay_into: Callable[..., None],
) -> None:
    from live_stack.io import open_source
    from live_stack.live import LiveParams, LiveStacker

    svc = make_service(LiveStacker(LiveParams()), service={"queue_size": 200})
    with open_source(small_capture.video) as src:
        frames = [np.array(f) for f in src]
    with Subscriber(svc.endpoints.publish, topics=(protocol.TOPIC_PREVIEW,),
                    context=zctx) as sub:
        replay_into(svc.endpoints.ingest, small_capture.video, "--fps", "40")
        got = []
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and (not got or got[-1].header["seq"] < len(frames) - 1):
            msg = sub.recv(timeout=1.0)
            if msg is not None:
                got.append(msg)
    assert got and got[-1].header["seq"] == len(frames) - 1  # the newest frame, at the end
    # one frame per interval at most: far fewer previews than frames (80 frames in 2 s
    # or more), each of a newer frame
    seqs = [m.header["seq"] for m in got]
    assert 2 <= len(got) < len(frames) / 2 and seqs == sorted(set(seqs))
    for msg in got:
        frame = frames[msg.header["seq"]]
        assert msg.header["kind"] == "preview" and msg.topic == "preview"
        meta = msg.header["meta"]
        assert (meta["frame_width"], meta["frame_height"]) == (160, 120)
        assert meta["decimation"] == 1  # 19 kB fits the budget whole
        np.testing.assert_array_equal(msg.image, frame)
        lv = meta["levels"]
        assert sum(lv["hist"]["L"]) == frame.size and lv["full"] == 255.0
        assert lv["clipped"]["L"] == pytest.approx(np.mean(frame >= 255))
    last = got[-1].header["meta"]
    assert last["quality"] is not None and last["best_quality"] >= last["quality"] > 0
    assert last["received_fps"] > 0


def test_a_large_bayer_frame_is_decimated_and_its_clipping_measured_per_colour(
    make_service: Callable[..., StackingService], standin_cls: type, zctx: zmq.Context
) -> None:
    svc = make_service(standin_cls())
    h, w = 1200, 1600
    frame = np.full((h, w), 1000, np.uint16)
    frame[0::2, 0::2] = 4095  # every red site of RGGB clipped (12 bits)
    frame[1:400:2, 1::2] = 4095  # a third of the blue sites clipped
    with Subscriber(svc.endpoints.publish, topics=(protocol.TOPIC_PREVIEW,),
                    context=zctx) as sub, \
            FramePusher(svc.endpoints.ingest, source="cam", context=zctx) as push:
        msg = None
        deadline = time.monotonic() + WAIT
        while msg is None and time.monotonic() < deadline:
            # sent again until the subscription has joined (a preview is of a new frame)
            push.send(frame, bayer="RGGB", meta={"bit_depth": 12})
            msg = sub.recv(timeout=0.5)
        assert msg is not None and msg.topic == "preview"
    meta = msg.header["meta"]
    assert msg.header["layout"] == "rgb" and msg.header["dtype"] == "uint16"
    assert msg.image.nbytes <= PreviewParams().max_bytes
    k = meta["decimation"]
    assert k >= 4 and msg.image.shape == (h // k, w // k, 3)
    assert np.all(msg.image[..., 0] == 4095) and np.all(msg.image[..., 1] == 1000)
    clipped = meta["levels"]["clipped"]
    assert clipped == {"R": 1.0, "G": 0.0, "B": pytest.approx(1 / 3)}
    assert meta["levels"]["full"] == 4095.0


def test_preview_functions() -> None:
    assert full_scale(np.dtype(np.uint16)) == 65535.0
    assert full_scale(np.dtype(np.uint16), 12) == 4095.0
    assert full_scale(np.dtype(np.float32)) == 1.0
    img = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)
    out, k = decimate(img, 64 * 64 * 2 // 16)
    assert k == 4 and out.shape == (16, 16)
    assert out[0, 0] == round(img[:4, :4].mean())
    rgb = viewable(np.array([[10, 20], [30, 40]], np.uint8), "GBRG")  # G B / R G
    assert rgb.shape == (1, 1, 3) and rgb[0, 0].tolist() == [30, 25, 20]
    lv = levels(np.array([[0, 255], [255, 7]], np.uint8), "mono", full=255.0, bins=4)
    assert lv["clipped"]["L"] == 0.5 and lv["hist"]["L"] == [2, 0, 0, 2]
    with pytest.raises(ValueError, match="max_bytes"):
        PreviewParams(max_bytes=10)
    with pytest.raises(ValueError, match="layout"):
        levels(img, "XYZW", full=1.0, bins=2)
    # a 12-bit frame in 16-bit words: 4095 is clipped, the bins span 0..4095
    lv = levels(np.array([[0, 4095], [4095, 2048]], np.uint16), "mono", full=4095.0, bins=2)
    assert lv["hist"]["L"] == [1, 3] and lv["clipped"]["L"] == 0.5
