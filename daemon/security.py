"""ZeroMQ CURVE keys for the daemon and its clients.

``live-stack keys DIR`` writes::

    DIR/server.key, DIR/server.key_secret          the daemon's key pair
    DIR/client.key, DIR/client.key_secret          one client key pair
    DIR/authorized_clients/client.key              the public keys the daemon accepts

The daemon is configured with ``server.key_secret`` and the ``authorized_clients``
folder (``--server-secret-key`` and ``--authorized-clients``, or the ``[curve]``
table); a client (source, ``ctl``, viewer) needs ``server.key`` (the server's public
key) and its own ``client.key_secret`` (``--server-key`` and ``--client-key``, or
``--keys DIR`` for a folder holding both under these names). More
clients: ``live-stack keys DIR --client NAME --client-only`` adds ``NAME.key`` to
``authorized_clients``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

#: File permission of secret key files.
SECRET_MODE = 0o600

#: Folder, inside the keys folder, of the public keys the daemon accepts.
AUTHORIZED_DIR = "authorized_clients"

#: ZAP domain the daemon's CURVE sockets use.
ZAP_DOMAIN = "live-stack"

#: Seconds between two warnings about refused clients (the ones between are counted).
REFUSED_LOG_INTERVAL = 10.0

#: Seconds a per-message check trusts the keys read last before it looks at the folder
#: again (a handshake always looks).
KEYS_RECHECK = 1.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeyFiles:
    """Paths written by :func:`make_keys`."""

    server_public: Path  # server.key: given to clients
    server_secret: Path  # server.key_secret: the daemon's curve.server_secret_key
    client_public: Path  # NAME.key: copied into authorized_clients
    client_secret: Path  # NAME.key_secret: given to the client
    authorized_clients: Path  # the daemon's curve.authorized_clients


def make_keys(directory: str | Path, *, client: str = "client", server: bool = True) -> KeyFiles:
    """Create CURVE key pairs for the daemon and one client in ``directory``.

    Parameters
    ----------
    directory : str or Path
        Folder to write into (created if missing).
    client : str
        Name of the client key pair (``NAME.key`` and ``NAME.key_secret``).
    server : bool
        Also create the server pair; when False an existing one is kept.

    Raises
    ------
    ValueError
        If ``client`` is not a plain name or a key file to be written already exists.
    """
    if not client or not client.replace("-", "").replace("_", "").isalnum() or client == "server":
        raise ValueError(f"client must be a plain name other than 'server', got {client!r}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    targets = [d / f"{client}.key", d / f"{client}.key_secret"]
    if server:
        targets += [d / "server.key", d / "server.key_secret"]
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        raise ValueError(f"key file(s) already exist, not overwriting: {', '.join(existing)}")
    if server:
        zmq.auth.create_certificates(d, "server")
    elif not (d / "server.key").exists():
        raise ValueError(f"no server key pair in {d}; run without server=False first")
    zmq.auth.create_certificates(d, client)
    auth_dir = d / AUTHORIZED_DIR
    auth_dir.mkdir(exist_ok=True)
    shutil.copyfile(d / f"{client}.key", auth_dir / f"{client}.key")
    for secret in d.glob("*.key_secret"):
        os.chmod(secret, SECRET_MODE)
    return KeyFiles(d / "server.key", d / "server.key_secret", d / f"{client}.key",
                    d / f"{client}.key_secret", auth_dir)


def load_key_pair(path: str | Path, *, what: str) -> tuple[bytes, bytes]:
    """Load ``(public, secret)`` from a ``.key_secret`` file; ValueError naming ``what``."""
    p = Path(path)
    try:
        public, secret = zmq.auth.load_certificate(p)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what}: cannot read key file {p}: {exc}") from None
    if not secret:
        raise ValueError(f"{what}: {p} holds no secret key (use the .key_secret file)")
    return public, secret


def load_public_key(path: str | Path, *, what: str) -> bytes:
    """Load a public key from a ``.key`` (or ``.key_secret``) file."""
    p = Path(path)
    try:
        public, _ = zmq.auth.load_certificate(p)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{what}: cannot read key file {p}: {exc}") from None
    if not public:
        raise ValueError(f"{what}: {p} holds no public key")
    return public


def configure_server(socket: zmq.Socket, public: bytes, secret: bytes) -> None:
    """Make ``socket`` a CURVE server (set before bind)."""
    socket.zap_domain = ZAP_DOMAIN.encode()
    socket.curve_secretkey = secret
    socket.curve_publickey = public
    socket.curve_server = True


class AuthorizedKeys:
    """The public keys in the ``authorized_clients`` folder, as the folder is now.

    It is the daemon's ZAP authenticator's CURVE credentials provider (:meth:`callback`):
    every handshake is checked against the folder, which is read again whenever a
    ``*.key`` file in it was added, removed or changed, so a new key is accepted and a
    removed one refused without a restart. Connections made before a key was removed are
    cut off by the daemon with :meth:`allows_user_id`, which it asks for each message
    (ZeroMQ puts the key that authenticated the connection in each message's
    ``User-Id``). Refusals are logged at WARNING, at most once per
    :data:`REFUSED_LOG_INTERVAL` seconds for each client key (handshakes and messages
    apart), with the count of those in between.

    Parameters
    ----------
    folder : str or Path
        The ``curve.authorized_clients`` folder.

    Raises
    ------
    ValueError
        If the folder does not exist or holds no public key (at start).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise ValueError(f"curve.authorized_clients: {self.folder} is not a folder")
        self._lock = threading.Lock()
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self._keys: frozenset[bytes] = frozenset()
        self._checked = -math.inf  # time.monotonic() of the last look at the folder
        self._last_warning: dict[tuple[str, str], float] = {}  # by (kind, client key)
        self._unlogged: dict[tuple[str, str], int] = {}
        self.refused = 0  # handshakes and messages refused so far
        self.removals = 0  # times keys were removed from the folder (read again)
        self._look()
        if not self._keys:
            raise ValueError(f"curve.authorized_clients: {self.folder} holds no client public "
                             f"key (*.key)")

    def _scan(self) -> tuple[tuple[str, int, int], ...]:
        entries = []
        try:
            with os.scandir(self.folder) as it:
                for e in it:
                    if e.name.endswith(".key") and e.is_file():
                        st = e.stat()
                        entries.append((e.name, st.st_mtime_ns, st.st_size))
        except OSError:
            return ()
        return tuple(sorted(entries))

    def _look(self) -> frozenset[bytes]:
        """The keys, read again if the folder's key files changed since the last look."""
        with self._lock:
            self._checked = time.monotonic()
            signature = self._scan()
            if signature == self._signature:
                return self._keys
            try:
                keys = frozenset(zmq.auth.load_certificates(self.folder)) if signature else (
                    frozenset())
            except (OSError, ValueError) as exc:  # a file being written: keep the old keys
                log.warning("cannot read the authorised client keys in %s yet: %s",
                            self.folder, exc)
                return self._keys
            old, first = self._keys, self._signature is None
            self._keys, self._signature = keys, signature
            if old - keys:
                self.removals += 1
        if not first and keys != old:
            log.info("authorised client keys in %s read again: %d key(s), %d added, %d "
                     "removed", self.folder, len(keys), len(keys - old), len(old - keys))
        return keys

    def refresh(self) -> int:
        """Look at the folder if the last look is :data:`KEYS_RECHECK` seconds old;
        return :attr:`removals` (for a publisher that must drop removed subscribers)."""
        if time.monotonic() - self._checked >= KEYS_RECHECK:
            self._look()
        return self.removals

    def callback(self, domain: str, key: bytes) -> bool:
        """Whether the z85 ``key`` may complete a handshake (the ZAP callback)."""
        if key in self._look():
            return True
        text = key.decode("ascii", "replace")
        self._refuse(("handshake", text), f"refused a CURVE handshake: client key {text} is "
                     f"not in {self.folder}")
        return False

    def allows_user_id(self, user_id: str | None) -> bool:
        """Whether a message from a connection authenticated as ``user_id`` (the z85 key
        ZeroMQ gives as the message's ``User-Id``) is still authorised; a refusal is
        logged (rate-limited)."""
        keys = self._keys
        if time.monotonic() - self._checked >= KEYS_RECHECK:
            keys = self._look()
        if user_id is not None and user_id.encode("ascii", "replace") in keys:
            return True
        self._refuse(("message", str(user_id)), f"refused a message from client key {user_id}: "
                     f"it was removed from {self.folder}")
        return False

    def _refuse(self, what: tuple[str, str], message: str) -> None:
        """Count a refusal; log it unless one of the same kind and key was logged less than
        :data:`REFUSED_LOG_INTERVAL` seconds ago."""
        now = time.monotonic()
        with self._lock:
            self.refused += 1
            if now - self._last_warning.get(what, -math.inf) < REFUSED_LOG_INTERVAL:
                self._unlogged[what] = self._unlogged.get(what, 0) + 1
                return
            self._last_warning[what] = now
            unlogged = self._unlogged.pop(what, 0)
        more = f" ({unlogged} more refused since the last warning)" if unlogged else ""
        log.warning("%s%s", message, more)


