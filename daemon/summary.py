"""Readable text for ``live-stack ctl``: the status map and control replies in a few lines.

``ctl status`` prints :func:`status_text` (``--json`` prints the map itself, for
scripts); the other commands print :func:`reply_text`. Both read the maps defensively
(a field missing from an older daemon's status is left out, never an error).
"""

from __future__ import annotations

import time
from typing import Any


def _duration(seconds: float) -> str:
    """``42 s``, ``12 min``, ``3 h 05 min``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 3600 * 2:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _counts(counts: dict[str, Any]) -> str:
    """``alignment 12, quality 3`` of the non-zero counts, or ``none``."""
    items = [f"{k} {v}" for k, v in sorted(counts.items()) if v]
    return ", ".join(items) if items else "none"


def _weak_aps(stacker: dict[str, Any]) -> str | None:
    """``APs:  108, 3 short of 30 frames, 12 % of shifts fell back (390 of 3240)`` when
    any AP stacked fewer frames than asked or any of its shifts fell back, else None."""
    frames, fell = stacker.get("ap_frames") or [], stacker.get("ap_fell_back") or []
    asked = stacker.get("frames_per_ap", 0)
    short = sum(1 for f in frames if f < asked)
    if not frames or not (short or sum(fell)):
        return None
    parts = [f"APs:       {len(frames)}"]
    if short:
        parts.append(f"{short} short of {asked} frames")
    if sum(fell):
        share = 100 * sum(fell) / max(sum(frames), 1)
        parts.append(f"{share:.0f} % of shifts fell back ({sum(fell)} of {sum(frames)})")
    return ", ".join(parts)


def status_text(st: dict[str, Any], *, now: float | None = None) -> str:
    """A daemon's status map as about a dozen readable lines.

    Parameters
    ----------
    st : dict
        The ``status`` map (docs/protocol.md).
    now : float, optional
        Unix time to measure ages against (default: now).

    Returns
    -------
    str
        The lines, without a final newline; the first says the state, and a diagnosis
        (why nothing is stacked) comes second, marked ``!`` when it is a fault.
    """
    now = time.time() if now is None else now
    lines = [f"daemon {st.get('state', '?')} for {_duration(st.get('uptime_s', 0.0))}, "
             f"session {st.get('session', '?')}, stack {st.get('segment', '?')}"]
    diag = st.get("diagnosis")
    if diag:
        lines.append(f"{'!' if diag.get('fault') else '-'} {diag.get('text', '')}")
    fr, rates = st.get("frames", {}), st.get("rates", {})
    lines.append(
        f"frames:    {fr.get('received', 0)} received ({rates.get('received_fps', 0.0):.1f}/s),"
        f" {fr.get('processed', 0)} stacked ({rates.get('processed_fps', 0.0):.1f}/s),"
        f" {fr.get('admitted', 0)} admitted")
    lines.append(f"rejected:  {_counts(st.get('rejected', {}))}; "
                 f"dropped: {_counts(st.get('drops', {}))}")
    q, buf = st.get("queue", {}), st.get("buffer", {})
    lines.append(f"queue:     {q.get('fill', 0)} of {q.get('size', 0)} frames waiting; "
                 f"buffer {buf.get('fill', 0)} of {buf.get('size', 0)} frames, "
                 f"{st.get('aps', 0)} APs")
    weak = _weak_aps(st.get("stacker") or {})
    if weak:
        lines.append(weak)
    stack = st.get("stack") or {}
    if stack:
        age = now - stack.get("time", now)
        latency = stack.get("latency_s")
        lat = f", {latency:.2f} s after its newest frame" if latency is not None else ""
        lines.append(f"stack:     #{stack.get('seq')} {stack.get('width')}x{stack.get('height')}"
                     f", published {age:.1f} s ago{lat}")
    else:
        lines.append("stack:     none yet")
    recent = [v for v in st.get("recent", {}).get("quality", []) if v >= 0]
    if recent:
        lines.append(f"quality:   newest {recent[-1]:.4g}, best of the last {len(recent)} "
                     f"{max(recent):.4g}")
    out = st.get("output", {})
    saved = out.get("last_saved")
    if saved:
        ago = now - (out.get("last_saved_time") or now)
        lines.append(f"saved:     {saved} ({ago:.0f} s ago)")
    else:
        lines.append(f"saved:     nothing yet (into {out.get('directory', '?')})")
    error = out.get("save_error")
    if error:
        lines.append(f"SAVE FAILED {error.get('count', 1)} time(s), last "
                     f"{now - error.get('time', now):.0f} s ago: {error.get('message')}")
    disk = out.get("disk")
    if disk:
        low = " LOW" if disk.get("low") else ""
        lines.append(f"disk:      {disk.get('free_mib', 0):.0f} MiB free{low} (warning under "
                     f"{disk.get('warn_free_mib', 0):g} MiB)")
    rec = st.get("recording")
    if rec:
        failed = f", STOPPED: {rec['failed']}" if rec.get("failed") else ""
        lines.append(f"recording: {rec.get('path')} ({rec.get('frames', 0)} frames{failed})")
    for name, src in sorted(st.get("sources", {}).items()):
        skipped = src.get("skipped_files")
        unread = (f", {skipped} files SKIPPED (unreadable: the source's log says why)"
                  if skipped else "")
        lines.append(f"source:    {name}: {src.get('frames', 0)} frames "
                     f"{src.get('width')}x{src.get('height')} {src.get('dtype')} "
                     f"{src.get('layout')}, {src.get('gaps', 0)} missed{unread}")
    ep = st.get("endpoints", {})
    if ep:
        lines.append(f"endpoints: ingest {ep.get('ingest')}, publish {ep.get('publish')}, "
                     f"control {ep.get('control')}{' (CURVE)' if st.get('curve') else ''}")
    return "\n".join(lines)


def reply_text(cmd: str, result: Any) -> str:
    """The result of a control command other than ``status``, as one line."""
    if cmd == "set" and isinstance(result, dict):
        return f"{result.get('name')} = {result.get('value')!r}"
    if cmd == "set_params" and isinstance(result, dict):
        return ", ".join(f"{k} = {v!r}" for k, v in (result.get("params") or {}).items())
    if cmd == "save" and isinstance(result, dict):
        return f"saved {result.get('path')}"
    if cmd == "reset" and isinstance(result, dict):
        saved = result.get("saved")
        return (f"saved {saved}; " if saved else "nothing to save; ") + \
            f"now stack {result.get('segment')}"
    if cmd == "camera" and isinstance(result, dict):
        parts = [f"set {k} = {v!r}" for k, v in (result.get("applied") or {}).items()]
        parts += [f"REFUSED {k}: {why}" for k, why in (result.get("refused") or {}).items()]
        return f"{result.get('source')}: " + ("; ".join(parts) or "nothing changed")
    if cmd == "history" and isinstance(result, dict):
        stacks = result.get("stacks") or []
        lines = [f"{len(stacks)} stacks saved ({result.get('index')})"]
        for r in stacks:
            when = time.strftime("%H:%M:%S", time.localtime(r.get("time") or 0))
            lines.append(f"  {r.get('file')}  {when}  {r.get('reason')}  "
                         f"{r.get('frames_admitted')} frames")
        return "\n".join(lines)
    if cmd == "load" and isinstance(result, dict):
        return (f"{result.get('file')}: {result.get('width')}x{result.get('height')} "
                f"{result.get('layout')}, {len(result.get('pixels') or b'')} bytes of pixels")
    if isinstance(result, dict):
        return ", ".join(f"{k}: {v}" for k, v in sorted(result.items()))
    return str(result)
