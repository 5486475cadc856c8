"""The raw-frame panels and the daemon's diagnosis in the window (issue 16)."""

from __future__ import annotations

import numpy as np

from daemon import protocol
from viewer.raw_panel import SATURATION_WARN, clipping_text

#: Milliseconds any wait may take before the test fails.
WAIT_MS = 10_000


def test_clipping_text_warns_above_a_thousandth():
    assert clipping_text({"R": 0.0, "G": SATURATION_WARN, "B": 0.0}) == \
        ("clipped: R 0.00 %, G 0.10 %, B 0.00 %", False)
    text, warn = clipping_text({"L": 0.05})
    assert warn and text == "SATURATED: L 5.00 %"
    assert clipping_text(None) == ("clipped: –", False)
    assert clipping_text({"L": "x"}) == ("clipped: ", False)


def test_diagnosis_and_a_saturated_colour_preview_are_shown(qtbot, standin, open_window):
    standin.status = {"state": "running", "diagnosis": {
        "kind": "alignment", "fault": True,
        "text": "nothing to stack: no structure to align on in the last 300 frames"}}
    window = open_window(standin.link_params)
    qtbot.waitUntil(lambda: window.diagnosis.isVisible(), timeout=WAIT_MS)
    assert window.diagnosis.text().startswith("nothing to stack: no structure")
    assert "e65100" in window.diagnosis.styleSheet()  # the fault colour

    preview = np.zeros((40, 60, 3), np.uint16)
    preview[..., 0] = 4095
    meta = {"frame_width": 120, "frame_height": 80, "frame_layout": "RGGB",
            "decimation": 2, "quality": 0.5, "best_quality": 0.8, "received_fps": 25.0,
            "levels": {"full": 4095.0, "edges": np.linspace(0, 4095, 5).tolist(),
                       "hist": {"R": [0, 0, 0, 2400], "G": [2400, 0, 0, 0],
                                "B": [2400, 0, 0, 0]},
                       "clipped": {"R": 1.0, "G": 0.0, "B": 0.0}}}
    parts = protocol.encode_image(preview, kind="preview", seq=7, meta=meta, exposure=0.004)
    with qtbot.waitSignal(window.preview_shown, timeout=WAIT_MS):
        standin.send_raw([protocol.TOPIC_PREVIEW, *[bytes(p) for p in parts]])
    raw = window.raw_panel
    assert raw.levels.warning and raw.levels.clip_label.text().startswith("SATURATED: R 100")
    assert raw.focus.number.text() == "0.5" and raw.focus.best_label.text() == \
        "best 0.8 (now 62 %)"
    assert raw.view.info_label.text() == ("frame #7  120x80 RGGB, shown 1/2, 25.0 frames/s, "
                                          "exposure 4 ms, quality 0.5")
    # a red frame renders red
    shot = raw.view.graphics.viewport().grab().toImage()
    p = raw.view.graphics.mapFromScene(raw.view.view_box.mapViewToScene(
        raw.view.image_item.boundingRect().center()))
    colour = shot.pixelColor(p)
    assert colour.red() > 200 and colour.green() < 50 and colour.blue() < 50

    standin.status = {"state": "running", "diagnosis": None}
    qtbot.waitUntil(lambda: not window.diagnosis.isVisible(), timeout=WAIT_MS)