def start_authenticator(
    context: zmq.Context, authorized_clients: str | Path | AuthorizedKeys
) -> ThreadAuthenticator:
    """Start a ZAP authenticator accepting the CURVE keys found in ``authorized_clients``
    (a folder, read again when it changes: see :class:`AuthorizedKeys`).

    Raises
    ------
    ValueError
        If the folder does not exist or holds no public key.
    """
    keys = (authorized_clients if isinstance(authorized_clients, AuthorizedKeys)
            else AuthorizedKeys(authorized_clients))
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=keys)
    return auth


@dataclass(frozen=True)
class ClientCurve:
    """The key files a client needs to talk to a CURVE-enabled daemon."""

    server_key: str  # the daemon's public key file (server.key)
    client_key: str  # this client's secret key file (client.key_secret)

    def __post_init__(self) -> None:
        if bool(self.server_key) != bool(self.client_key):
            raise ValueError("server_key and client_key must be given together")

    def apply(self, socket: zmq.Socket) -> None:
        """Configure ``socket`` as a CURVE client (call before connect)."""
        server_public = load_public_key(self.server_key, what="server_key")
        public, secret = load_key_pair(self.client_key, what="client_key")
        socket.curve_serverkey = server_public
        socket.curve_publickey = public
        socket.curve_secretkey = secret


