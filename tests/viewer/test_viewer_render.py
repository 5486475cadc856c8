"""A received stack is drawn: the pixels on screen match the stack (stand-in publisher)."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtGui import QColor, QImage

from daemon import protocol
from viewer.image_panel import Levels

#: Milliseconds any wait may take before the test fails.
WAIT_MS = 10_000

H, W = 96, 128
BACKGROUND, BRIGHT = 1000, 50000
#: The bright square: rows 20..39, columns 60..89.
SQUARE = (slice(20, 40), slice(60, 90))


def square_stack(layout: str) -> np.ndarray:
    if layout == "mono":
        image = np.full((H, W), BACKGROUND, np.uint16)
        image[SQUARE] = BRIGHT
    else:  # a red square on a dark grey background
        image = np.full((H, W, 3), BACKGROUND, np.uint16)
        image[SQUARE + (0,)] = BRIGHT
    return image


def screen(window) -> QImage:
    return window.stack_view.graphics.viewport().grab().toImage()


def pixel(window, shot: QImage, x: float, y: float) -> QColor:
    """Colour on screen of the stack's point (x, y) (column, row)."""
    p = window.stack_view.image_to_widget(x, y)
    return shot.pixelColor(round(p.x()), round(p.y()))


def reddest(window, shot: QImage, x: float, y: float) -> QColor:
    """The reddest screen pixel within one pixel of the stack's point (x, y): a cosmetic
    line one pixel wide lands on either side of a point between two screen pixels."""
    p = window.stack_view.image_to_widget(x, y)
    near = [shot.pixelColor(round(p.x()) + dx, round(p.y()) + dy)
            for dx in (-1, 0, 1) for dy in (-1, 0, 1)]
    return max(near, key=lambda c: c.red())


def wait_for_stack(qtbot, window) -> None:
    qtbot.waitUntil(lambda: window.stacks_shown > 0, timeout=WAIT_MS)


@pytest.mark.parametrize("layout", ["mono", "rgb"])
def test_square_is_drawn_where_it_is_in_the_stack(qtbot, standin, open_window, layout):
    standin.stack = square_stack(layout)
    window = open_window(standin.link_params)
    wait_for_stack(qtbot, window)
    shot = screen(window)
    inside = pixel(window, shot, 75, 30)
    # Auto levels stretch background..square to black..white.
    if layout == "mono":
        assert inside.red() > 230 and inside.green() > 230 and inside.blue() > 230
    else:
        assert inside.red() > 230 and inside.green() < 25 and inside.blue() < 25
    for x, y in [(10, 10), (55, 30), (95, 30), (75, 15), (75, 45), (120, 90)]:
        outside = pixel(window, shot, x, y)
        assert max(outside.red(), outside.green(), outside.blue()) < 25, (x, y)
    # The stack's corners are on screen: the view fits the whole stack.
    size = window.stack_view.graphics.viewport().size()
    for x, y in [(0.5, 0.5), (W - 0.5, H - 0.5)]:
        p = window.stack_view.image_to_widget(x, y)
        assert 0 <= p.x() < size.width() and 0 <= p.y() < size.height()


def test_gradient_follows_manual_levels(qtbot, standin, open_window):
    ramp = np.linspace(0, 65535, W).round().astype(np.uint16)
    levels = ramp.astype(np.float64)
    standin.stack = np.tile(ramp, (H, 1))
    window = open_window(standin.link_params)
    wait_for_stack(qtbot, window)
    window.stack_view.set_levels(Levels(0, 65535))
    assert not window.stack_view.auto_levels_box.isChecked()
    seen = window.stacks_shown
    qtbot.waitUntil(lambda: window.stacks_shown > seen, timeout=WAIT_MS)  # a new stack came
    assert window.stack_view.levels() == Levels(0, 65535)  # the manual levels stayed
    shot = screen(window)
    for x in (8, 32, 64, 96, 120):
        expected = 255 * levels[x] / 65535
        assert abs(pixel(window, shot, x + 0.5, H / 2).red() - expected) <= 12, x
    # Narrower manual levels: the middle of the ramp saturates to white.
    window.stack_view.set_levels(Levels(0, 32768))
    shot = screen(window)
    assert pixel(window, shot, 100.5, H / 2).red() > 245
    assert abs(pixel(window, shot, 32.5, H / 2).red() - 255 * levels[32] / 32768) <= 12


