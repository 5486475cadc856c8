"""Why the daemon makes no stack, or no longer adds to it, in words for the observer.

:func:`diagnose` reads the counters of :class:`daemon.stats.IngestStats` (its
``as_dict()``) and returns a :class:`Diagnosis` when something keeps frames out of the
stack: no frame arrives, every frame is dropped before stacking, or no frame aligns
(featureless noise, an object out of the field or far out of focus). The daemon puts it
in its status message (``diagnosis``), logs it when it changes and the viewer shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Least number of the recent frames (the status message's ``recent`` window) that failed
#: to align before the daemon says there is nothing to align on: about a second of
#: capture at 30 frames/s, and half the live stacker's default ``reset_after``.
ALIGNMENT_FAILURES = 30

#: Least share of the recent frames past the warm-up that failed to align for the same.
#: Featureless noise fails nine times in ten or more (a frame may pass for aligned by
#: chance); a stack that grows sees a few failures in a hundred.
ALIGNMENT_FAILED_SHARE = 0.8

#: Kinds of diagnosis that are faults (logged as warnings); the others are states.
FAULTS = ("dropped", "alignment")


@dataclass(frozen=True)
class Diagnosis:
    """A reason why frames do not reach the stack."""

    kind: str  # "waiting", "paused", "dropped", "warmup" or "alignment"
    text: str  # one sentence for the observer, with what to check

    @property
    def fault(self) -> bool:
        """True for a fault (the observer must act), False for a passing state."""
        return self.kind in FAULTS

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text, "fault": self.fault}


def diagnose(counters: dict[str, Any], *, has_stack: bool, paused: bool,
             warmup: int | None = None, ingest: str = "") -> Diagnosis | None:
    """The reason frames do not reach the stack now, or None if they do.

    Parameters
    ----------
    counters : dict
        ``IngestStats.as_dict()``.
    has_stack : bool
        Whether the current stack exists (a snapshot was made): a stack still warming up
        is said only while there is none.
    paused : bool
        Whether stacking is paused.
    warmup : int, optional
        Frames the stacker collects before its first stack (for the warm-up message).
    ingest : str
        The ingest endpoint, named when no frame has arrived.

    Returns
    -------
    Diagnosis or None
    """
    frames = counters["frames"]
    outcomes = counters["recent"]["outcomes"]
    if paused:
        return Diagnosis("paused", "stacking is paused: frames are dropped until resume")
    if frames["received"] == 0:
        where = f" on {ingest}" if ingest else ""
        return Diagnosis("waiting", f"no frame received yet{where}: is a source running "
                                    "and sending to this daemon?")
    drops = {k: v for k, v in counters["drops"].items() if v and k != "shutdown"}
    if frames["processed"] == 0 and drops:
        listed = ", ".join(f"{k} {v}" for k, v in sorted(drops.items()))
        return Diagnosis("dropped", f"every frame received was dropped before stacking "
                                    f"({listed}): see the daemon's log for why")
    recent = sum(outcomes.values())
    failed = int(outcomes.get("alignment", 0))
    tried = recent - int(outcomes.get("warmup", 0))
    if failed >= ALIGNMENT_FAILURES and failed >= ALIGNMENT_FAILED_SHARE * tried:
        return Diagnosis("alignment", f"nothing to stack: no structure to align on in the "
                                      f"last {recent} "
                                      f"frames ({failed} failed to align): is the object in "
                                      "the field and in focus?")
    if not has_stack and frames["admitted"] == 0 and outcomes.get("warmup", 0):
        of = f" of {warmup}" if warmup else ""
        return Diagnosis("warmup", f"collecting the first frames to start the stack "
                                   f"({int(outcomes.get('warmup', 0))}{of})")
    return None
