"""The viewer against the real daemon, fed by the real replay source on a simulated capture.

The daemon (``daemon.service.StackingService`` around ``live_stack.live.LiveStacker``)
binds random loopback ports; a replay source pushes a small simulated lunar capture in a
loop; the viewer's window subscribes and controls it.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPointF

from daemon.cli import make_stacker
from daemon.config import build_config
from daemon.security import ClientCurve, KeyFiles, make_keys
from daemon.service import StackingService
from daemon.sources import FramePusher
from daemon.sources.replay import ReplayParams, replay
from live_stack.simulate import simulate_capture
from viewer.link import LinkParams

#: Milliseconds any wait may take before the test fails.
WAIT_MS = 20_000

#: Size and length of the simulated capture (small: the tests stay fast).
CAPTURE = {"width": 256, "height": 192, "frames": 120}

#: Frames per second the replay source plays at.
REPLAY_FPS = 60.0

#: Source name the replay pushes with.
SOURCE = "test-replay"


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("capture")
    simulate_capture("moon", out_dir=out, seed=3, **CAPTURE)
    return out / "video.ser"


class Daemon:
    """A real daemon on random loopback ports, and a replay source feeding it."""

    def __init__(self, output: Path, capture: Path) -> None:
        self.output = output
        self.capture = capture
        self.service: StackingService | None = None
        self.endpoints = None
        self._stop = threading.Event()
        self._source: threading.Thread | None = None
        self._curve: ClientCurve | None = None

    def start(self, endpoints: dict[str, str] | None = None, keys: KeyFiles | None = None) -> None:
        """Start the daemon (on the given endpoints, else on random ports) and the source.

        With ``keys``, the daemon requires CURVE and the source uses the client keys.
        """
        config = build_config({
            "endpoints": endpoints or {k: "tcp://127.0.0.1:*"
                                       for k in ("ingest", "publish", "control")},
            "service": {"publish_interval": 0.2, "status_interval": 0.2, "poll_timeout": 0.02},
            "output": {"directory": str(self.output), "save_interval": 0},
            "curve": {} if keys is None else {
                "server_secret_key": str(keys.server_secret),
                "authorized_clients": str(keys.authorized_clients)},
        })
        self._curve = None if keys is None else ClientCurve(str(keys.server_public),
                                                            str(keys.client_secret))
        self.service = StackingService(config, make_stacker(dict(config.live)))
        self.service.start()
        self.endpoints = self.service.endpoints
        self._stop.clear()
        self._source = threading.Thread(target=self._play, daemon=True)
        self._source.start()

    def _play(self) -> None:
        assert self.endpoints is not None
        with FramePusher(self.endpoints.ingest, source=SOURCE, stop=self._stop,
                         curve=self._curve) as pusher:
            replay(ReplayParams(self.capture, fps=REPLAY_FPS, loop=True), pusher,
                   stop=self._stop)

    def stop(self) -> None:
        self._stop.set()
        if self._source is not None:
            self._source.join()
            self._source = None
        if self.service is not None:
            self.service.stop()
            self.service = None

    @property
    def link_params(self) -> LinkParams:
        assert self.endpoints is not None
        return LinkParams(publish_endpoint=self.endpoints.publish,
                          control_endpoint=self.endpoints.control, control_timeout_s=5.0)


@pytest.fixture
def daemon(tmp_path, capture) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "out", capture)
    d.start()
    yield d
    d.stop()


def label(window, name: str) -> str:
    return window.state_panel.labels[name].text()


def counts(window) -> list[int]:
    """Received / processed / admitted, as the window shows them."""
    return [int(v) for v in label(window, "frames").split(" / ")]


def last_reply(window) -> str:
    return window.control_panel.reply_label.text()


def test_rendered_pixels_match_the_daemons_stack(qtbot, daemon, open_window):
    window = open_window(daemon.link_params)
    qtbot.waitUntil(lambda: window.stacks_shown > 0, timeout=WAIT_MS)
    view = window.stack_view
    stack = view.image
    # The stacker crops the stack to the area every frame covered.
    height, width = stack.shape
    assert stack.dtype == np.uint16
    assert CAPTURE["height"] * 0.8 < height <= CAPTURE["height"]
    assert CAPTURE["width"] * 0.8 < width <= CAPTURE["width"]
    assert stack.std() > 1000  # a lunar surface, not a flat field
    levels = view.levels()
    shot = view.graphics.viewport().grab().toImage()
    rng = np.random.default_rng(0)
    ys = rng.integers(2, height - 2, 200)
    xs = rng.integers(2, width - 2, 200)
    expected = np.clip((stack[ys, xs] - levels.low) / (levels.high - levels.low), 0, 1) * 255
    seen = []
    for y, x in zip(ys, xs, strict=True):
        p = view.image_to_widget(x + 0.5, y + 0.5)
        seen.append(shot.pixelColor(round(p.x()), round(p.y())).red())
    seen = np.array(seen, dtype=np.float64)
    assert np.corrcoef(seen, expected)[0, 1] > 0.98
    assert np.median(np.abs(seen - expected)) <= 4


def test_status_numbers_update(qtbot, daemon, open_window):
    window = open_window(daemon.link_params)
    qtbot.waitUntil(lambda: label(window, "frames").split(" / ")[0] not in ("–", "0"),
                    timeout=WAIT_MS)
    first = counts(window)
    qtbot.waitUntil(lambda: counts(window)[0] > first[0] + 20, timeout=WAIT_MS)
    assert counts(window)[1] > first[1]
    assert SOURCE in label(window, "sources")
    assert f"{CAPTURE['width']}x{CAPTURE['height']}" in label(window, "sources")
    rate = float(label(window, "rate_in").split()[0])
    assert 0.3 * REPLAY_FPS < rate < 2 * REPLAY_FPS
    assert label(window, "state").startswith("running, stack 1 of session")
    qtbot.waitUntil(lambda: label(window, "latency") != "–", timeout=WAIT_MS)
    # The quality graph got the frames' qualities.
    assert len(window.quality_panel.history) > 10


def test_reset_reaches_the_daemon_and_shows(qtbot, daemon, open_window):
    window = open_window(daemon.link_params)
    qtbot.waitUntil(lambda: window.stacks_shown > 0, timeout=WAIT_MS)
    assert "stack 1 of session" in label(window, "state")
    window.control_panel.reset_button.click()
    qtbot.waitUntil(lambda: last_reply(window).startswith("reset: ok"), timeout=WAIT_MS)
    assert "segment=2" in last_reply(window)
    # The daemon started a new stack, and the window says so.
    qtbot.waitUntil(lambda: "stack 2 of session" in label(window, "state"), timeout=WAIT_MS)
    assert daemon.service.status()["segment"] == 2
    shown = window.stacks_shown
    qtbot.waitUntil(lambda: window.stacks_shown > shown, timeout=WAIT_MS)


def test_pause_resume_and_save(qtbot, daemon, open_window):
    window = open_window(daemon.link_params)
    panel = window.control_panel
    qtbot.waitUntil(lambda: window.stacks_shown > 0, timeout=WAIT_MS)
    panel.pause_button.click()
    qtbot.waitUntil(lambda: label(window, "state").startswith("paused"), timeout=WAIT_MS)
    assert last_reply(window) == "pause: ok: state=paused"
    assert not panel.pause_button.isEnabled() and panel.resume_button.isEnabled()
    qtbot.waitUntil(lambda: "paused" in label(window, "dropped"), timeout=WAIT_MS)
    panel.resume_button.click()
    qtbot.waitUntil(lambda: label(window, "state").startswith("running"), timeout=WAIT_MS)
    panel.save_button.click()
    qtbot.waitUntil(lambda: last_reply(window).startswith("save: ok: path="), timeout=WAIT_MS)
    saved = Path(last_reply(window).split("path=", 1)[1].split(", number=")[0])
    assert saved.is_file() and saved.parent == daemon.output


def test_live_parameters_are_set_and_refusals_shown(qtbot, daemon, open_window):
    window = open_window(daemon.link_params)
    panel = window.control_panel
    qtbot.waitUntil(lambda: bool(panel.params), timeout=WAIT_MS)
    shown = [name for name, row in panel.rows.items() if not row[1].isHidden()]
    assert shown == list(panel.rows), f"parameters the daemon lacks: {sorted(panel.params)}"
    assert panel.rows["ap_size"][1].text() == str(daemon.service.status()["params"]["ap"]["size"])
    panel.rows["buffer_size"][1].setText("150")
    panel.rows["buffer_size"][2].click()
    qtbot.waitUntil(lambda: last_reply(window).startswith("set buffer_size=150: ok"),
                    timeout=WAIT_MS)
    assert daemon.service.status()["params"]["buffer_size"] == 150
    qtbot.waitUntil(lambda: "/ 150" in label(window, "buffer") or
                    panel.rows["buffer_size"][1].text() == "150", timeout=WAIT_MS)
    panel.rows["ap_size"][1].setText("15")  # must be even
    panel.rows["ap_size"][2].click()
    qtbot.waitUntil(lambda: "set ap_size=15: error:" in last_reply(window), timeout=WAIT_MS)
    assert "ap_size" in last_reply(window).split("error:", 1)[1]
    panel.other_name.setEditText("no_such_parameter")
    panel.other_value.setText("1")
    panel.other_button.click()
    qtbot.waitUntil(lambda: "set no_such_parameter=1: error:" in last_reply(window),
                    timeout=WAIT_MS)


def test_banner_when_the_daemon_stops_and_recovery(qtbot, daemon, open_window):
    window = open_window(daemon.link_params)  # banner after 1 s without status
    qtbot.waitUntil(lambda: window.stacks_shown > 0, timeout=WAIT_MS)
    assert not window.banner.isVisible()
    endpoints = daemon.endpoints
    daemon.stop()
    qtbot.waitUntil(window.banner.isVisible, timeout=WAIT_MS)
    assert "not reachable" in window.banner.text()
    window.control_panel.reset_button.click()  # nobody answers: an error, not a hang
    qtbot.waitUntil(lambda: "reset: error: no answer" in last_reply(window), timeout=WAIT_MS)
    # The daemon comes back on the same endpoints: the viewer reconnects by itself.
    daemon.start({"ingest": endpoints.ingest, "publish": endpoints.publish,
                  "control": endpoints.control})
    qtbot.waitUntil(lambda: not window.banner.isVisible(), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: daemon.service.session in label(window, "state"), timeout=WAIT_MS)
    shown = window.stacks_shown
    qtbot.waitUntil(lambda: window.stacks_shown > shown, timeout=WAIT_MS)
    window.control_panel.save_button.click()
    qtbot.waitUntil(lambda: last_reply(window).startswith("save: ok"), timeout=WAIT_MS)


def test_curve_keys_give_access_and_strangers_get_nothing(qtbot, tmp_path, capture, open_window):
    keys = make_keys(tmp_path / "keys")
    stranger = make_keys(tmp_path / "stranger")  # a valid key pair the daemon does not know
    daemon = Daemon(tmp_path / "out", capture)
    daemon.start(keys=keys)
    try:
        base = daemon.link_params
        window = open_window(dataclasses.replace(
            base, server_key=keys.server_public, client_key=keys.client_secret))
        outsider = open_window(dataclasses.replace(
            base, server_key=keys.server_public, client_key=stranger.client_secret,
            control_timeout_s=1.0))
        qtbot.waitUntil(lambda: window.stacks_shown > 0, timeout=WAIT_MS)
        assert label(window, "state").endswith(", CURVE")
        window.control_panel.reset_button.click()
        qtbot.waitUntil(lambda: last_reply(window).startswith("reset: ok"), timeout=WAIT_MS)
        outsider.control_panel.reset_button.click()
        qtbot.waitUntil(lambda: last_reply(outsider).startswith("reset: error: "),
                        timeout=WAIT_MS)
        qtbot.waitUntil(outsider.banner.isVisible, timeout=WAIT_MS)
        assert outsider.stacks_shown == 0 and outsider.last_status is None
        assert daemon.service.status()["resets"] == 1  # only the authorised reset
    finally:
        daemon.stop()


def test_the_control_endpoint_the_daemon_announces_is_used(qtbot, daemon, open_window):
    """Without --control the viewer guesses port 5557; the daemon's status corrects it."""
    from viewer.cli import control_endpoint_for

    assert daemon.endpoints is not None
    guess = control_endpoint_for(daemon.endpoints.publish)
    assert guess != daemon.endpoints.control  # the daemon's control port is a random one
    params = dataclasses.replace(daemon.link_params, control_endpoint=guess,
                                 follow_announced_control=True)
    window = open_window(params)
    qtbot.waitUntil(lambda: window.link.control_endpoint == daemon.endpoints.control,
                    timeout=WAIT_MS)
    window.control_panel.pause_button.click()
    qtbot.waitUntil(lambda: label(window, "state").startswith("paused"), timeout=WAIT_MS)
    assert last_reply(window) == "pause: ok: state=paused"


