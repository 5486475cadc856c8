"""``live-stack view``: the screenshot mode, bad arguments, CURVE keys.

Runs that start the event loop go through a real ``live-stack view`` process: the
command's own ``QApplication.exec()`` is then exercised exactly as a user runs it.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import zmq
import zmq.auth
from PySide6.QtCore import QTimer
from PySide6.QtGui import QImage

from daemon import protocol
from daemon.security import configure_server, make_keys, start_authenticator
from viewer.cli import main
from viewer.link import DaemonLink, LinkParams, key_files_in

#: Milliseconds any wait may take before the test fails.
WAIT_MS = 10_000

#: Milliseconds a run of ``live-stack view`` may take (start-up included).
RUN_MS = 60_000


def standin_args(standin) -> list[str]:
    p = standin.link_params
    return [p.publish_endpoint, "--control", p.control_endpoint]


def free_port(context: zmq.Context) -> int:
    probe = context.socket(zmq.REP)
    port = probe.bind_to_random_port("tcp://127.0.0.1")
    probe.close(linger=0)
    return port


def rgb_array(image: QImage) -> np.ndarray:
    """The pixels of ``image`` as an (H, W, 3) uint8 array."""
    image = image.convertToFormat(QImage.Format.Format_RGB888)
    rows = np.frombuffer(image.constBits(), np.uint8).reshape(image.height(), -1)
    return rows[:, : image.width() * 3].reshape(image.height(), image.width(), 3).copy()


def run_view(qtbot, args: list[str]) -> subprocess.CompletedProcess:
    """Run ``live-stack view ARGS`` in its own process, keeping this event loop running
    (the stand-in publishes from it)."""
    with subprocess.Popen([sys.executable, "-m", "live_stack.cli", "view", *args],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            qtbot.waitUntil(lambda: proc.poll() is not None, timeout=RUN_MS)
        finally:
            if proc.poll() is None:
                proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_screenshot_is_saved_once_a_stack_arrives(qtbot, standin, tmp_path):
    stack = np.full((90, 160), 2000, np.uint16)
    stack[30:60, 100:140] = 60000  # a bright block right of centre
    standin.stack = stack
    standin.status = {"state": "running", "frames": {"received": 77, "processed": 70,
                                                     "admitted": 20}}
    out = tmp_path / "view.png"
    standin.meta = {"stats": {}, "ap_centres": [[45, 120]], "ap_size": 20}
    run = run_view(qtbot, [*standin_args(standin), "--screenshot", str(out),
                           "--size", "1300x900", "--timeout", "20", "--ap-grid"])
    assert run.returncode == 0, run.stderr
    assert f"saved {out} (1300x900)" in run.stdout
    rgb = rgb_array(QImage(str(out)))
    assert rgb.shape == (900, 1300, 3)
    # The stack is in the picture: near-white and near-black pixels in the image area
    # (the window itself is grey).
    area = rgb[40:500, :800].astype(np.int32)
    assert area.max() >= 250 and area.min() <= 5
    # --ap-grid: the orange AP box is drawn.
    r, g, b = area[..., 0], area[..., 1], area[..., 2]
    assert np.count_nonzero((r > 150) & (g > 90) & (g < r) & (b < 60)) > 50


def test_screenshot_gives_up_without_a_stack(qtbot, zmq_context, tmp_path):
    port = free_port(zmq_context)
    out = tmp_path / "view.png"
    run = run_view(qtbot, [f"tcp://127.0.0.1:{port}", "--screenshot", str(out),
                           "--timeout", "0.5"])
    assert run.returncode == 1
    assert f"no stack arrived from tcp://127.0.0.1:{port} within 0.5 s" in run.stderr
    assert not out.exists()


def test_screenshot_to_an_unwritable_place_fails(qtbot, standin, tmp_path):
    standin.stack = np.zeros((16, 16), np.uint16)
    standin.status = {"state": "running"}
    out = tmp_path / "missing-folder" / "view.png"
    run = run_view(qtbot, [*standin_args(standin), "--screenshot", str(out), "--timeout", "20"])
    assert run.returncode == 1
    assert f"could not write the screenshot to {out}" in run.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--keys", "/nonexistent/keys"], "keys folder /nonexistent/keys does not exist"),
        (["--server-key", "s.key"], "--server-key and --client-key must be given together"),
        (["--keys", ".", "--client-key", "c"], "either --keys or --server-key/--client-key"),
        (["not-an-endpoint"], "publish_endpoint must be a ZeroMQ endpoint"),
        (["tcp://127.0.0.1:notaport"], "cannot connect to tcp://127.0.0.1:notaport"),
        (["--screenshot", "shot"], "--screenshot: path must be an image file name"),
    ],
)
def test_bad_arguments_are_refused_with_a_message(qapp, args, message, capsys):
    assert main(args) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--size", "big"], ["--timeout", "-1"], ["--bogus"]])
def test_malformed_options_are_usage_errors(args):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2


class CurvePublisher:
    """A CURVE PUB server set up with the daemon's own security functions."""

    def __init__(self, context: zmq.Context, keys_dir) -> None:
        public, secret = zmq.auth.load_certificate(keys_dir / "server.key_secret")
        self.auth = start_authenticator(context, keys_dir / "authorized_clients")
        self.pub = context.socket(zmq.PUB)
        self.pub.linger = 0
        configure_server(self.pub, public, secret)
        self.port = self.pub.bind_to_random_port("tcp://127.0.0.1")

    def publish(self) -> None:
        stack = np.full((16, 16), 1234, np.uint16)
        parts = protocol.encode_image(stack, kind="stack", seq=1)
        self.pub.send_multipart([protocol.TOPIC_STACK, *parts])
        self.pub.send_multipart([protocol.TOPIC_STATUS, protocol.pack({"state": "running"})])

    def close(self) -> None:
        self.pub.close()
        self.auth.stop()


def test_curve_client_with_an_authorised_key_receives(qtbot, zmq_context, tmp_path):
    good, other = tmp_path / "good", tmp_path / "other"
    make_keys(good)
    make_keys(other)  # a key pair the server does not know
    server = CurvePublisher(zmq_context, good)
    timer = QTimer()
    timer.timeout.connect(server.publish)
    timer.start(50)
    links = []
    received = []
    try:
        for folder in (good, other):
            _, client_key = key_files_in(folder)
            link = DaemonLink(LinkParams(
                publish_endpoint=f"tcp://127.0.0.1:{server.port}",
                control_endpoint=f"tcp://127.0.0.1:{free_port(zmq_context)}",
                server_key=good / "server.key", client_key=client_key,
            ))
            links.append(link)
        links[0].arrived.connect(lambda: received.append(links[0].take()))
        for link in links:
            link.start()
        qtbot.waitUntil(lambda: any(i.stack is not None for i in received), timeout=WAIT_MS)
        stack = next(i.stack for i in received if i.stack is not None)
        assert int(stack.image[0, 0]) == 1234
        # The unauthorised client got nothing in all that time (and more).
        qtbot.wait(500)
        inbox = links[1].take()
        assert inbox.stack is None and not inbox.statuses
    finally:
        timer.stop()
        for link in links:
            link.stop()
        server.close()
