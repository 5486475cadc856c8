"""The daemon's sub-commands: ``daemon``, ``source``, ``ctl``, ``keys`` and ``demo``.

Each ``*_main`` takes the arguments after the sub-command and returns the exit code;
``live_stack/cli.py`` dispatches to them (see :data:`COMMANDS`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from daemon.config import (
    DEFAULT_CONTROL,
    LOG_LEVELS,
    SAVE_FORMATS,
    DaemonConfig,
    build_config,
    check_live_value,
    read_toml,
)

log = logging.getLogger("daemon")

#: Seconds between health checks of the daemon's threads when systemd sets no watchdog.
HEALTH_INTERVAL = 1.0

#: Exit codes.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_ANSWER = 0, 1, 2, 3


def _error(prog: str, msg: object, code: int = EXIT_USAGE) -> int:
    print(f"live-stack {prog}: error: {msg}", file=sys.stderr)
    return code


def _parse_value(text: str) -> Any:
    """A command-line value: JSON if it parses (numbers, true/false, lists), else text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


# -- daemon ----------------------------------------------------------------------------


def daemon_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="live-stack daemon",
        description="Run the live stacking daemon: frames pushed to the ingest socket are "
        "stacked live; the stack and the status are published; a control socket takes "
        "commands. Options override the --config file; see docs/daemon.example.toml.",
    )
    d = DaemonConfig()
    p.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p.add_argument("--ingest", metavar="ENDPOINT",
                   help=f"where sources push frames (endpoints.ingest; {d.endpoints.ingest})")
    p.add_argument("--publish", metavar="ENDPOINT",
                   help=f"where stacks and status are published (endpoints.publish; "
                   f"{d.endpoints.publish})")
    p.add_argument("--control", metavar="ENDPOINT",
                   help=f"where control requests are answered (endpoints.control; "
                   f"{d.endpoints.control})")
    p.add_argument("--output", metavar="DIR",
                   help=f"folder for stacks, logs and recordings (output.directory; "
                   f"$STATE_DIRECTORY or ./{d.output.directory})")
    p.add_argument("--save-interval", type=float, metavar="S",
                   help=f"seconds between saves of the stack, 0: at stop only "
                   f"(output.save_interval; {d.output.save_interval:g})")
    p.add_argument("--format", choices=SAVE_FORMATS,
                   help=f"file format of the saved stack (output.format; {d.output.format})")
    p.add_argument("--record", action=argparse.BooleanOptionalAction, default=None,
                   help="record every frame received into a SER file (output.record)")
    p.add_argument("--queue-size", type=int, metavar="N",
                   help=f"frames waiting for the stacker before the oldest are dropped "
                   f"(service.queue_size; {d.service.queue_size})")
    p.add_argument("--queue-mib", type=float, metavar="MIB",
                   help=f"most MiB of frames waiting for the stacker (service.queue_mib; "
                   f"{d.service.queue_mib:g})")
    p.add_argument("--publish-interval", type=float, metavar="S",
                   help=f"seconds between published stacks (service.publish_interval; "
                   f"{d.service.publish_interval:g})")
    p.add_argument("--log-level", choices=LOG_LEVELS,
                   help=f"logging level (service.log_level; {d.service.log_level})")
    p.add_argument("--server-secret-key", metavar="FILE",
                   help="the daemon's CURVE secret key, server.key_secret "
                   "(curve.server_secret_key)")
    p.add_argument("--authorized-clients", metavar="DIR",
                   help="folder of the public keys of the clients allowed in "
                   "(curve.authorized_clients)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a live stacker parameter, as in the [live] table; repeatable")
    return p