def test_reachable_control_uses_the_publishers_host():
    from viewer.link import reachable_control

    assert reachable_control("tcp://scope.local:5556", "tcp://0.0.0.0:6001") == \
        "tcp://scope.local:6001"
    assert reachable_control("tcp://10.0.0.5:5556", "tcp://127.0.0.1:6001") == \
        "tcp://10.0.0.5:6001"
    assert reachable_control("tcp://[::1]:5556", "tcp://[::]:6001") == "tcp://[::1]:6001"
    assert reachable_control("tcp://h:1", "ipc:///run/ls/control") == "ipc:///run/ls/control"


def test_raw_frames_focus_and_histogram_are_shown(qtbot, daemon, open_window, capture):
    """The live raw view beside the stack: the newest frame's pixels, rendered."""
    from live_stack.io import open_source

    window = open_window(daemon.link_params)
    raw = window.raw_panel
    qtbot.waitUntil(lambda: raw.view.shown >= 3 and raw.focus.best is not None,
                    timeout=WAIT_MS)
    # everything below is read without letting the event loop run (no newer preview)
    seq = raw.view.header["seq"]
    image = raw.view.image
    index = raw.view.header["meta"]["frame_meta"]["frame"]  # replay's index in the capture
    with open_source(capture) as src:
        frame = np.array(src[index])
    np.testing.assert_array_equal(image, frame)  # small enough to come whole
    assert f"frame #{seq}  {CAPTURE['width']}x{CAPTURE['height']} mono" in \
        raw.view.info_label.text()
    assert "frames/s" in raw.view.info_label.text()
    # rendered pixels: the grey levels on screen follow the frame's
    low, high = raw.view.image_item.getLevels()
    shot = raw.view.graphics.viewport().grab().toImage()
    rng = np.random.default_rng(1)
    ys = rng.integers(2, image.shape[0] - 2, 200)
    xs = rng.integers(2, image.shape[1] - 2, 200)
    expected = np.clip((image[ys, xs] - low) / (high - low), 0, 1) * 255
    seen = []
    for y, x in zip(ys, xs, strict=True):
        p = raw.view.graphics.mapFromScene(
            raw.view.view_box.mapViewToScene(QPointF(x + 0.5, y + 0.5))).toPointF()
        seen.append(shot.pixelColor(round(p.x()), round(p.y())).red())
    seen = np.array(seen, dtype=np.float64)
    assert np.corrcoef(seen, expected)[0, 1] > 0.95
    # the focus aid: the big number is the newest quality, the best line above it
    q = float(raw.focus.number.text())
    assert 0 < q <= raw.focus.best * 1.001
    assert raw.focus.best_line.value() == pytest.approx(raw.focus.best)
    assert raw.focus.curve.getData()[1].size >= 2
    # the histogram of the raw frames, and the share of clipped pixels of this frame
    x, y = raw.levels.curves["L"].getData()
    assert x.size == 65 and np.isfinite(y).all()
    share = np.mean(frame >= 255)
    assert raw.levels.clip_label.text() == \
        f"{'SATURATED' if share > 0.001 else 'clipped'}: L {100 * share:.2f} %"


