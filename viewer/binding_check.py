"""Detect a Qt binding that corrupts Python's reference count of ``None``.

PySide6 6.12.0 on Python 3.11 (where ``None`` is not yet immortal) drops one reference
to ``None`` on every call of a method that returns nothing; after a few thousand calls
(a few seconds of painting) the interpreter aborts with "deallocating None". The viewer
checks for this at start-up and refuses to run with a message saying what to install,
instead of crashing later.
"""

from __future__ import annotations

import sys

#: Calls of a void method made to look for the leak.
PROBE_CALLS = 200


def leaks_none_references() -> bool:
    """True if calling a void PySide6 method loses references to ``None``."""
    from PySide6.QtCore import QPointF

    point = QPointF()
    before = sys.getrefcount(None)
    for _ in range(PROBE_CALLS):
        point.setX(0.0)
    return before - sys.getrefcount(None) >= PROBE_CALLS // 2


def check_binding() -> None:
    """Raise RuntimeError naming the fix if the installed PySide6 has the leak."""
    if leaks_none_references():
        import PySide6

        raise RuntimeError(
            f"PySide6 {PySide6.__version__} on Python {sys.version.split()[0]} loses references "
            "to None on every call and would crash the viewer within seconds; install another "
            "version (pip install 'PySide6-Essentials!=6.12.0') or use Python >= 3.12"
        )