def daemon_config(args: argparse.Namespace) -> Any:
    """The :class:`~daemon.config.DaemonConfig` from parsed arguments (ValueError if bad)."""
    overrides: dict[str, Any] = {
        "endpoints.ingest": args.ingest,
        "endpoints.publish": args.publish,
        "endpoints.control": args.control,
        "output.directory": args.output,
        "output.save_interval": args.save_interval,
        "output.format": args.format,
        "output.record": args.record,
        "service.queue_size": args.queue_size,
        "service.queue_mib": args.queue_mib,
        "service.publish_interval": args.publish_interval,
        "service.log_level": args.log_level,
        "curve.server_secret_key": args.server_secret_key,
        "curve.authorized_clients": args.authorized_clients,
    }
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--set takes NAME=VALUE, got {item!r}")
        overrides[f"live.{name}"] = _parse_value(value)
    data = read_toml(args.config) if args.config else {}
    in_file = "directory" in data.get("output", {})
    if args.output is None and not in_file and os.environ.get("STATE_DIRECTORY"):
        overrides["output.directory"] = os.environ["STATE_DIRECTORY"].split(":")[0]
    return build_config(data, overrides=overrides, origin=args.config or "command line")


def make_stacker(live: dict[str, Any]) -> Any:
    """A ``LiveStacker`` with the ``[live]`` parameters set by name (as ``ctl set`` does),
    all at once.

    Raises ValueError naming a bad key or value.
    """
    from live_stack.live import LiveParams, LiveStacker

    checked = {}
    for name, value in live.items():
        try:
            checked[name] = check_live_value(name, value)
        except ValueError as exc:
            raise ValueError(f"[live] {name}: {exc}") from None
    stacker = LiveStacker(LiveParams())
    try:
        stacker.set_params(checked)  # validated together: the order of the keys is free
    except ValueError as exc:
        raise ValueError(f"[live]: {exc}") from None
    return stacker


