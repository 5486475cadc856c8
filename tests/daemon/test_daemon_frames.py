"""Frame preparation in the daemon: raw Bayer frames are debayered, masters applied."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import zmq

from daemon import protocol
from daemon.client import Subscriber
from daemon.config import FrameParams, build_config
from daemon.service import FramePreparation, StackingService
from daemon.sources import FramePusher
from live_stack.colour import mosaic

#: Seconds any test waits for something to happen over a socket.
WAIT = 60.0


def test_frame_params_are_checked() -> None:
    with pytest.raises(ValueError, match="frames.debayer"):
        FrameParams(debayer="nearest")
    with pytest.raises(ValueError, match=r"unknown key\(s\) in \[frames\]"):
        build_config({"frames": {"darkk": "x.tif"}})
    assert build_config({"frames": {"debayer": "ea"}}).frames.debayer == "ea"


def test_preparation_debayers_bayer_layouts_only() -> None:
    prep = FramePreparation(FrameParams())
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[..., 0] = 200  # a red field
    raw = mosaic(rgb, "RGGB")
    out = prep(raw, "RGGB")
    assert out.shape == (32, 48, 3)
    assert out[8:-8, 8:-8, 0].mean() > 150 and out[8:-8, 8:-8, 1:].max() < 30
    assert prep(raw, "mono") is raw  # mono passes through untouched


def test_missing_master_is_an_error_at_start() -> None:
    with pytest.raises(ValueError, match="nowhere.tif"):
        FramePreparation(FrameParams(dark="/nowhere.tif"))


def test_bayer_frames_stack_in_colour(make_service: Callable[..., StackingService],
                                      small_capture: Any, zctx: zmq.Context) -> None:
    """Raw RGGB frames pushed with their layout come out as an RGB stack."""
    from live_stack.io import open_source
    from live_stack.live import LiveParams, LiveStacker

    svc = make_service(LiveStacker(LiveParams(warmup=10, buffer_size=40)),
                       service={"queue_size": 200})
    with open_source(small_capture.video) as src:
        frames = [src[i] for i in range(min(60, len(src)))]
    tint = np.array([1.0, 0.6, 0.3], np.float32)  # a warm-coloured Moon
    with Subscriber(svc.endpoints.publish, topics=(protocol.TOPIC_STACK,), context=zctx) as sub, \
            FramePusher(svc.endpoints.ingest, source="bayer-test", context=zctx) as push:
        for i, f in enumerate(frames):
            rgb = (f[..., None].astype(np.float32) * tint).astype(np.uint8)
            push.send(mosaic(rgb, "RGGB"), capture_time=1.7e9 + i / 50, bayer="RGGB")
        deadline = time.monotonic() + WAIT
        msg = None
        while time.monotonic() < deadline:
            m = sub.recv(timeout=max(0.0, deadline - time.monotonic()))
            if m is not None and m.topic == "stack" and \
                    m.header["meta"]["frames_processed"] >= len(frames):
                msg = m
                break
    assert msg is not None, "no stack of all the frames was published"
    assert msg.header["layout"] == "rgb"
    img = msg.image.astype(np.float64)
    means = img.reshape(-1, 3).mean(axis=0)
    # the stack keeps the colour of the scene: R > G > B in the tint's proportions
    assert means[0] > means[1] > means[2]
    assert means[1] / means[0] == pytest.approx(0.6, abs=0.08)
    assert means[2] / means[0] == pytest.approx(0.3, abs=0.08)
