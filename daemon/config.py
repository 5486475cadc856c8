"""The daemon's configuration: small frozen dataclasses, read from a TOML file.

Every key of the file is documented in ``docs/daemon.example.toml``. With no file at all
the defaults below apply; command-line flags override the file. The file has the
sections ``[endpoints]``, ``[service]``, ``[output]``, ``[curve]`` and ``[live]`` (the
live stacker's parameters, passed to ``live_stack.live.LiveParams``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

DEFAULT_INGEST = "tcp://127.0.0.1:5555"
DEFAULT_PUBLISH = "tcp://127.0.0.1:5556"
DEFAULT_CONTROL = "tcp://127.0.0.1:5557"

#: Image formats the stack can be saved in (file extensions).
SAVE_FORMATS = ("tif", "png", "fits")

#: Logging levels accepted by ``service.log_level``.
LOG_LEVELS = ("debug", "info", "warning", "error")

#: Longest text a live parameter value may be (``ctl set``, ``[live]``): real ones (a stack
#: size, a method name) are a few characters.
MAX_TEXT_VALUE = 64

#: Largest magnitude of a whole-number live parameter value (2**31 - 1): frame counts and
#: sizes are far below it.
MAX_INT_VALUE = 2**31 - 1

_TCP_RE = re.compile(r"^tcp://(?P<host>\[[0-9a-fA-F:.]+\]|[^:/\[\]]+):(?P<port>\d{1,5}|\*)$")
_LOOPBACK_HOSTS = ("localhost", "lo", "::1", "[::1]")


def check_endpoint(endpoint: Any, *, name: str) -> str:
    """Check a ZeroMQ endpoint (``tcp://HOST:PORT``, ``ipc://PATH`` or ``inproc://NAME``).

    ``PORT`` may be ``*`` to bind a free port. Raises ValueError naming ``name``.
    """
    if not isinstance(endpoint, str):
        raise ValueError(f"{name} must be a string endpoint, got {endpoint!r}")
    if endpoint.startswith(("ipc://", "inproc://")) and len(endpoint.split("://", 1)[1]) > 0:
        return endpoint
    m = _TCP_RE.match(endpoint)
    if not m:
        raise ValueError(
            f"{name} must look like tcp://HOST:PORT, ipc://PATH or inproc://NAME, got {endpoint!r}"
        )
    if m["port"] != "*" and not 1 <= int(m["port"]) <= 65535:
        raise ValueError(f"{name} has port {m['port']} out of range 1..65535")
    return endpoint


def is_loopback(endpoint: str) -> bool:
    """True if binding ``endpoint`` exposes it to this machine only.

    ``ipc://`` and ``inproc://`` endpoints are local; ``tcp://`` ones are local when the
    host is ``localhost``, ``lo``, ``::1`` or an address in 127.0.0.0/8.
    """
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    m = _TCP_RE.match(endpoint)
    if not m:
        return False
    host = m["host"]
    if host in _LOOPBACK_HOSTS:
        return True
    parts = host.split(".")
    return len(parts) == 4 and parts[0] == "127" and all(p.isdigit() for p in parts)


def _number(value: Any, *, name: str, minimum: float, integer: bool = False,
            allow_zero: bool = False) -> Any:
    """Check a number (not a bool) that is > minimum (or == 0 when allowed)."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        what = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    if allow_zero and value == 0:
        return value if integer else float(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}{' or 0' if allow_zero else ''}, got {value}")
    return value if integer else float(value)


def check_live_value(name: str, value: Any) -> Any:
    """Refuse a live parameter value that no parameter takes; return it unchanged.

    The daemon checks every value of ``ctl set`` and of the ``[live]`` table with this
    before the stacker sees it (which then checks its own ranges): a NaN or infinite
    number, a whole number beyond :data:`MAX_INT_VALUE` and a text longer than
    :data:`MAX_TEXT_VALUE` characters are refused with a ValueError naming ``name``.
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT_VALUE:
        digits = math.floor(math.log10(abs(value))) + 1  # str() may refuse so many
        raise ValueError(f"{name} must be at most {MAX_INT_VALUE} in magnitude, got a number "
                         f"of {digits} digits")
    if isinstance(value, str) and len(value) > MAX_TEXT_VALUE:
        raise ValueError(f"{name}: a value of {len(value)} characters is not a parameter "
                         f"value (at most {MAX_TEXT_VALUE})")
    return value


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class Endpoints:
    """Where the daemon's three sockets bind."""

    ingest: str = DEFAULT_INGEST  # PULL socket that frames are pushed to
    publish: str = DEFAULT_PUBLISH  # XPUB socket publishing "stack" and "status" messages
    control: str = DEFAULT_CONTROL  # REP socket answering control requests

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_endpoint(getattr(self, f.name), name=f"endpoints.{f.name}")

    def non_loopback(self) -> list[str]:
        """Names of the endpoints that are reachable from other machines."""
        return [f.name for f in dataclasses.fields(self) if not is_loopback(getattr(self, f.name))]


@dataclass(frozen=True)
class ServiceParams:
    """How the daemon moves frames and publishes."""

    queue_size: int = 1000  # frames waiting for the stacker; when full the oldest is dropped
    queue_mib: float = 256.0  # and at most this many MiB of them (frame sizes differ)
    batch_size: int = 32  # most waiting frames handed to the stacker in one call (add_batch)
    ingest_hwm: int = 64  # ZeroMQ receive high-water mark of the ingest socket (messages)
    publish_interval: float = 0.5  # seconds between stack publications (only when changed)
    max_snapshot_share: float = 0.5  # most of the stacker's time spent on snapshots: slow
    # snapshots make the publish interval longer
    status_interval: float = 1.0  # seconds between status publications
    recent_frames: int = 300  # per-frame qualities kept for the status "recent" lists
    rate_window: float = 5.0  # seconds over which the in/processed rates are averaged
    poll_timeout: float = 0.05  # seconds a socket loop waits before checking for shutdown
    log_level: str = "info"  # logging level: debug, info, warning or error

    def __post_init__(self) -> None:
        for name in ("queue_size", "batch_size", "ingest_hwm", "recent_frames"):
            _number(getattr(self, name), name=f"service.{name}", minimum=1, integer=True)
        _set(self, "queue_mib", _number(self.queue_mib, name="service.queue_mib", minimum=1))
        for name in ("publish_interval", "status_interval", "rate_window"):
            _set(self, name, _number(getattr(self, name), name=f"service.{name}", minimum=0.01))
        share = _number(self.max_snapshot_share, name="service.max_snapshot_share",
                        minimum=0.01)
        if share > 1:
            raise ValueError(f"service.max_snapshot_share must be <= 1, got {share}")
        _set(self, "max_snapshot_share", share)
        _set(self, "poll_timeout",
             _number(self.poll_timeout, name="service.poll_timeout", minimum=0.001))
        if self.poll_timeout > 0.5:
            raise ValueError(
                f"service.poll_timeout must be <= 0.5 s so that shutdown stays within 2 s, "
                f"got {self.poll_timeout}"
            )
        if self.log_level not in LOG_LEVELS:
            raise ValueError(
                f"service.log_level must be one of {LOG_LEVELS}, got {self.log_level!r}"
            )


@dataclass(frozen=True)
class OutputParams:
    """What the daemon writes to disk."""

    directory: str = "live-stack-output"  # folder for stacks, session logs and recordings
    save_interval: float = 30.0  # seconds between saves of the stack (0: only at shutdown)
    format: str = "tif"  # stack file format: tif, png or fits (16-bit)
    record: bool = False  # record every frame received into a SER file (raw-SESSION.ser)
    session_log: bool = True  # write a session log (session-SESSION.log) into the folder
    warn_free_mib: float = 1024.0  # warn (log, status, viewer) when the output disk has less
    # free space than this many MiB
    min_free_mib: float = 64.0  # recording stops cleanly before a frame would leave less
    # free than this many MiB (room kept for the stacks and the log)

    def __post_init__(self) -> None:
        if not isinstance(self.directory, str) or not self.directory:
            raise ValueError(f"output.directory must be a non-empty path, got {self.directory!r}")
        _set(self, "save_interval", _number(self.save_interval, name="output.save_interval",
                                            minimum=0.1, allow_zero=True))
        for name in ("warn_free_mib", "min_free_mib"):
            _set(self, name, _number(getattr(self, name), name=f"output.{name}", minimum=0))
        if self.format not in SAVE_FORMATS:
            raise ValueError(f"output.format must be one of {SAVE_FORMATS}, got {self.format!r}")
        for name in ("record", "session_log"):
            if not isinstance(getattr(self, name), bool):
                value = getattr(self, name)
                raise ValueError(f"output.{name} must be true or false, got {value!r}")


@dataclass(frozen=True)
class CurveParams:
    """ZeroMQ CURVE security; both paths empty means CURVE is off (loopback only)."""

    server_secret_key: str = ""  # the server's secret key file (server.key_secret)
    authorized_clients: str = ""  # folder of the public key files of authorised clients

    def __post_init__(self) -> None:
        for name in ("server_secret_key", "authorized_clients"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"curve.{name} must be a path string, got {getattr(self, name)!r}")
        if bool(self.server_secret_key) != bool(self.authorized_clients):
            raise ValueError(
                "curve.server_secret_key and curve.authorized_clients must be given together"
            )

    @property
    def enabled(self) -> bool:
        """True when CURVE is configured."""
        return bool(self.server_secret_key)


@dataclass(frozen=True)
class FrameParams:
    """How received frames are prepared before they are stacked ([frames])."""

    dark: str = ""  # master dark (live-stack master-dark) subtracted from every frame; "": none
    flat: str = ""  # master flat (live-stack master-flat) every frame is divided by; "": none
    debayer: str = "bilinear"  # demosaicing of raw Bayer frames: bilinear, vng (8-bit) or ea

    def __post_init__(self) -> None:
        from live_stack.colour import METHODS

        if self.debayer not in METHODS:
            raise ValueError(f"frames.debayer must be one of {METHODS}, got {self.debayer!r}")
        for name in ("dark", "flat"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"frames.{name} must be a file name, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class DaemonConfig:
    """Everything the daemon needs besides the stacker itself."""

    endpoints: Endpoints = field(default_factory=Endpoints)  # socket addresses
    service: ServiceParams = field(default_factory=ServiceParams)  # queueing and publishing
    output: OutputParams = field(default_factory=OutputParams)  # persistence
    curve: CurveParams = field(default_factory=CurveParams)  # security
    frames: FrameParams = field(default_factory=FrameParams)  # calibration and debayering
    live: Mapping[str, Any] = field(default_factory=dict)  # LiveParams keyword arguments

    def __post_init__(self) -> None:
        for name, kind in (("endpoints", Endpoints), ("service", ServiceParams),
                           ("output", OutputParams), ("curve", CurveParams),
                           ("frames", FrameParams)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"{name} must be a {kind.__name__}, got {getattr(self, name)!r}")
        if not isinstance(self.live, Mapping) or not all(isinstance(k, str) for k in self.live):
            raise ValueError(f"live must be a table of parameter names, got {self.live!r}")
        _set(self, "live", dict(self.live))
        exposed = self.endpoints.non_loopback()
        if exposed and not self.curve.enabled:
            names = ", ".join(f"endpoints.{n} ({getattr(self.endpoints, n)})" for n in exposed)
            raise ValueError(
                f"{names} would be reachable from other machines: binding beyond loopback needs "
                f"CURVE keys (set curve.server_secret_key and curve.authorized_clients; make "
                f"them with 'live-stack keys DIR')"
            )


#: The TOML sections and the dataclass each one fills.
SECTIONS: dict[str, type] = {
    "endpoints": Endpoints,
    "service": ServiceParams,
    "output": OutputParams,
    "curve": CurveParams,
    "frames": FrameParams,
}


def read_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file, raising ValueError naming the file on any problem."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ValueError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config file {p} is not valid TOML: {exc}") from None


def build_config(
    data: Mapping[str, Any] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    origin: str = "config",
) -> DaemonConfig:
    """Build a :class:`DaemonConfig` from parsed TOML ``data`` and ``overrides``.

    Parameters
    ----------
    data : mapping, optional
        ``{section: {key: value}}`` as read from the TOML file.
    overrides : mapping, optional
        ``{"section.key": value}`` from command-line flags; these win over ``data``.
        A value of None is ignored (flag not given).
    origin : str
        Named in error messages (the file name).

    Raises
    ------
    ValueError
        Naming the unknown section or key, or the invalid value.
    """
    tables: dict[str, dict[str, Any]] = {name: {} for name in (*SECTIONS, "live")}
    for section, table in (data or {}).items():
        if section not in tables:
            raise ValueError(f"{origin}: unknown section [{section}]; expected one of "
                             f"{sorted(tables)}")
        if not isinstance(table, Mapping):
            raise ValueError(f"{origin}: [{section}] must be a table")
        tables[section].update(table)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, name = key.partition(".")
        if section not in tables or not name:
            raise ValueError(f"override {key!r} must be SECTION.KEY with a known section")
        tables[section][name] = value
    parts: dict[str, Any] = {}
    for section, kind in SECTIONS.items():
        known = {f.name for f in dataclasses.fields(kind)}
        unknown = sorted(set(tables[section]) - known)
        if unknown:
            raise ValueError(f"{origin}: unknown key(s) in [{section}]: {', '.join(unknown)}; "
                             f"expected some of {sorted(known)}")
        try:
            parts[section] = kind(**tables[section])
        except ValueError as exc:
            raise ValueError(f"{origin}: {exc}") from None
    try:
        return DaemonConfig(**parts, live=tables["live"])
    except ValueError as exc:
        raise ValueError(f"{origin}: {exc}") from None


def load_config(path: str | Path | None = None, *,
                overrides: Mapping[str, Any] | None = None) -> DaemonConfig:
    """Read the TOML file at ``path`` (or use the defaults) and apply ``overrides``."""
    data = read_toml(path) if path is not None else {}
    return build_config(data, overrides=overrides, origin=str(path) if path else "defaults")