def daemon_main(argv: Sequence[str]) -> int:
    """``live-stack daemon``: run until SIGTERM/SIGINT or a ``shutdown`` request."""
    from daemon.lifecycle import StopSignal, SystemdNotifier
    from daemon.service import ServiceError, StackingService

    args = daemon_parser().parse_args(list(argv))
    try:
        config = daemon_config(args)
    except ValueError as exc:
        return _error("daemon", exc)
    logging.basicConfig(level=getattr(logging, config.service.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        stacker = make_stacker(config.live)
    except ValueError as exc:
        return _error("daemon", exc)
    with StopSignal() as stop, SystemdNotifier() as notifier:
        service = StackingService(config, stacker, on_stop_request=stop.trigger)
        try:
            service.start()
        except ServiceError as exc:
            return _error("daemon", exc, EXIT_FAILED)
        ep = service.endpoints
        notifier.notify(f"READY=1\nSTATUS=ingest {ep.ingest}, publish {ep.publish}, "
                        f"control {ep.control}")
        tick = notifier.watchdog_interval or HEALTH_INTERVAL
        healthy = True
        while not stop.wait(tick):
            healthy = service.healthy()
            if not healthy:
                log.error("a daemon thread died; stopping")
                break
            notifier.notify("WATCHDOG=1")
        notifier.notify("STOPPING=1")
        service.stop()
    # a stack that found no room on a full disk is said so in the log, and is no failure
    # of the daemon; any other failure to save it is
    failed = service.final_save_error
    return EXIT_OK if healthy and (failed is None or failed.no_room) else EXIT_FAILED


# -- source ----------------------------------------------------------------------------


def source_main(argv: Sequence[str]) -> int:
    """``live-stack source KIND ARGS...`` or ``live-stack source --config FILE``.

    The config file (used by the systemd template unit) is TOML with a ``[source]``
    table: ``kind`` (folder, replay or indi) and ``args``, the command-line arguments of
    that source as a list of strings.
    """
    from daemon.sources import SOURCES

    args = list(argv)
    usage = (f"usage: live-stack source {{{','.join(SOURCES)}}} ARGS...\n"
             f"       live-stack source --config FILE")
    if not args or args[0] in ("-h", "--help"):
        print(usage)
        print("\nRun 'live-stack source KIND --help' for the options of a source.")
        return EXIT_OK if args else EXIT_USAGE
    if args[0] == "--config" or args[0].startswith("--config="):
        path = args[0].partition("=")[2] or (args[1] if len(args) > 1 else "")
        if not path:
            return _error("source", "--config needs a FILE")
        try:
            kind, args = _source_config(path)
        except ValueError as exc:
            return _error("source", exc)
    else:
        kind, args = args[0], args[1:]
    if kind not in SOURCES:
        return _error("source", f"unknown source {kind!r}; expected one of {sorted(SOURCES)}")
    module_name, func_name = SOURCES[kind].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(args) or 0)


def _source_config(path: str) -> tuple[str, list[str]]:
    data = read_toml(path)
    table = data.get("source")
    if not isinstance(table, dict):
        raise ValueError(f"{path}: needs a [source] table with kind and args")
    unknown = sorted(set(table) - {"kind", "args"})
    if unknown:
        raise ValueError(f"{path}: unknown key(s) in [source]: {', '.join(unknown)}")
    kind, args = table.get("kind"), table.get("args", [])
    if not isinstance(kind, str):
        raise ValueError(f"{path}: [source] kind must be a string, got {kind!r}")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError(f"{path}: [source] args must be a list of strings, got {args!r}")
    return kind, list(args)


# -- ctl -------------------------------------------------------------------------------


def ctl_parser() -> argparse.ArgumentParser:
    from daemon.client import DEFAULT_TIMEOUT
    from daemon.protocol import CONTROL_FIELDS
    from daemon.security import add_client_arguments

    p = argparse.ArgumentParser(
        prog="live-stack ctl",
        description="Send one control command to a live-stack daemon and print the reply "
        "(status: a readable summary; --json: the reply as JSON, for scripts). "
        "Exit code 0: ok; 1: the daemon answered with an error; 3: no answer.",
    )
    p.add_argument("--json", action="store_true",
                   help="print the whole reply as JSON (the status map: see docs/protocol.md)")
    p.add_argument("--control", metavar="ENDPOINT", default=DEFAULT_CONTROL,
                   help=f"the daemon's control endpoint (default {DEFAULT_CONTROL})")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"seconds to wait for the reply (default {DEFAULT_TIMEOUT:g})")
    # camera_hello and camera_result are what sources send, not commands for a shell
    commands = sorted(c for c in CONTROL_FIELDS if c not in ("camera_hello", "camera_result"))
    p.add_argument("command", choices=commands, help="the command")
    p.add_argument("args", nargs="*",
                   help="for set: NAME VALUE, or several pairs set together (all or none; VALUE "
                        "is JSON or text); for camera: SETTING "
                        "VALUE (exposure S, gain G, binning N, roi '[X, Y, W, H]'); for "
                        "load: FILE (as history lists it)")
    add_client_arguments(p)
    return p


