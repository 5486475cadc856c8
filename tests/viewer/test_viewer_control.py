"""Control requests, their answers (good and bad), the banner and reconnection.

These use the stand-in daemon of conftest.py, which can misbehave on purpose; the same
behaviours against the real daemon are in test_viewer_daemon.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import zmq

from daemon import protocol
from viewer.control_panel import ERROR_STYLE, OK_STYLE
from viewer.link import LinkParams

#: Milliseconds any wait may take before the test fails.
WAIT_MS = 10_000


def last_reply(window) -> str:
    return window.control_panel.reply_label.text()


def test_buttons_send_their_requests_and_show_the_answers(qtbot, standin, open_window):
    window = open_window(standin.link_params)
    panel = window.control_panel
    panel.reset_button.click()
    qtbot.waitUntil(lambda: last_reply(window) == "reset: ok: cmd=reset", timeout=WAIT_MS)
    assert panel.reply_label.styleSheet() == OK_STYLE
    panel.pause_button.click()
    panel.resume_button.click()
    panel.save_button.click()
    panel.rows["ap_size"][1].setText("48")
    panel.rows["ap_size"][2].click()
    panel.rows["stack_size"][1].setText("25%")
    panel.rows["stack_size"][1].returnPressed.emit()
    panel.other_name.setEditText("window_s")
    panel.other_value.setText("12.5")
    panel.other_button.click()
    qtbot.waitUntil(lambda: len(standin.requests) == 7, timeout=WAIT_MS)
    assert standin.requests == [
        {"cmd": "reset"},
        {"cmd": "pause"},
        {"cmd": "resume"},
        {"cmd": "save"},
        {"cmd": "set", "name": "ap_size", "value": 48},
        {"cmd": "set", "name": "stack_size", "value": "25%"},
        {"cmd": "set", "name": "window_s", "value": 12.5},
    ]
    qtbot.waitUntil(lambda: last_reply(window).startswith("set window_s=12.5: ok"), timeout=WAIT_MS)
    assert panel.log.toPlainText().count(": ok") == 7


@pytest.mark.parametrize(
    ("answer", "shown"),
    [
        (protocol.pack({"ok": False, "error": "unknown parameter 'bogus'"}),
         "set bogus=1: error: unknown parameter 'bogus'"),
        (b"\xc1\xc1", "set bogus=1: error: control reply is not valid msgpack"),
        (protocol.pack({"result": 3}), "set bogus=1: error: control reply lacks a boolean 'ok'"),
        (protocol.pack({"ok": False}), "set bogus=1: error: daemon refused without a reason"),
        (b"\x92\x01\x02", "set bogus=1: error: control reply must be a msgpack map"),
    ],
    ids=["refused", "not-msgpack", "no-ok", "no-reason", "not-a-map"],
)
def test_bad_answers_are_shown_as_errors(qtbot, standin, open_window, answer, shown):
    standin.handler = lambda request: answer
    window = open_window(standin.link_params)
    panel = window.control_panel
    panel.other_name.setEditText("bogus")
    panel.other_value.setText("1")
    panel.other_button.click()
    qtbot.waitUntil(lambda: last_reply(window).startswith(shown), timeout=WAIT_MS)
    assert panel.reply_label.styleSheet() == ERROR_STYLE


def test_unanswered_request_times_out_and_the_next_one_works(qtbot, standin, open_window):
    answered = []

    def handler(request):
        if not answered:  # swallow the first request
            answered.append(request)
            return None
        return protocol.pack({"ok": True, "result": "done"})

    standin.handler = handler
    window = open_window(standin.link_params)  # control timeout 1 s
    window.control_panel.save_button.click()
    qtbot.waitUntil(lambda: "error: no answer from" in last_reply(window), timeout=WAIT_MS)
    assert window.control_panel.reply_label.styleSheet() == ERROR_STYLE
    # The stuck REQ socket was replaced: the next request goes through.
    window.control_panel.reset_button.click()
    qtbot.waitUntil(lambda: last_reply(window) == "reset: ok: done", timeout=WAIT_MS)
    assert [r["cmd"] for r in standin.requests] == ["save", "reset"]


def test_requests_queue_while_one_is_pending(qtbot, standin, open_window):
    window = open_window(standin.link_params)
    for _ in range(5):
        window.control_panel.reset_button.click()
    qtbot.waitUntil(lambda: window.control_panel.log.toPlainText().count("reset: ok") == 5,
                    timeout=WAIT_MS)
    assert len(standin.requests) == 5


def test_invalid_local_input_is_shown_without_sending(qtbot, standin, open_window):
    window = open_window(standin.link_params)
    panel = window.control_panel
    panel.other_name.setEditText("")
    panel.other_button.click()
    assert "error: name must not be empty" in last_reply(window)
    panel.other_name.setEditText("ap_size")
    panel.other_value.setText("  ")
    panel.other_button.click()
    assert "error: value must not be empty" in last_reply(window)
    assert panel.reply_label.styleSheet() == ERROR_STYLE
    assert standin.requests == []


def test_banner_when_silent_and_recovery(qtbot, standin, open_window):
    standin.stack = np.zeros((32, 32), np.uint16)
    standin.status = {"state": "running"}
    window = open_window(standin.link_params)  # banner after 1 s of silence
    qtbot.waitUntil(lambda: window.last_status is not None, timeout=WAIT_MS)
    assert not window.banner.isVisible()
    standin.go_silent()
    qtbot.waitUntil(window.banner.isVisible, timeout=WAIT_MS)
    assert "not reachable" in window.banner.text()
    assert f":{standin.pub_port}" in window.banner.text()
    assert not window.daemon_reachable
    standin.status = {"state": "paused"}
    standin.come_back()
    qtbot.waitUntil(lambda: not window.banner.isVisible(), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: window.state_panel.labels["state"].text() == "paused",
                    timeout=WAIT_MS)
    assert window.daemon_reachable


def test_banner_when_nothing_is_there(qtbot, open_window, zmq_context):
    # Find free ports, and leave them closed: nobody answers there.
    probe = zmq_context.socket(zmq.REP)
    ports = [probe.bind_to_random_port("tcp://127.0.0.1") for _ in range(2)]
    probe.close(linger=0)
    params = LinkParams(publish_endpoint=f"tcp://127.0.0.1:{ports[0]}",
                        control_endpoint=f"tcp://127.0.0.1:{ports[1]}", control_timeout_s=0.5)
    window = open_window(params)
    qtbot.waitUntil(window.banner.isVisible, timeout=WAIT_MS)
    assert "No daemon at" in window.banner.text()
    window.control_panel.reset_button.click()
    qtbot.waitUntil(lambda: "reset: error: no answer from" in last_reply(window), timeout=WAIT_MS)


def test_the_daemons_parameters_fill_the_rows(qtbot, standin, open_window):
    standin.status = {"state": "running",
                      "params": {"buffer_size": 200, "stack_size": "50%", "window_frames": 0,
                                 "ap": {"size": 48, "step": 0}}}
    window = open_window(standin.link_params)
    panel = window.control_panel
    qtbot.waitUntil(lambda: bool(panel.params), timeout=WAIT_MS)
    assert panel.params == {"buffer_size": 200, "stack_size": "50%", "window_frames": 0,
                            "ap_size": 48, "ap_step": 0}
    texts = {name: row[1].text() for name, row in panel.rows.items() if not row[1].isHidden()}
    assert texts == {"buffer_size": "200", "stack_size": "50%", "window_frames": "0",
                     "ap_size": "48"}
    assert panel.rows["window_seconds"][1].isHidden()  # the daemon has no such parameter
    names = [panel.other_name.itemText(i) for i in range(panel.other_name.count())]
    assert names == ["ap_size", "ap_step", "buffer_size", "stack_size", "window_frames"]
    panel.other_name.textActivated.emit("ap_step")
    assert panel.other_value.text() == "0"


def test_a_request_the_daemon_would_refuse_is_not_sent(qtbot, standin, open_window):
    window = open_window(standin.link_params)
    window.send_request({"cmd": "set", "name": "x", "value": {"a": 1}})
    assert "set x={'a': 1}: error: request field 'value' must be" in last_reply(window)
    window.send_request({"cmd": "frobnicate"})
    assert "frobnicate: error: unknown command 'frobnicate'" in last_reply(window)
    window.control_panel.reset_button.click()
    qtbot.waitUntil(lambda: last_reply(window).startswith("reset: ok"), timeout=WAIT_MS)
    assert standin.requests == [{"cmd": "reset"}]
