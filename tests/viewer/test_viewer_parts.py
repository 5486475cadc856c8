"""The viewer's plain functions and parameter objects: known answers and bad input."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from daemon import protocol
from daemon.security import make_keys
from viewer.cli import ScreenshotParams, control_endpoint_for
from viewer.control_panel import (
    LIVE_PARAMS,
    ParamSpec,
    flatten_params,
    format_reply,
    format_value,
    parse_value,
)
from viewer.image_panel import Levels, ap_grid_path, auto_levels
from viewer.link import (
    LinkParams,
    Reply,
    decode_stack,
    describe_request,
    key_files_in,
    load_curve_keys,
    parse_reply,
)
from viewer.quality_panel import QualityHistory, histogram_arrays, recent_points
from viewer.state_panel import (
    MISSING,
    format_counts,
    format_seconds,
    format_sources,
    format_status,
)
from viewer.window import WindowParams

# --- levels and the AP grid ------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.float32])
def test_auto_levels_stretch_background_to_square(dtype):
    image = np.full((100, 120), 10, dtype)
    image[40:60, 50:80] = 200
    assert auto_levels(image) == Levels(10, 200)


def test_auto_levels_ignore_a_few_hot_pixels():
    rng = np.random.default_rng(1)
    image = rng.integers(1000, 3000, size=(400, 400)).astype(np.uint16)
    image[rng.integers(0, 400, 10), rng.integers(0, 400, 10)] = 65535
    lv = auto_levels(image)
    assert 1000 <= lv.low < 1010 and 2990 < lv.high <= 3000


def test_auto_levels_of_a_large_stack_use_a_subsample():
    image = np.zeros((2160, 3840), np.uint16)
    image[:, 1920:] = 40000  # half bright: survives any subsampling
    assert auto_levels(image) == Levels(0, 40000)


def test_auto_levels_of_a_flat_or_colour_stack():
    assert auto_levels(np.full((8, 8), 500, np.uint16)) == Levels(500, 501)
    rgb = np.zeros((20, 20, 3), np.uint16)
    rgb[5:15, 5:15, 1] = 30000
    assert auto_levels(rgb) == Levels(0, 30000)


@pytest.mark.parametrize("shape", [(0, 5), (5,), (2, 2, 2, 2)])
def test_auto_levels_reject_bad_arrays(shape):
    with pytest.raises(ValueError, match="image must be"):
        auto_levels(np.zeros(shape, np.uint16))


@pytest.mark.parametrize(("low", "high", "match"),
                         [(5, 5, "high must be > low"), (5, 1, "high must be > low"),
                          (math.nan, 1, "finite"), (0, math.inf, "finite")])
def test_levels_are_checked(low, high, match):
    with pytest.raises(ValueError, match=match):
        Levels(low, high)


def test_ap_grid_path_is_one_square_per_centre():
    path = ap_grid_path([[10, 20], [50, 60]], 16)
    rect = path.boundingRect()
    assert (rect.left(), rect.top()) == (20.5 - 8, 10.5 - 8)
    assert (rect.right(), rect.bottom()) == (60.5 + 8, 50.5 + 8)
    assert path.elementCount() == 2 * 5  # two closed rectangles
    assert ap_grid_path([], 16).isEmpty()


def test_ap_grid_path_rejects_bad_input():
    with pytest.raises(ValueError, match="ap_size must be > 0"):
        ap_grid_path([[1, 2]], 0)
    with pytest.raises(ValueError, match=r"ap_centres must hold \(y, x\) pairs"):
        ap_grid_path([[1, 2, 3]], 8)


# --- the link ---------------------------------------------------------------------------


def test_parse_reply_known_answers():
    request = {"cmd": "save"}
    assert parse_reply(protocol.pack({"ok": True, "result": {"path": "a.tif"}}), request) == \
        Reply(request, True, {"path": "a.tif"}, "")
    bad = parse_reply(protocol.pack({"ok": False, "error": "no stack yet"}), request)
    assert (bad.ok, bad.error) == (False, "no stack yet")
    assert "not valid msgpack" in parse_reply(b"\xc1", request).error
    assert "must be a msgpack map" in parse_reply(b"\x91\x01", request).error
    assert "lacks a boolean 'ok'" in parse_reply(protocol.pack({"ok": 1}), request).error
    no_reason = protocol.pack({"ok": False, "error": ""})
    assert "without a reason" in parse_reply(no_reason, request).error


def test_describe_request():
    assert describe_request({"cmd": "reset"}) == "reset"
    assert describe_request({"cmd": "set", "name": "ap_size", "value": 64}) == "set ap_size=64"


def stack_parts(array: np.ndarray, **kwargs) -> list[bytes]:
    header, pixels = protocol.encode_image(array, **kwargs)
    return [protocol.TOPIC_STACK, bytes(header), bytes(pixels)]


@pytest.mark.parametrize("shape", [(16, 24), (16, 24, 3)])
def test_decode_stack_gives_the_pixels(shape):
    array = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    meta = {"stats": {}, "ap_centres": [[1, 2]], "ap_size": 8}
    msg = decode_stack(stack_parts(array, kind="stack", seq=7, meta=meta), received=1.0)
    np.testing.assert_array_equal(msg.image, array)
    assert msg.header["seq"] == 7 and msg.header["meta"] == meta


@pytest.mark.parametrize(
    ("array", "kwargs", "match"),
    [
        (np.zeros((16, 16), np.uint16), {"kind": "frame"}, "kind 'frame'"),
        (np.zeros((16, 16), np.float32), {"kind": "stack"}, "dtype is 'float32'"),
        (np.zeros((16, 16), np.uint8), {"kind": "stack"}, "dtype is 'uint8'"),
        (np.zeros((16, 16), np.uint16), {"kind": "stack", "bayer": "RGGB"}, "layout is 'RGGB'"),
    ],
)
def test_decode_stack_rejects_what_is_not_a_stack(array, kwargs, match):
    with pytest.raises(protocol.ProtocolError, match=match):
        decode_stack(stack_parts(array, **kwargs), received=0.0)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"publish_endpoint": "localhost:5556"}, "publish_endpoint must be a ZeroMQ endpoint"),
        ({"control_endpoint": 5557}, "control_endpoint must be a ZeroMQ endpoint"),
        ({"control_timeout_s": 0}, "control_timeout_s must be > 0"),
        ({"receive_hwm": 0}, "receive_hwm must be an integer >= 1"),
        ({"server_key": Path("s.key")}, "server_key and client_key must be given together"),
        ({"server_key": "s.key", "client_key": Path("c")}, "server_key must be a pathlib.Path"),
    ],
)
def test_link_params_are_checked(fields, match):
    with pytest.raises(ValueError, match=match):
        LinkParams(**fields)


def test_curve_keys_load_from_a_keys_folder(tmp_path):
    files = make_keys(tmp_path)
    server, client = key_files_in(tmp_path)
    assert (server, client) == (files.server_public, files.client_secret)
    keys = load_curve_keys(server, client)
    assert len(keys.public) == len(keys.secret) == len(keys.server) == 40  # Z85 keys


def test_curve_keys_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="keys folder .*nowhere does not exist"):
        key_files_in(tmp_path / "nowhere")
    make_keys(tmp_path)
    with pytest.raises(ValueError, match="client key: .*server.key holds no secret key"):
        load_curve_keys(tmp_path / "server.key", tmp_path / "server.key")
    (tmp_path / "client.key_secret").unlink()
    with pytest.raises(ValueError, match="client key: cannot read key file .*client.key_secret"):
        load_curve_keys(*key_files_in(tmp_path))
    (tmp_path / "broken.key").write_text("not a certificate\n")
    with pytest.raises(ValueError, match="server key: .*broken.key"):
        load_curve_keys(tmp_path / "broken.key", tmp_path / "server.key_secret")


# --- the state panel's texts ------------------------------------------------------------

#: A status map as the daemon publishes it (see docs/protocol.md).
STATUS = {
    "v": 1, "time": 1000.0, "state": "running", "uptime_s": 185.2, "session": "20250101-210000",
    "segment": 2, "resets": 1, "curve": False,
    "frames": {"received": 1200, "processed": 1150, "admitted": 400, "rejected": 750},
    "drops": {"malformed": 1, "overflow": 49, "wrong_size": 0, "paused": 0, "error": 0},
    "rejected": {"quality": 700, "alignment": 50},
    "sources": {"cam": {"frames": 1200, "last_seq": 1210, "gaps": 10, "restarts": 0,
                        "last_time": 999.75, "width": 640, "height": 480, "dtype": "uint8",
                        "layout": "mono"}},
    "rates": {"received_fps": 299.94, "processed_fps": 287.5},
    "queue": {"fill": 3, "size": 32}, "buffer": {"fill": 200, "size": 200}, "aps": 48,
    "latency_s": 0.4321,
    "output": {"last_saved": "/srv/out/stack-20250101-210000-002.tif"},
}


def test_format_status_known_answer():
    assert format_status(STATUS) == {
        "state": "running, stack 2 of session 20250101-210000, up 3 min 05 s",
        "sources": "cam: 640x480 uint8 mono, 1200 frames, 10 missing, last 250 ms ago",
        "rate_in": "299.9 frames/s",
        "rate_processed": "287.5 frames/s",
        "frames": "1200 / 1150 / 400",
        "dropped": "50 (overflow 49, malformed 1)",
        "rejected": "750 (quality 700, alignment 50)",
        "queue": "3 / 32",
        "buffer": "200 / 200",
        "aps": "48",
        "latency": "432 ms",
        "saved": "stack-20250101-210000-002.tif",
        "disk": MISSING,
    }


def test_the_panel_shows_save_errors_low_disk_space_and_a_stopped_recording():
    status = {**STATUS, "output": {
        "last_saved": "/srv/out/stack-20250101-210000-0002-210500.tif",
        "save_error": {"message": "cannot write stack-x.tif in /srv/out: No space left on "
                       "device", "time": 1000.0, "first_time": 940.0, "count": 3},
        "disk": {"free_mib": 12.4, "low": True, "warn_free_mib": 1024.0, "min_free_mib": 64.0},
    }, "recording": {"failed": "the disk is nearly full: 63.9 MiB free"}}
    texts = format_status(status)
    assert texts["saved"] == ("SAVE FAILED (3 times): cannot write stack-x.tif in /srv/out: "
                              "No space left on device; last saved: "
                              "stack-20250101-210000-0002-210500.tif")
    assert texts["disk"] == ("LOW: 12 MiB free (warning under 1024.0 MiB); recording stopped: "
                             "the disk is nearly full: 63.9 MiB free")
    ok = format_status({"output": {"disk": {"free_mib": 5000.0, "low": False}}})
    assert ok["disk"] == "5000 MiB free" and ok["saved"] == "not yet"


def test_the_aps_line_says_the_step_and_why_the_grid_is_dense():
    dense = {**STATUS, "aps": 475, "stacker": {
        "ap_step": 24, "ap_dense": True, "ap_detail": 0.43,
        "ap_dense_reason": "a frame's detail is 0.43x its noise (under ap_dense_below 2)"}}
    assert format_status(dense)["aps"] == ("475, 24 px apart, twice as dense: a frame's "
                                           "detail is 0.43x its noise (under ap_dense_below 2)")
    usual = {**STATUS, "stacker": {"ap_step": 47, "ap_dense": False, "ap_dense_reason": ""}}
    assert format_status(usual)["aps"] == "48, 47 px apart"
    odd = {**STATUS, "stacker": {"ap_step": "x", "ap_dense": "yes", "ap_dense_reason": 3}}
    assert format_status(odd)["aps"] == "48"
    assert format_status({"stacker": {"ap_step": 24}})["aps"] == MISSING


def test_format_status_of_an_empty_or_garbled_map():
    empty = format_status({})
    assert empty["state"] == MISSING and empty["rate_in"] == MISSING
    assert empty["frames"] == f"{MISSING} / {MISSING} / {MISSING}"
    assert empty["saved"] == "not yet"
    garbled = format_status({"state": 3, "rates": "fast", "drops": [1, 2], "queue": {"fill": "x"},
                             "aps": True, "sources": {"a": 5}, "latency_s": "soon"})
    assert garbled["rate_in"] == MISSING and garbled["dropped"] == MISSING
    assert garbled["queue"] == MISSING and garbled["aps"] == MISSING
    assert garbled["latency"] == MISSING and garbled["sources"] == "a: – frames"


@pytest.mark.parametrize(("seconds", "text"),
                         [(0.0123, "12 ms"), (1.5, "1.50 s"), (125, "2 min 05 s"),
                          (7265, "2 h 01 min"), (None, MISSING), (True, MISSING)])
def test_format_seconds(seconds, text):
    assert format_seconds(seconds) == text


def test_format_counts_and_sources():
    assert format_counts({"a": 0, "b": 0}) == "0"
    assert format_counts({"a": 2, "b": 5}) == "7 (b 5, a 2)"
    assert format_sources({}, 0) == "no frames received yet"
    assert format_sources(None, 0) == MISSING
    folder = {"frames": 3, "width": 64, "height": 48, "dtype": "uint8", "layout": "mono",
              "skipped_files": 2, "last_time": 9.0}
    assert format_sources({"dir": folder}, 10.0) == \
        "dir: 64x48 uint8 mono, 3 frames, 2 files skipped (unreadable), last 1.00 s ago"
    assert "skipped" not in format_sources({"dir": {**folder, "skipped_files": 0}}, 10.0)


# --- quality ----------------------------------------------------------------------------


def test_recent_points_from_parallel_lists():
    recent = {"index": [3, 4, 5, 6, 7], "quality": [0.5, math.nan, 0.7, "x", -1.0],
              "admitted": [True, False, False, True, False]}
    assert recent_points(recent) == [(3.0, 0.5, True), (5.0, 0.7, False)]
    assert recent_points({"index": [1], "quality": [], "admitted": []}) == []
    assert recent_points([[1, 2, True]]) == []
    assert recent_points(None) == []


def test_quality_history_merges_overlapping_windows_and_restarts():
    history = QualityHistory(5)
    assert history.add([(0, 0.1, True), (1, 0.2, False), (2, 0.3, True)]) == 3
    assert history.add([(1, 0.2, False), (2, 0.3, True), (3, 0.4, True)]) == 1
    index, quality, admitted = history.arrays()
    np.testing.assert_array_equal(index, [0, 1, 2, 3])
    np.testing.assert_array_equal(admitted, [True, False, True, True])
    assert history.add([(4, 0.5, True), (5, 0.6, True)]) == 2
    assert len(history) == 5  # capacity
    assert history.arrays()[0][0] == 1
    assert history.add([(0, 0.9, True)]) == 1  # the daemon restarted
    np.testing.assert_array_equal(history.arrays()[1], [0.9])
    assert history.add([]) == 0
    with pytest.raises(ValueError, match="capacity must be an integer >= 1"):
        QualityHistory(0)


def test_histogram_arrays():
    edges, counts = histogram_arrays({"hist": [1, 2], "edges": [0.0, 0.5, 1.0]})
    np.testing.assert_array_equal(edges, [0, 0.5, 1])
    np.testing.assert_array_equal(counts, [1, 2])
    assert histogram_arrays({"hist": [1, 2], "edges": [0.0, 1.0]}) is None
    assert histogram_arrays({"hist": [1], "edges": ["a", "b"]}) is None
    assert histogram_arrays({"hist": [1]}) is None


# --- controls and parameters ------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"),
                         [("12", 12), (" 2.5 ", 2.5), ("TRUE", True), ("false", False),
                          ("all", "all"), ("1, 2.5, x", [1, 2.5, "x"])])
def test_parse_value_and_back(text, value):
    assert parse_value(text) == value
    assert parse_value(format_value(value)) == value


def test_parse_value_rejects_nothing():
    with pytest.raises(ValueError, match="value must not be empty"):
        parse_value("  ")


def test_format_reply():
    assert format_reply(Reply({"cmd": "reset"}, True, None, "")) == "reset: ok"
    assert format_reply(Reply({"cmd": "save"}, True, {"path": "a.tif"}, "")) == \
        "save: ok: path=a.tif"
    assert format_reply(Reply({"cmd": "set", "name": "x", "value": 1}, False, None, "bad")) == \
        "set x=1: error: bad"


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ParamSpec("", "x"), "name must be a parameter name"),
        (lambda: ParamSpec("ap size", "x"), "name must be a parameter name"),
        (lambda: ParamSpec("ap_size", ""), "label must not be empty"),
        (lambda: WindowParams(stale_after_s=0), "stale_after_s must be > 0"),
        (lambda: WindowParams(check_interval_s=5), "check_interval_s must be in"),
        (lambda: WindowParams(quality_history=0), "quality_history must be an integer"),
        (lambda: ScreenshotParams(Path("shot")), "path must be an image file name"),
        (lambda: ScreenshotParams(Path("a.png"), timeout_s=0), "timeout_s must be > 0"),
        (lambda: ScreenshotParams(Path("a.png"), status_grace_s=-1), "status_grace_s must be"),
    ],
)
def test_parameter_objects_are_checked(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_parameter_objects_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        WindowParams().stale_after_s = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("publish", "control"),
    [("tcp://127.0.0.1:5556", "tcp://127.0.0.1:5557"),
     ("tcp://scope.local:6000", "tcp://scope.local:5557"),
     ("tcp://[::1]:5556", "tcp://[::1]:5557"),
     ("ipc:///tmp/pub", "tcp://127.0.0.1:5557")],
)
def test_control_endpoint_follows_the_publisher_host(publish, control):
    assert control_endpoint_for(publish) == control


def test_flatten_params_names_phase_fields_as_set_takes_them():
    assert flatten_params({"buffer_size": 200, "ap": {"size": 48}, "blend": {}}) == \
        {"buffer_size": 200, "ap_size": 48}


def test_the_parameter_rows_are_live_parameters():
    """Every row names a parameter that LiveStacker.set_param accepts."""
    from live_stack.live import LiveParams, LiveStacker

    stacker = LiveStacker(LiveParams())
    known = flatten_params(dataclasses.asdict(stacker.params))
    for spec in LIVE_PARAMS:
        assert spec.name in known, spec.name
        stacker.set_param(spec.name, known[spec.name])  # accepted as it is shown