def test_stack_history_is_listed_and_a_saved_stack_reopened(qtbot, daemon, open_window):
    from daemon import protocol
    from live_stack.io.images import read_image

    window = open_window(daemon.link_params)
    history = window.history_panel
    qtbot.waitUntil(lambda: window.stacks_shown > 0, timeout=WAIT_MS)
    for n in (1, 2):
        window.control_panel.save_button.click()
        qtbot.waitUntil(lambda n=n: history.list.count() == n, timeout=WAIT_MS)
    first = history.records[0]
    assert first["number"] == 1 and first["reason"] == "request"
    assert history.list.item(0).text().startswith("0001  ") and "request" in \
        history.list.item(0).text()
    history.list.setCurrentRow(0)
    history.open_button.click()
    qtbot.waitUntil(lambda: history.showing == first["file"], timeout=WAIT_MS)
    saved, _ = read_image(daemon.output / first["file"])
    expected = protocol.stack_to_wire(saved)
    np.testing.assert_array_equal(window.stack_view.image, expected)
    assert window.stack_view.info_label.text().startswith(f"saved {first['file']}")
    # live stacks keep coming but do not replace the saved one on screen
    seen = window.stacks_shown
    qtbot.waitUntil(lambda: window.stacks_shown > seen + 1, timeout=WAIT_MS)
    np.testing.assert_array_equal(window.stack_view.image, expected)
    history.live_button.click()
    assert window.stack_view.info_label.text().startswith("stack #")
    # a file the index does not list is refused by name
    window.send_request({"cmd": "load", "file": "../../etc/passwd"})
    qtbot.waitUntil(lambda: "is not in the stack history" in history.info_label.text(),
                    timeout=WAIT_MS)


