"""Control input a tired hand types: NaN, absurd and endless values (issue 18 item 9).

Each value is typed into ``live-stack ctl set`` as the operator would, and sent to a
running daemon as another client (the viewer, a script) would; both refuse it with a
message naming the parameter, the daemon keeps stacking at its pace, and its status
stays valid (strict) JSON.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from daemon.client import control_request
from live_stack.io import open_source

#: ctl's own refusal (exit code 2) and the daemon's (exit code 1), as printed
LOCAL, DAEMON = "live-stack ctl: error: ", "live-stack ctl: the daemon answered: "

#: (parameter, value as typed, exit code, what the refusal says)
BAD_VALUES = [
    ("window_seconds", "NaN", 2, "set: window_seconds must be a finite number, got nan"),
    ("local_outlier", "NaN", 2, "set: local_outlier must be a finite number, got nan"),
    ("local_outlier", "Infinity", 2, "set: local_outlier must be a finite number, got inf"),
    ("window_seconds", "inf", 1, "set: window_seconds: 'inf' is not a valid finite float"),
    ("stack_size", "1000000000", 1,
     "set: stack_size: a count must be at most 100000 (the largest buffer_size), "
     "got 1000000000"),
    ("stack_size", str(2**63), 2,
     "set: stack_size must be at most 2147483647 in magnitude, got a number of 19 digits"),
    ("window_frames", "9" * 5000, 2,
     "set: window_frames: a value of 5000 characters is not a parameter value (at most 64)"),
    ("local_outlier", "1" * 300, 2, "set: local_outlier must be at most 2147483647 in "
     "magnitude, got a number of 300 digits"),
]

#: (parameter, value as another client sends it, the daemon's error reply)
SENT_VALUES = [
    ("window_seconds", float("nan"), BAD_VALUES[0][3]),
    ("local_outlier", float("-inf"), "set: local_outlier must be a finite number, got -inf"),
    ("stack_size", 10**9, BAD_VALUES[4][3]),
    ("stack_size", 2**63, BAD_VALUES[5][3]),
    ("window_frames", "9" * 5000, BAD_VALUES[6][3]),
]

#: Seconds to wait for a control reply.
WAIT = 10.0


@pytest.fixture(scope="module")
def frames(capture: Any) -> list[np.ndarray]:
    with open_source(capture.video) as src:
        return [np.array(f) for f in src]


def _strict_json(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"not strict JSON: {name} in {text[:200]}...")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_and_absurd_values_are_refused_and_stacking_goes_on(
    live_daemon: Any, run_live_stack: Callable[..., Any], frame_feed: Callable[..., Any],
    frames: list[np.ndarray],
) -> None:
    feed = frame_feed(live_daemon.ingest, frames)
    live_daemon.wait_status(lambda s: s["stack"], "a first stack")
    before = live_daemon.status()["params"]
    for name, typed, rc, message in BAD_VALUES:
        # ctl refuses what no parameter takes itself (a huge number cannot even be sent)
        ctl = run_live_stack("ctl", "--control", live_daemon.control, "set", name, typed)
        assert ctl.finish() == rc, (name, typed)
        prefix = LOCAL if rc == 2 else DAEMON
        assert ctl.stderr == f"{prefix}{message}\n", (name, typed)
        assert ctl.stdout == ""
    for name, value, message in SENT_VALUES:  # and the daemon refuses them from any client
        reply = control_request(live_daemon.control, "set", name=name, value=value,
                                timeout=WAIT)
        assert reply == {"ok": False, "error": message}, (name, value)
    # stacking did not stall: frames keep being processed at the feed's pace
    processed = live_daemon.status()["frames"]["processed"]
    live_daemon.wait_status(lambda s: s["frames"]["processed"] >= processed + 25,
                            "25 more frames processed", timeout=5)
    status = run_live_stack("ctl", "--control", live_daemon.control, "--json", "status")
    assert status.finish() == 0
    params = _strict_json(status.stdout)["result"]["params"]
    assert params == before  # nothing changed
    assert params["window_seconds"] == 0.0 and params["local"]["outlier"] == 3.0

    ok = run_live_stack("ctl", "--control", live_daemon.control, "set", "window_seconds", "30")
    assert ok.finish() == 0  # a sane value still goes through
    assert live_daemon.status()["params"]["window_seconds"] == 30.0
    feed.stop()
    assert live_daemon.process.stop() == 0
    log = next(live_daemon.output.glob("session-*.log")).read_text()
    assert "Traceback" not in log and "OverflowError" not in log
    assert "Traceback" not in live_daemon.process.stderr


def test_a_config_file_with_nan_is_refused_at_start(
    start_daemon: Callable[..., Any], tmp_path: Any,
) -> None:
    config = tmp_path / "daemon.toml"
    config.write_text("[live]\nwindow_seconds = nan\n")
    d = start_daemon(tmp_path / "out", "--config", str(config))
    assert d.process.finish() == 2
    assert d.process.stderr == ("live-stack daemon: error: [live] window_seconds: "
                                "window_seconds must be a finite number, got nan\n")
    assert not (tmp_path / "out").exists()
