"""ZeroMQ CURVE keys for the daemon and its clients.

``live-stack keys DIR`` writes::

    DIR/server.key, DIR/server.key_secret          the daemon's key pair
    DIR/client.key, DIR/client.key_secret          one client key pair
    DIR/authorized_clients/client.key              the public keys the daemon accepts

The daemon is configured with ``server.key_secret`` and the ``authorized_clients``
folder (``--server-secret-key`` and ``--authorized-clients``, or the ``[curve]``
table); a client (source, ``ctl``, viewer) needs ``server.key`` (the server's public
key) and its own ``client.key_secret`` (``--server-key`` and ``--client-key``). More
clients: ``live-stack keys DIR --client NAME --client-only`` adds ``NAME.key`` to
``authorized_clients``.
"""

from __future__ import annotations

import argparse
import os
import shutil
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


def start_authenticator(
    context: zmq.Context, authorized_clients: str | Path
) -> ThreadAuthenticator:
    """Start a ZAP authenticator accepting the CURVE keys found in ``authorized_clients``.

    Raises
    ------
    ValueError
        If the folder does not exist or holds no public key.
    """
    d = Path(authorized_clients)
    if not d.is_dir():
        raise ValueError(f"curve.authorized_clients: {d} is not a folder")
    if not any(d.glob("*.key")):
        raise ValueError(f"curve.authorized_clients: {d} holds no client public key (*.key)")
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain=ZAP_DOMAIN, location=str(d))
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


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--server-key`` and ``--client-key`` to a client's argument parser."""
    group = parser.add_argument_group("CURVE security (daemons bound beyond loopback)")
    group.add_argument("--server-key", metavar="FILE", default="",
                       help="the daemon's public key file (server.key)")
    group.add_argument("--client-key", metavar="FILE", default="",
                       help="this client's secret key file (client.key_secret)")


def client_curve_from_args(args: argparse.Namespace) -> ClientCurve | None:
    """The :class:`ClientCurve` given on the command line, or None (ValueError if half)."""
    server_key = getattr(args, "server_key", "") or ""
    client_key = getattr(args, "client_key", "") or ""
    if not server_key and not client_key:
        return None
    if not (server_key and client_key):
        raise ValueError("--server-key and --client-key must be given together")
    return ClientCurve(server_key, client_key)


def apply_client_curve(socket: zmq.Socket, curve: ClientCurve | None) -> None:
    """Configure ``socket`` for ``curve`` if given (call before connect)."""
    if curve is not None:
        curve.apply(socket)