#: File names inside a keys folder (``--keys DIR``, as made by ``live-stack keys DIR``):
#: the daemon's public key and the client's key pair.
SERVER_PUBLIC_FILE, CLIENT_SECRET_FILE = "server.key", "client.key_secret"


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--keys``, ``--server-key`` and ``--client-key`` to a client's argument parser
    (``ctl``, ``view`` and every source take the same three)."""
    group = parser.add_argument_group("CURVE security (daemons bound beyond loopback)")
    group.add_argument("--keys", metavar="DIR", default="",
                       help=f"CURVE keys folder as made by 'live-stack keys DIR', holding "
                            f"{SERVER_PUBLIC_FILE} and {CLIENT_SECRET_FILE} (or give the two "
                            f"files with the options below)")
    group.add_argument("--server-key", metavar="FILE", default="",
                       help=f"the daemon's public key file ({SERVER_PUBLIC_FILE})")
    group.add_argument("--client-key", metavar="FILE", default="",
                       help=f"this client's secret key file ({CLIENT_SECRET_FILE})")


def client_curve_from_args(args: argparse.Namespace) -> ClientCurve | None:
    """The :class:`ClientCurve` given on the command line, or None.

    ``--keys DIR`` stands for ``--server-key DIR/server.key --client-key
    DIR/client.key_secret``. Raises ValueError when only one of the two files is given,
    when ``--keys`` is given with them, or when a file of the folder is missing.
    """
    keys = str(getattr(args, "keys", "") or "")
    server_key = getattr(args, "server_key", "") or ""
    client_key = getattr(args, "client_key", "") or ""
    if keys:
        if server_key or client_key:
            raise ValueError("give either --keys or --server-key/--client-key, not both")
        d = Path(keys)
        if not d.is_dir():
            raise ValueError(f"--keys {keys}: no such folder (make one with 'live-stack keys')")
        server_key, client_key = str(d / SERVER_PUBLIC_FILE), str(d / CLIENT_SECRET_FILE)
        missing = [f for f in (server_key, client_key) if not Path(f).is_file()]
        if missing:
            raise ValueError(f"--keys {keys}: missing {', '.join(missing)}")
        return ClientCurve(server_key, client_key)
    if not server_key and not client_key:
        return None
    if not (server_key and client_key):
        raise ValueError("--server-key and --client-key must be given together")
    return ClientCurve(server_key, client_key)


def apply_client_curve(socket: zmq.Socket, curve: ClientCurve | None) -> None:
    """Configure ``socket`` for ``curve`` if given (call before connect)."""
    if curve is not None:
        curve.apply(socket)
