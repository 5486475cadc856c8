"""The session's stack history served to viewers: the index, and a saved stack's pixels.

The daemon writes every save as a new file and lists it in the session's index
(:mod:`daemon.persist`, docs/protocol.md "Stack history"). A viewer may run on another
machine, so it asks the daemon: ``history`` answers with the index's records, ``load``
with one listed file's pixels in the wire form of a published stack (uint16, see
:func:`daemon.protocol.stack_to_wire`). Only files the index lists are read, by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from daemon import protocol
from daemon.persist import read_index


def history(index: Path) -> dict[str, Any]:
    """``{"index": path, "stacks": [records, oldest first]}`` of the session's index."""
    return {"index": str(index), "stacks": read_index(index)}


def load(index: Path, name: str) -> dict[str, Any]:
    """A listed stack file's pixels and record.

    Returns
    -------
    dict
        ``{"file", "record", "width", "height", "layout", "pixels"}``: ``pixels`` are
        the ``height * width (* 3)`` uint16 little-endian samples, ``layout`` ``mono`` or
        ``rgb``.

    Raises
    ------
    ValueError
        If ``name`` is not a file of the index, or the file cannot be read (naming it).
    """
    from live_stack.io import SourceError
    from live_stack.io.images import read_image

    records = {r.get("file"): r for r in read_index(index)}
    if name not in records:
        listed = ", ".join(sorted(str(k) for k in records)[-5:]) or "none yet"
        raise ValueError(f"{name!r} is not in the stack history {index.name} "
                         f"(the latest: {listed})")
    path = index.parent / name
    try:
        image, _ = read_image(path)
    except (SourceError, OSError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    pixels = protocol.stack_to_wire(image)
    return {"file": name, "record": records[name], "width": int(pixels.shape[1]),
            "height": int(pixels.shape[0]), "layout": "rgb" if pixels.ndim == 3 else "mono",
            "pixels": pixels.tobytes()}
