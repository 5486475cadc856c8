"""The daemon says why nothing is stacked: in its status, its log and at stop (issue 16)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from daemon.client import control_request
from daemon.diagnosis import ALIGNMENT_FAILED_SHARE, ALIGNMENT_FAILURES, diagnose
from daemon.service import StackingService
from daemon.sources import FramePusher
from daemon.stats import IngestStats

#: Seconds any test waits for something to happen over a socket.
WAIT = 30.0

#: Frames of the pure-noise capture: more than the live stacker's warm-up (40) plus
#: ALIGNMENT_FAILURES.
NOISE_FRAMES = 90


@pytest.fixture(scope="module")
def noise_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SER capture of featureless noise (what INDI's CCD simulator sends without its
    star catalogue): nothing in it to align on."""
    from live_stack.io.ser import SerWriter

    path = tmp_path_factory.mktemp("noise") / "noise.ser"
    rng = np.random.default_rng(3)
    with SerWriter(path, width=160, height=120) as w:
        for i in range(NOISE_FRAMES):
            w.write(rng.integers(80, 120, (120, 160), dtype=np.uint8), 1.7e9 + i / 30)
    return path


def test_a_capture_of_pure_noise_gives_the_reason_in_status_and_log(
    make_service: Callable[..., StackingService], noise_capture: Path, zctx: zmq.Context,
    replay_into: Callable[..., None], wait_status: Callable[..., Any],
) -> None:
    from live_stack.live import LiveParams, LiveStacker

    svc = make_service(LiveStacker(LiveParams()), service={"queue_size": 200})
    ctl = svc.endpoints.control
    st = control_request(ctl, "status", timeout=WAIT, context=zctx)["result"]
    assert st["diagnosis"]["kind"] == "waiting" and svc.endpoints.ingest in st["diagnosis"]["text"]
    replay_into(svc.endpoints.ingest, noise_capture)
    st = wait_status(svc, lambda s: s["frames"]["processed"] == NOISE_FRAMES)
    # a frame or two right after the warm-up may pass for aligned by chance (the stacker
    # then has no typical strength to compare with); the rest fail to align
    assert st["frames"]["admitted"] <= 3
    diag = st["diagnosis"]
    assert diag["kind"] == "alignment" and diag["fault"]
    prefix = "nothing to stack: "
    m = re.fullmatch(re.escape(prefix) + r"no structure to align on in the last (\d+) frames "
                     r"\((\d+) failed to align\): is the object in the field and in focus\?",
                     diag["text"])
    assert m, diag["text"]
    assert ALIGNMENT_FAILURES <= int(m.group(2)) <= int(m.group(1)) <= NOISE_FRAMES
    svc.stop()  # may save a stack of the frames that passed for aligned by chance
    log = next(svc.output_dir.glob("session-*.log")).read_text()
    assert log.count(prefix + "no structure to align on") >= 2  # when it began, and at stop
    last = log.strip().splitlines()[-1]
    assert "daemon stopped" in last and f"({prefix}no structure to align on" in last


def test_frames_all_dropped_and_paused_are_said(
    make_service: Callable[..., StackingService], standin_cls: type, zctx: zmq.Context,
    wait_status: Callable[..., Any],
) -> None:
    svc = make_service(standin_cls())
    ctl = svc.endpoints.control
    with FramePusher(svc.endpoints.ingest, source="t", context=zctx) as push:
        push.send(np.zeros((8, 8), np.uint8))
        wait_status(svc, lambda s: s["frames"]["processed"] == 1)
        assert control_request(ctl, "status", timeout=WAIT,
                               context=zctx)["result"]["diagnosis"] is None
        control_request(ctl, "pause", timeout=WAIT, context=zctx)
        st = wait_status(svc, lambda s: s["diagnosis"] is not None)
        assert st["diagnosis"]["kind"] == "paused" and not st["diagnosis"]["fault"]


def test_diagnose_from_real_counters() -> None:
    stats = IngestStats(recent=300, rate_window=1.0)
    header = {"source": "s", "seq": 0, "time": 1.0, "width": 8, "height": 8,
              "dtype": "uint8", "layout": "mono"}
    stats.on_received(header)
    stats.on_drop("wrong_size", 1)
    d = diagnose(stats.as_dict(), has_stack=False, paused=False)
    assert d is not None and d.kind == "dropped" and "wrong_size 1" in d.text
    for i in range(5):
        stats.on_processed({**header, "seq": i}, admitted=False, reason="warmup", quality=0.1)
    d = diagnose(stats.as_dict(), has_stack=False, paused=False, warmup=40)
    assert d is not None and d.kind == "warmup" and "(5 of 40)" in d.text and not d.fault
    for i in range(ALIGNMENT_FAILURES - 1):
        stats.on_processed({**header, "seq": i}, admitted=False, reason="alignment",
                           quality=0.1)
    assert diagnose(stats.as_dict(), has_stack=True, paused=False) is None  # too few yet
    stats.on_processed(header, admitted=False, reason="alignment", quality=0.1)
    d = diagnose(stats.as_dict(), has_stack=True, paused=False)
    assert d is not None and d.fault
    assert d.text.startswith(f"nothing to stack: no structure to align on in the last "
                             f"{ALIGNMENT_FAILURES + 5} frames ({ALIGNMENT_FAILURES} failed")
    # frames that align again: once the failures are less than their share, all is well
    aligned = int(ALIGNMENT_FAILURES / ALIGNMENT_FAILED_SHARE) - ALIGNMENT_FAILURES
    for _ in range(aligned):
        stats.on_processed(header, admitted=True, reason=None, quality=0.5)
    assert diagnose(stats.as_dict(), has_stack=True, paused=False) is not None
    stats.on_processed(header, admitted=True, reason=None, quality=0.5)
    assert diagnose(stats.as_dict(), has_stack=True, paused=False) is None
