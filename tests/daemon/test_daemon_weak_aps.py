"""Where the stack is weak, through a running daemon (issue 13, Deliver 6): the real live
stacker's per-AP ``ap_frames`` and ``ap_fell_back`` reach the ``status`` (under
``stacker``) and the ``stack`` message, one entry per AP of the stack's ``ap_centres``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import zmq

from daemon import protocol
from daemon.client import Subscriber, control_request
from daemon.service import StackingService

#: Seconds any test waits for something to happen over a socket.
WAIT = 30.0


def _settled(svc: StackingService, frames: int, wait_status: Callable[..., Any]) -> dict:
    """The first status once every frame was stacked, no deferred work is left and a stack
    of that state was published."""
    return wait_status(svc, lambda st: st["frames"]["processed"] == frames
                       and bool(st["stack"]) and st["stacker"].get("pending_work") == 0
                       and st["stacker"].get("frames_seen") == frames, timeout=60)


def _latest_stack(svc: StackingService, zctx: zmq.Context,
                  recv_stack: Callable[..., Any], frames: int) -> Any:
    """The latest stack, sent again at once to a new subscriber."""
    with Subscriber(svc.endpoints.publish, topics=(protocol.TOPIC_STACK,),
                    context=zctx) as sub:
        return recv_stack(sub, lambda m: m.header["meta"]["frames_processed"] == frames,
                          timeout=WAIT)


def _per_ap(stats: dict[str, Any]) -> tuple[list[int], list[int]]:
    return stats["ap_frames"], stats["ap_fell_back"]


def test_status_and_stack_carry_frames_per_ap(
    make_service: Callable[..., StackingService], small_capture: Any, zctx: zmq.Context,
    replay_into: Callable[..., None], wait_status: Callable[..., Any],
    recv_stack: Callable[..., Any],
) -> None:
    from live_stack.live import LiveParams, LiveStacker

    n = small_capture.frames
    asked = 20
    params = LiveParams(buffer_size=n, stack_size=str(asked))
    svc = make_service(LiveStacker(params), service={"queue_size": 200})
    replay_into(svc.endpoints.ingest, small_capture.video)
    st = _settled(svc, n, wait_status)
    msg = _latest_stack(svc, zctx, recv_stack, n)
    meta = msg.header["meta"]
    m = len(meta["ap_centres"])
    assert m > 1 and meta["stats"]["aps"] == m and st["stacker"]["aps"] == m
    frames, fell = _per_ap(meta["stats"])
    assert len(frames) == m and len(fell) == m
    # every AP of this well-lit capture sees all n > asked frames: each stacks the asked
    assert meta["stats"]["frames_per_ap"] == asked
    assert frames == [asked] * m
    assert all(0 <= f <= asked for f in fell)
    assert sum(fell) <= meta["stats"]["local_failed"]
    # the status says the same as the stack message
    assert _per_ap(st["stacker"]) == (frames, fell)
    now = control_request(svc.endpoints.control, "status", timeout=WAIT,
                          context=zctx)["result"]
    assert _per_ap(now["stacker"]) == (frames, fell)


def test_low_signal_capture_shows_fallbacks_in_status_and_stack(
    make_service: Callable[..., StackingService], poor_light_capture: Any,
    zctx: zmq.Context, replay_into: Callable[..., None], wait_status: Callable[..., Any],
    recv_stack: Callable[..., Any],
) -> None:
    from live_stack.live import LiveParams, LiveStacker

    cap = poor_light_capture
    n, asked = cap.frames, 12
    params = LiveParams(buffer_size=n, stack_size=str(asked))
    svc = make_service(LiveStacker(params), service={"queue_size": 200})
    replay_into(svc.endpoints.ingest, cap.video)
    st = _settled(svc, n, wait_status)
    msg = _latest_stack(svc, zctx, recv_stack, n)
    stats = msg.header["meta"]["stats"]
    m = len(msg.header["meta"]["ap_centres"])
    frames, fell = _per_ap(stats)
    assert m > 1 and len(frames) == m and len(fell) == m
    assert frames == [asked] * m  # every AP stacks the asked frames, fallbacks included
    # some shifts fell back, not all of them, and never more than the AP stacked
    assert 0 < sum(fell) < sum(frames)
    assert all(0 <= b <= f for b, f in zip(fell, frames, strict=True))
    assert sum(fell) <= stats["local_failed"]
    assert _per_ap(st["stacker"]) == (frames, fell)
    now = control_request(svc.endpoints.control, "status", timeout=WAIT,
                          context=zctx)["result"]
    assert _per_ap(now["stacker"]) == (frames, fell)
    # and ctl's readable status names it
    r = subprocess.run([sys.executable, "-m", "live_stack.cli", "ctl", "--control",
                        svc.endpoints.control, "status"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("APs:"))
    share = 100 * sum(fell) / sum(frames)
    assert line == (f"APs:       {m}, {share:.0f} % of shifts fell back "
                    f"({sum(fell)} of {sum(frames)})")

