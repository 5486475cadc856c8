"""The daemon's state, as text: rates, drops, buffer, APs, latency, sources.

The texts come from the daemon's ``status`` map (see docs/protocol.md); a field the map
lacks, or holds in an unexpected form, is shown as :data:`MISSING` rather than failing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from PySide6.QtWidgets import QFormLayout, QGroupBox, QLabel, QSizePolicy, QWidget

#: Text shown for a value the status does not carry.
MISSING = "–"

#: Latencies below this many seconds are shown in milliseconds.
_MS_BELOW_S = 1.0

#: Seconds in a minute and an hour (for uptimes).
_MINUTE, _HOUR = 60, 3600

#: (field, label) of each line of the panel, in order.
FIELDS: tuple[tuple[str, str], ...] = (
    ("state", "State"),
    ("sources", "Source"),
    ("rate_in", "Frames in"),
    ("rate_processed", "Processed"),
    ("frames", "Received / processed / admitted"),
    ("dropped", "Dropped by the daemon"),
    ("rejected", "Rejected by the stacker"),
    ("queue", "Queue"),
    ("buffer", "Buffer"),
    ("aps", "APs"),
    ("latency", "Latency"),
    ("saved", "Last saved"),
    ("disk", "Output disk"),
    ("stack", "Stack"),
    ("link", "Link"),
)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _count(value: Any) -> str:
    x = _number(value)
    return MISSING if x is None else str(int(x))


def format_rate(value: Any) -> str:
    """``12.3 frames/s``, or :data:`MISSING`."""
    x = _number(value)
    return MISSING if x is None else f"{x:.1f} frames/s"


def format_seconds(value: Any) -> str:
    """A duration as ``250 ms``, ``1.50 s``, ``3 min 05 s`` or ``2 h 01 min``."""
    x = _number(value)
    if x is None:
        return MISSING
    if x < _MS_BELOW_S:
        return f"{x * 1000:.0f} ms"
    if x < _MINUTE:
        return f"{x:.2f} s"
    if x < _HOUR:
        return f"{int(x // _MINUTE)} min {int(x % _MINUTE):02d} s"
    return f"{int(x // _HOUR)} h {int(x % _HOUR // _MINUTE):02d} min"


def format_counts(value: Any) -> str:
    """``{reason: n}`` as ``7 (overflow 5, wrong_size 2)``; ``0`` when all are zero."""
    if not isinstance(value, Mapping):
        return MISSING
    counts = {str(k): int(v) for k, v in value.items() if _number(v)}
    total = sum(counts.values())
    if not total:
        return "0"
    parts = ", ".join(f"{k} {n}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return f"{total} ({parts})"


def format_fill(value: Any) -> str:
    """``{"fill": 3, "size": 32}`` as ``3 / 32``."""
    m = _map(value)
    fill, size = _number(m.get("fill")), _number(m.get("size"))
    if fill is None:
        return MISSING
    return f"{int(fill)} / {MISSING if size is None else int(size)}"


def format_saved(output: Any) -> str:
    """The last stack file saved, or the save error the daemon reports (with its count)."""
    out = _map(output)
    error = _map(out.get("save_error"))
    saved = out.get("last_saved")
    name = PurePath(saved).name if isinstance(saved, str) and saved else "not yet"
    if not isinstance(error.get("message"), str):
        return name
    count = _number(error.get("count"))
    times = "" if count is None or count < 2 else f" ({int(count)} times)"
    return f"SAVE FAILED{times}: {error['message']}; last saved: {name}"


def format_disk(output: Any, recording: Any) -> str:
    """Free space of the output disk (``LOW`` under the daemon's threshold), and why a
    recording stopped."""
    disk = _map(_map(output).get("disk"))
    free = _number(disk.get("free_mib"))
    text = MISSING if free is None else f"{free:.0f} MiB free"
    if free is not None and disk.get("low") is True:
        text = f"LOW: {text} (warning under {disk.get('warn_free_mib')} MiB)"
    stopped = _map(recording).get("failed")
    if isinstance(stopped, str):
        text += f"; recording stopped: {stopped}"
    return text


def format_sources(sources: Any, now: Any) -> str:
    """One line per sender: size and format, frames, gaps, files it could not read (a
    folder source's ``skipped_files``), age of its last frame."""
    if not isinstance(sources, Mapping):
        return MISSING
    if not sources:
        return "no frames received yet"
    lines = []
    for name, s in sources.items():
        s = _map(s)
        text = f"{name or 'unnamed'}: "
        if _number(s.get("width")) and _number(s.get("height")):
            text += f"{int(s['width'])}x{int(s['height'])} {s.get('dtype', '')} "
            text += f"{s.get('layout', '')}, "
        text += f"{_count(s.get('frames'))} frames"
        gaps = _number(s.get("gaps"))
        if gaps:
            text += f", {int(gaps)} missing"
        skipped = _number(s.get("skipped_files"))
        if skipped:  # files a folder source could not read (its log says why)
            text += f", {int(skipped)} files skipped (unreadable)"
        last, t = _number(s.get("last_time")), _number(now)
        if last is not None and t is not None:
            text += f", last {format_seconds(max(0.0, t - last))} ago"
        lines.append(text)
    return "\n".join(lines)


def format_state(status: Mapping[str, Any]) -> str:
    """``running, stack 2 of session 20250101-210000, up 3 min 05 s``."""
    state = status.get("state")
    text = MISSING if state is None else str(state)
    segment, session = _number(status.get("segment")), status.get("session")
    if segment is not None and session:
        text += f", stack {int(segment)} of session {session}"
    if _number(status.get("uptime_s")) is not None:
        text += f", up {format_seconds(status['uptime_s'])}"
    if status.get("curve"):
        text += ", CURVE"
    return text


def format_aps(status: Mapping[str, Any]) -> str:
    """``475, 24 px apart, twice as dense: <why>``: the AP count, and the grid's step and
    why it was laid twice as dense where the stacker says so (its ``ap_step``,
    ``ap_dense``, ``ap_dense_reason``); :data:`MISSING` without a count."""
    text = _count(status.get("aps"))
    if text == MISSING:
        return text
    stacker = _map(status.get("stacker"))
    step = _number(stacker.get("ap_step"))
    if step:
        text += f", {int(step)} px apart"
    reason = stacker.get("ap_dense_reason")
    if stacker.get("ap_dense") is True:
        text += ", twice as dense" + (f": {reason}" if isinstance(reason, str) and reason else "")
    return text


def format_status(status: Mapping[str, Any]) -> dict[str, str]:
    """The daemon's status map as the panel's texts, keyed by :data:`FIELDS` names.

    ``stack`` and ``link`` are filled by the window, not from the status.
    """
    frames = _map(status.get("frames"))
    rates = _map(status.get("rates"))
    output = status.get("output")
    return {
        "state": format_state(status),
        "sources": format_sources(status.get("sources"), status.get("time")),
        "rate_in": format_rate(rates.get("received_fps")),
        "rate_processed": format_rate(rates.get("processed_fps")),
        "frames": " / ".join(_count(frames.get(k)) for k in ("received", "processed", "admitted")),
        "dropped": format_counts(status.get("drops")),
        "rejected": format_counts(status.get("rejected")),
        "queue": format_fill(status.get("queue")),
        "buffer": format_fill(status.get("buffer")),
        "aps": format_aps(status),
        "latency": format_seconds(status.get("latency_s")),
        "saved": format_saved(output),
        "disk": format_disk(output, status.get("recording")),
    }


class StatePanel(QGroupBox):
    """One label per :data:`FIELDS` entry; :attr:`labels` maps field name to label."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Daemon", parent)
        form = QFormLayout(self)
        self.labels: dict[str, QLabel] = {}
        for name, title in FIELDS:
            label = QLabel(MISSING)
            label.setObjectName(f"state_{name}")
            label.setWordWrap(True)
            # a long unbreakable text (a file name) is cut at the column's edge rather
            # than widen the column beyond the window
            label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
            self.labels[name] = label
            form.addRow(title, label)

    def show_status(self, status: Mapping[str, Any]) -> None:
        """Update the labels from a status map."""
        for name, text in format_status(status).items():
            self.labels[name].setText(text)

    def set_text(self, name: str, text: str) -> None:
        """Set one line (e.g. ``stack`` or ``link``)."""
        if name not in self.labels:
            raise ValueError(f"name must be one of {sorted(self.labels)}, got {name!r}")
        self.labels[name].setText(text)
