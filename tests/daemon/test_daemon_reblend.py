"""An accepted ``set`` makes a new stack from the buffer, with no new frame (issue 16)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import zmq

from daemon import protocol
from daemon.client import Subscriber, control_request
from daemon.service import StackingService

#: Seconds any test waits for something to happen over a socket.
WAIT = 30.0


def test_set_stack_size_after_the_source_stopped_reblends_and_save_writes_it(
    make_service: Callable[..., StackingService], small_capture: Any, zctx: zmq.Context,
    recv_stack: Callable[..., Any], replay_into: Callable[..., None],
) -> None:
    from live_stack.io.images import read_image
    from live_stack.live import LiveParams, LiveStacker

    svc = make_service(LiveStacker(LiveParams(stack_size="50%")),
                       service={"queue_size": 200})
    n = small_capture.frames
    ctl = svc.endpoints.control
    with Subscriber(svc.endpoints.publish, topics=(protocol.TOPIC_STACK,), context=zctx) as sub:
        # the whole capture sent, the source has stopped: no frame comes any more
        replay_into(svc.endpoints.ingest, small_capture.video)
        before = recv_stack(sub, lambda m: m.header["meta"]["newest"]["index"] == n - 1)
        per_ap = before.header["meta"]["stats"]["frames_per_ap"]
        assert per_ap > 5
        reply = control_request(ctl, "set", name="stack_size", value="5%", timeout=WAIT,
                                context=zctx)
        assert reply["ok"] and reply["result"]["value"] == "5%"
        after = recv_stack(sub, lambda m: m.header["seq"] > before.header["seq"])
    meta = after.header["meta"]
    assert meta["frames_processed"] == n and meta["newest"]["index"] == n - 1  # no new frame
    assert 1 <= meta["stats"]["frames_per_ap"] < per_ap  # fewer frames per AP: re-selected
    assert after.image.shape == before.image.shape
    changed = np.abs(after.image.astype(np.int32) - before.image.astype(np.int32))
    assert changed.mean() > 0.05  # a different blend, not the same stack sent again
    # save writes the stack published now
    saved = control_request(ctl, "save", timeout=WAIT, context=zctx)
    assert saved["ok"], saved
    image, _ = read_image(saved["result"]["path"])
    diff = np.abs(protocol.stack_to_wire(image).astype(np.int32) - after.image.astype(np.int32))
    assert diff.max() <= 1
    st = control_request(ctl, "status", timeout=WAIT, context=zctx)["result"]
    assert st["frames"]["received"] == n and st["stack"]["seq"] == after.header["seq"]


def test_a_refused_set_makes_no_new_stack(
    make_service: Callable[..., StackingService], small_capture: Any, zctx: zmq.Context,
    recv_stack: Callable[..., Any], replay_into: Callable[..., None],
) -> None:
    from live_stack.live import LiveParams, LiveStacker

    svc = make_service(LiveStacker(LiveParams()), service={"queue_size": 200})
    n = small_capture.frames
    with Subscriber(svc.endpoints.publish, topics=(protocol.TOPIC_STACK,), context=zctx) as sub:
        replay_into(svc.endpoints.ingest, small_capture.video)
        last = recv_stack(sub, lambda m: m.header["meta"]["newest"]["index"] == n - 1)
        reply = control_request(svc.endpoints.control, "set", name="stack_size", value="0%",
                                timeout=WAIT, context=zctx)
        assert not reply["ok"] and "stack size" in reply["error"]
        assert sub.recv(timeout=1.0) is None  # no stack made for a refused change
    st = control_request(svc.endpoints.control, "status", timeout=WAIT, context=zctx)
    assert st["result"]["stack"]["seq"] == last.header["seq"]