def test_files_a_folder_source_skipped_are_shown_per_source(qtbot, daemon, open_window,
                                                          capture, tmp_path):
    """A real folder source beside the replay: its unreadable files show in its line."""
    import cv2

    from daemon.sources.folder import FolderParams, watch_folder
    from live_stack.io import open_source

    watched = tmp_path / "watched"
    watched.mkdir()
    (watched / "a.png").write_bytes(b"")  # a camera driver's empty file
    (watched / "b.png").write_bytes(b"")
    with open_source(capture) as src:
        assert cv2.imwrite(str(watched / "c.png"), np.array(src[0]))  # sent after a and b
    stop = threading.Event()
    watchers = []

    def run() -> None:
        params = FolderParams(watched, settle=0.1, state_file=tmp_path / "state.json")
        with FramePusher(daemon.endpoints.ingest, source="test-folder", stop=stop) as pusher:
            watch_folder(params, pusher, stop, watcher_ready=watchers.append)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        window = open_window(daemon.link_params)
        qtbot.waitUntil(lambda: "test-folder" in label(window, "sources"), timeout=WAIT_MS)
        line = next(ln for ln in label(window, "sources").splitlines()
                    if ln.startswith("test-folder"))
        assert line.startswith(f"test-folder: {CAPTURE['width']}x{CAPTURE['height']} uint8 "
                               "mono, 1 frames, 2 files skipped (unreadable)")
        replay_line = next(ln for ln in label(window, "sources").splitlines()
                           if ln.startswith(SOURCE))
        assert "skipped" not in replay_line
        # rendered: the label is on screen and its pixels carry the text
        lbl = window.state_panel.labels["sources"]
        assert lbl.isVisible() and lbl.width() > 0
        shot = lbl.grab().toImage()
        colours = {shot.pixel(x, y) for x in range(0, shot.width(), 2)
                   for y in range(0, shot.height(), 2)}
        assert len(colours) > 2  # glyphs drawn, not an empty label
    finally:
        stop.set()
        for w in watchers:
            w.wake()
        thread.join(WAIT_MS / 1000)
    assert not thread.is_alive()


def test_nothing_is_sent_after_the_window_closes(qtbot, daemon, open_window):
    """What the network thread queued before the window closed is dropped: a status
    applied then made the history panel ask for the list on the stopped link (a
    RuntimeError in Qt's event loop, seen once at a test's teardown)."""
    window = open_window(daemon.link_params)
    qtbot.waitUntil(lambda: window.stacks_shown > 0, timeout=WAIT_MS)
    window.close()
    assert window.link._pipe is None  # the link is stopped
    shown = window.stacks_shown
    window.link.arrived.emit()  # a wake-up queued before the close
    window.history_panel.show_status({"output": {"saves": 12345}})  # asks for the list
    window.control_panel.save_button.click()
    qtbot.wait(50)
    assert window.stacks_shown == shown
