"""The ``live-stack`` command: one entry point, one sub-command per tool.

The image-pipeline sub-commands live in :mod:`live_stack`; the service sub-commands live
in the ``daemon`` and ``viewer`` packages and are imported only when invoked, so that
importing :mod:`live_stack` never pulls in ZeroMQ or Qt.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from live_stack.allocator import tune_allocator
from live_stack.blas import limit_blas_threads

#: sub-command -> ("module:function", one-line help). Each function takes argv (the
#: arguments after the sub-command) and returns the process exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "reprocess": ("live_stack.reprocess_cli:main", "stack saved SER/AVI videos and image folders"),
    "simulate": ("live_stack.simulate.cli:main", "render a simulated capture with a known truth"),
    "master-dark": ("live_stack.calibrate_cli:dark_main", "combine dark frames into a master dark"),
    "master-flat": ("live_stack.calibrate_cli:flat_main", "combine flat frames into a master flat"),
    "daemon": ("daemon.cli:daemon_main", "run the live stacking daemon"),
    "source": ("daemon.cli:source_main", "push frames to a daemon (folder, replay, indi)"),
    "ctl": ("daemon.cli:ctl_main", "send one control command to a daemon"),
    "keys": ("daemon.cli:keys_main", "make CURVE key pairs for remote use"),
    "demo": ("daemon.cli:demo_main", "simulate a capture and stack it live through a daemon"),
    "view": ("viewer.cli:main", "show a daemon's live stack and control it"),
}


def _usage() -> str:
    lines = ["usage: live-stack COMMAND [ARGS...]", "", "commands:"]
    width = max(len(name) for name in COMMANDS)
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'live-stack COMMAND --help' for the options of a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``live-stack COMMAND ...`` to the command's module."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        from live_stack import __version__

        print(f"live-stack {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"live-stack: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    target, _ = COMMANDS[name]
    tune_allocator()
    limit_blas_threads()
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