def ctl_main(argv: Sequence[str]) -> int:
    """``live-stack ctl [--control ENDPOINT] COMMAND [ARGS]``."""
    from daemon.client import NoAnswer, control_request
    from daemon.security import client_curve_from_args
    from daemon.summary import reply_text, status_text

    args = ctl_parser().parse_args(list(argv))
    fields: dict[str, Any] = {}
    command = args.command
    if command == "set":
        if not args.args or len(args.args) % 2:
            return _error("ctl", "set takes NAME VALUE [NAME VALUE ...]")
        pairs = dict(zip(args.args[::2], map(_parse_value, args.args[1::2]), strict=True))
        if len(pairs) * 2 != len(args.args):
            return _error("ctl", "set names a parameter twice")
        try:  # what the daemon would refuse (some, like huge numbers, cannot even be sent)
            checked = {name: check_live_value(name, value) for name, value in pairs.items()}
        except ValueError as exc:
            return _error("ctl", f"set: {exc}")
        if len(checked) == 1:
            (name, value), = checked.items()
            fields = {"name": name, "value": value}
        else:  # several at once: validated together, all or none
            command, fields = "set_params", {"params": checked}
    elif args.command == "camera":
        if len(args.args) != 2:
            return _error("ctl", "camera takes SETTING VALUE")
        fields = {"settings": {args.args[0]: _parse_value(args.args[1])}}
    elif args.command == "load":
        if len(args.args) != 1:
            return _error("ctl", "load takes FILE")
        fields = {"file": args.args[0]}
    elif args.args:
        return _error("ctl", f"{args.command} takes no arguments, got {args.args}")
    try:
        curve = client_curve_from_args(args)
        reply = control_request(args.control, command, timeout=args.timeout, curve=curve,
                                **fields)
    except NoAnswer as exc:
        return _error("ctl", exc, EXIT_NO_ANSWER)
    except ValueError as exc:
        return _error("ctl", exc)
    if not reply["ok"]:
        if args.json:
            _print(json.dumps(reply, indent=2, sort_keys=True))
        print(f"live-stack ctl: the daemon answered: {reply['error']}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:  # (a load's pixels are bytes: named by their length)
        _print(json.dumps(reply, indent=2, sort_keys=True,
                          default=lambda b: f"<{len(b)} bytes>"))
    elif command == "status":
        _print(status_text(reply["result"]))
    else:
        _print(reply_text(command, reply["result"]))
    return EXIT_OK


def _print(text: str) -> None:
    """Write ``text`` to stdout; a reader that went away (``ctl status | head``) is fine.

    After a broken pipe stdout is pointed at /dev/null, so that Python's own flush at
    exit does not fail on it again (which would print a traceback).
    """
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


# -- keys ------------------------------------------------------------------------------


def keys_main(argv: Sequence[str]) -> int:
    """``live-stack keys DIR``: make CURVE key pairs for the daemon and a client."""
    from daemon.security import make_keys

    p = argparse.ArgumentParser(
        prog="live-stack keys",
        description="Make ZeroMQ CURVE key pairs: the daemon's (server.key, "
        "server.key_secret) and a client's (NAME.key, NAME.key_secret), and an "
        "authorized_clients folder holding the client's public key.",
    )
    p.add_argument("directory", help="folder to write the keys into")
    p.add_argument("--client", default="client", help="client key name (default client)")
    p.add_argument("--client-only", action="store_true",
                   help="add a client to an existing folder, keeping the server keys")
    args = p.parse_args(list(argv))
    try:
        keys = make_keys(args.directory, client=args.client, server=not args.client_only)
    except (ValueError, OSError) as exc:
        return _error("keys", exc, EXIT_FAILED)
    print(f"daemon:  --server-secret-key {keys.server_secret} "
          f"--authorized-clients {keys.authorized_clients}")
    print(f"clients: --server-key {keys.server_public} --client-key {keys.client_secret}")
    print("Keep the .key_secret files private; copy only what each machine needs.")
    return EXIT_OK


# -- demo ------------------------------------------------------------------------------


def demo_main(argv: Sequence[str]) -> int:
    """``live-stack demo``: see :mod:`daemon.demo`."""
    from daemon.demo import main

    return main(argv)


#: This package's sub-commands for ``live-stack`` (name -> ("module:function", help));
#: pyproject.toml declares the table to ``live_stack.cli`` (entry-point group
#: ``live_stack.commands``).
COMMANDS: dict[str, tuple[str, str]] = {
    "daemon": ("daemon.cli:daemon_main", "run the live stacking daemon"),
    "source": ("daemon.cli:source_main", "push frames to a daemon (folder, replay, indi)"),
    "ctl": ("daemon.cli:ctl_main", "send one control command to a daemon"),
    "keys": ("daemon.cli:keys_main", "make CURVE key pairs for remote use"),
    "demo": ("daemon.cli:demo_main", "simulate a capture and stack it live through a daemon"),
}
