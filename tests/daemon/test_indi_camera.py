"""Camera control from the viewer, through the daemon, to the INDI source (issue 16).

indiserver + CCD simulator -> ``live-stack source indi`` (a real process) -> the real
daemon, which relays the viewer's camera requests to the source; the offscreen viewer
sets the exposure and the simulator is read back through INDI (``indi_getprop``).
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from conftest_indi import (  # noqa: E402
    SIM_DEVICE,
    IndiServer,
    requires_indi,
)

from daemon.client import control_request  # noqa: E402
from live_stack.live import LiveParams, LiveStacker  # noqa: E402

pytestmark = [pytest.mark.indi, requires_indi]

#: Milliseconds the viewer may wait for the camera, an answer or a read-back.
WAIT_MS = 60_000
#: Binning of the simulator's frames (keeps the stacker quick).
BINNING = 4


def test_the_viewers_camera_settings_reach_the_simulator(
        qtbot, indi_server: IndiServer, start_source: Any,
        make_service: Callable[..., Any]) -> None:
    from viewer.link import DaemonLink, LinkParams
    from viewer.window import MainWindow, WindowParams

    indi_server.configure()
    svc = make_service(LiveStacker(LiveParams(warmup=5, buffer_size=20)))
    start_source("--port", str(indi_server.port), "--device", SIM_DEVICE,
                 "--to", svc.endpoints.ingest, "--control", svc.endpoints.control,
                 "--mode", "stream", "--exposure", "0.001", "--binning", str(BINNING))
    link = DaemonLink(LinkParams(publish_endpoint=svc.endpoints.publish,
                                 control_endpoint=svc.endpoints.control,
                                 control_timeout_s=20.0))
    window = MainWindow(link, WindowParams(stale_after_s=5.0, check_interval_s=0.2))
    qtbot.addWidget(window)
    window.resize(1500, 1000)
    window.show()
    link.start()
    try:
        panel = window.camera_panel
        qtbot.waitUntil(panel.isVisible, timeout=WAIT_MS)
        assert SIM_DEVICE in panel.source_label.text() and "stream" in panel.source_label.text()
        assert panel.rows["exposure"][0].text().startswith("now 1 ms")

        # the exposure: typed in ms, sent in s, set on the camera, read back through INDI
        now, edit, button = panel.rows["exposure"]
        edit.setText("2.5")
        button.click()
        qtbot.waitUntil(lambda: panel.reply_label.text() == "camera: set exposure=0.0025",
                        timeout=WAIT_MS)
        read_back = float(indi_server.getprop(
            f"{SIM_DEVICE}.STREAMING_EXPOSURE.STREAMING_EXPOSURE_VALUE"))
        assert read_back == pytest.approx(0.0025)
        assert now.text().startswith("now 2.5 ms")

        # a value beyond the camera's range is refused, and says why
        _, gain_edit, gain_button = panel.rows["gain"]
        gain_edit.setText("1e6")
        gain_button.click()
        qtbot.waitUntil(lambda: "REFUSED gain" in panel.reply_label.text(), timeout=WAIT_MS)
        assert "outside the camera's" in panel.reply_label.text()
        assert "c62828" in panel.reply_label.styleSheet()
        assert float(indi_server.getprop(f"{SIM_DEVICE}.CCD_GAIN.GAIN")) < 1e6

        # a region of interest: the capture is set up again, frames come at the new size
        _, roi_edit, roi_button = panel.rows["roi"]
        roi_edit.setText("0 0 640 480")
        roi_button.click()
        qtbot.waitUntil(lambda: panel.reply_label.text() == "camera: set roi=[0, 0, 640, 480]",
                        timeout=WAIT_MS)
        qtbot.waitUntil(lambda: int(float(indi_server.getprop(
            f"{SIM_DEVICE}.CCD_FRAME.WIDTH"))) == 640, timeout=WAIT_MS)

        def sizes() -> set[tuple[int, int]]:
            st = control_request(svc.endpoints.control, "status", timeout=10.0)["result"]
            return {(s["width"], s["height"]) for k, s in st["sources"].items()
                    if k.startswith("indi:")}

        qtbot.waitUntil(lambda: sizes() == {(640 // BINNING, 480 // BINNING)}, timeout=WAIT_MS)
        # the same from a shell: ctl camera SETTING VALUE, readable answer
        import subprocess
        import sys

        r = subprocess.run([sys.executable, "-m", "live_stack.cli", "ctl", "--control",
                            svc.endpoints.control, "--timeout", "20", "camera", "exposure",
                            "0.004"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip().endswith("set exposure = 0.004")
        assert float(indi_server.getprop(
            f"{SIM_DEVICE}.STREAMING_EXPOSURE.STREAMING_EXPOSURE_VALUE")) == pytest.approx(0.004)
        r = subprocess.run([sys.executable, "-m", "live_stack.cli", "ctl", "--control",
                            svc.endpoints.control, "--timeout", "20", "camera", "binning",
                            "0"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "REFUSED binning: binning 0 is outside" in r.stdout
    finally:
        window.close()
        link.stop()


def test_a_camera_request_without_a_camera_source_is_explained(
        make_service: Callable[..., Any], standin_cls: type) -> None:
    svc = make_service(standin_cls())
    reply = control_request(svc.endpoints.control, "camera", settings={"exposure": 0.01},
                            timeout=10.0)
    assert not reply["ok"] and "no source that owns a camera" in reply["error"]
    # the daemon checks what it is sent (the client library checks before sending)
    import zmq

    from daemon import protocol

    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    try:
        req.connect(svc.endpoints.control)
        req.send(protocol.pack({"cmd": "camera", "settings": {"focus": 3}}))
        assert req.poll(10_000)
        reply = protocol.unpack(req.recv())
    finally:
        req.close()
        ctx.term()
    assert not reply["ok"] and "unknown camera setting 'focus'" in reply["error"]