def test_auto_levels_follow_the_stack(qtbot, standin, open_window):
    standin.stack = square_stack("mono")
    window = open_window(standin.link_params)
    wait_for_stack(qtbot, window)
    assert window.stack_view.levels() == Levels(BACKGROUND, BRIGHT)
    dim = square_stack("mono") // 10
    standin.stack = dim
    qtbot.waitUntil(lambda: window.stack_view.levels() == Levels(BACKGROUND // 10, BRIGHT // 10),
                    timeout=WAIT_MS)
    assert pixel(window, screen(window), 75, 30).red() > 230


def test_ap_grid_is_drawn_when_toggled(qtbot, standin, open_window):
    standin.stack = np.full((H, W), BACKGROUND, np.uint16)
    standin.meta = {"stats": {}, "ap_centres": [[48, 64]], "ap_size": 32}
    window = open_window(standin.link_params)
    wait_for_stack(qtbot, window)
    view = window.stack_view
    # The box spans x 48.5..80.5, y 32.5..64.5 (centre of pixel (48, 64), side 32).
    edge, centre = (48.5, 48.5), (64.5, 48.5)
    before = screen(window)
    assert reddest(window, before, *edge).red() < 25
    view.grid_box.setChecked(True)
    shot = screen(window)
    colour = reddest(window, shot, *edge)
    # orange
    assert colour.red() > 150 and 90 < colour.green() < colour.red() and colour.blue() < 60
    assert reddest(window, shot, *centre).red() < 25  # only the outline is drawn
    view.grid_box.setChecked(False)
    assert reddest(window, screen(window), *edge).red() < 25


def test_stale_stacks_are_skipped_not_queued(qtbot, standin, open_window):
    """A burst of stacks while the GUI is busy is shown as its newest stack only."""
    standin.timer.stop()
    standin.stack = square_stack("mono")
    window = open_window(standin.link_params)
    standin.status = {"state": "running"}
    standin.timer.start()
    wait_for_stack(qtbot, window)
    standin.timer.stop()
    shown = window.stacks_shown
    # Publish a burst without letting the GUI run, then let it catch up once.
    burst = 20
    for _ in range(burst):
        standin.publish()
    last = standin.seq
    qtbot.waitUntil(lambda: window.stack_view.info_label.text().startswith(f"stack #{last} "),
                    timeout=WAIT_MS)
    assert window.stacks_shown - shown < burst
    assert window.stale_stacks > 0


def test_malformed_messages_are_counted_not_fatal(qtbot, standin, open_window):
    standin.stack = square_stack("mono")
    standin.status = {"state": "running"}
    window = open_window(standin.link_params)
    wait_for_stack(qtbot, window)
    header, pixels = protocol_parts()
    standin.send_raw([b"stack", header, pixels[:-2]])  # short pixel buffer
    standin.send_raw([b"status", b"\xc1"])  # not msgpack
    qtbot.waitUntil(lambda: window.bad_messages >= 2, timeout=WAIT_MS)
    text = window.state_panel.labels["link"].text()
    assert "bad messages" in text
    shown = window.stacks_shown
    qtbot.waitUntil(lambda: window.stacks_shown > shown, timeout=WAIT_MS)  # still receiving


def protocol_parts() -> tuple[bytes, bytes]:
    header, pixels = protocol.encode_image(np.zeros((16, 16), np.uint16), kind="stack")
    return bytes(header), bytes(pixels)


def test_dragging_the_levels_turns_auto_off_and_sticks(qtbot, standin, open_window):
    standin.stack = square_stack("mono")
    window = open_window(standin.link_params)
    wait_for_stack(qtbot, window)
    view = window.stack_view
    view.histogram.region.setRegion((0, 2 * BRIGHT))  # what a drag of the region does
    assert not view.auto_levels_box.isChecked()
    assert view.levels() == Levels(0, 2 * BRIGHT)
    seen = window.stacks_shown
    qtbot.waitUntil(lambda: window.stacks_shown > seen + 1, timeout=WAIT_MS)
    assert view.levels() == Levels(0, 2 * BRIGHT)
    # The square is now mid-grey.
    assert abs(pixel(window, screen(window), 75, 30).red() - 255 * BRIGHT / (2 * BRIGHT)) <= 12
    view.auto_levels_box.setChecked(True)
    assert view.levels() == Levels(BACKGROUND, BRIGHT)


def test_zoom_is_kept_across_stacks_until_fit(qtbot, standin, open_window):
    standin.stack = square_stack("mono")
    window = open_window(standin.link_params)
    wait_for_stack(qtbot, window)
    box = window.stack_view.view_box
    full = box.viewRect()
    box.scaleBy((0.25, 0.25), center=(75, 30))  # zoom in on the square
    zoomed = box.viewRect()
    assert zoomed.width() < full.width() / 3
    seen = window.stacks_shown
    qtbot.waitUntil(lambda: window.stacks_shown > seen + 1, timeout=WAIT_MS)
    assert box.viewRect() == zoomed
    assert pixel(window, screen(window), 75, 30).red() > 230  # the square fills the view
    window.stack_view.fit_button.click()
    fitted = box.viewRect()
    assert fitted.contains(0, 0) and fitted.contains(W - 1, H - 1)
    # A stack of another size is fitted by itself.
    standin.stack = np.zeros((2 * H, 2 * W), np.uint16)
    qtbot.waitUntil(lambda: window.stack_view.image.shape == (2 * H, 2 * W), timeout=WAIT_MS)
    assert box.viewRect().contains(2 * W - 1, 2 * H - 1)


def test_quality_graph_and_histogram(qtbot, standin, open_window):
    """Frame qualities are drawn relative to the best one, like the histogram."""
    standin.status = {
        "state": "running",
        "recent": {"index": [10, 11, 12, 13], "quality": [0.002, 0.001, 0.0015, 0.0005],
                   "admitted": [True, False, True, False]},
        "quality": {"hist": [0, 1, 3, 2], "edges": [0.0, 0.25, 0.5, 0.75, 1.0],
                    "threshold": 0.6, "best": 0.002},
    }
    window = open_window(standin.link_params)
    panel = window.quality_panel
    qtbot.waitUntil(lambda: panel.best == 0.002, timeout=WAIT_MS)
    x, y = panel.admitted_item.getData()
    np.testing.assert_allclose(x, [-3, -1])
    np.testing.assert_allclose(y, [1.0, 0.75])
    x, y = panel.rejected_item.getData()
    np.testing.assert_allclose(x, [-2, 0])
    np.testing.assert_allclose(y, [0.5, 0.25])
    assert panel.time_threshold.value() == 0.6 and panel.hist_threshold.value() == 0.6
    assert panel.time_threshold.isVisible()
    edges, counts = panel.hist_item.getData()
    np.testing.assert_allclose(counts, [0, 1, 3, 2])
    # Later statuses overlap the earlier ones: each frame is drawn once.
    standin.status = dict(standin.status, recent={
        "index": [12, 13, 14], "quality": [0.0015, 0.0005, 0.001],
        "admitted": [True, False, False]})
    qtbot.waitUntil(lambda: len(panel.history) == 5, timeout=WAIT_MS)
    assert len(panel.rejected_item.getData()[0]) == 3


def test_a_stack_sent_again_is_not_drawn_again(qtbot, standin, open_window):
    standin.stack = square_stack("mono")
    standin.status = {"state": "running"}
    window = open_window(standin.link_params)
    wait_for_stack(qtbot, window)
    standin.timer.stop()
    meta = {"stats": {}, "ap_centres": [], "ap_size": 0, "session": "s1", "segment": 1}

    def send(seq: int, session: str = "s1") -> None:
        parts = protocol.encode_image(square_stack("mono"), kind="stack", seq=seq,
                                      meta=dict(meta, session=session))
        standin.send_raw([protocol.TOPIC_STACK, *parts])

    send(500)
    qtbot.waitUntil(lambda: window.stack_view.info_label.text().startswith("stack #500 "),
                    timeout=WAIT_MS)
    shown = window.stacks_shown
    send(500)  # what a late subscriber makes the daemon do
    send(500)
    standin.stack = None
    standin.publish()  # a status only, so that we know the repeats have been taken
    seen = window.last_status
    qtbot.waitUntil(lambda: window.last_status is not seen, timeout=WAIT_MS)
    assert window.stacks_shown == shown
    send(500, session="s2")  # a restarted daemon counts from the start again
    qtbot.waitUntil(lambda: window.stacks_shown == shown + 1, timeout=WAIT_MS)
