"""The ``live-stack`` command: one entry point, one sub-command per tool.

The image pipeline's own sub-commands are listed here. The other packages' sub-commands
(the daemon's, the viewer's) are not named here: each package lists its own in a table
``COMMANDS`` like the one below, and declares that table in ``pyproject.toml`` as an entry
point of the group :data:`COMMAND_GROUP` (pyproject is the one place that knows every
package). A table is loaded only when one of its commands is run or the usage is shown,
so that importing :mod:`live_stack` never pulls in ZeroMQ or Qt, and a pipeline command
never loads the other packages.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping, Sequence

from live_stack.allocator import tune_allocator
from live_stack.blas import limit_blas_threads

#: Entry-point group of the other packages' command tables.
COMMAND_GROUP = "live_stack.commands"

#: sub-command -> ("module:function", one-line help). Each function takes argv (the
#: arguments after the sub-command) and returns the process exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "reprocess": ("live_stack.reprocess_cli:main", "stack saved SER/AVI videos and image folders"),
    "repair": ("live_stack.repair_cli:main", "rewrite the header of crash-cut SER recordings"),
    "simulate": ("live_stack.simulate.cli:main", "render a simulated capture with a known truth"),
    "master-dark": ("live_stack.calibrate_cli:dark_main", "combine dark frames into a master dark"),
    "master-flat": ("live_stack.calibrate_cli:flat_main", "combine flat frames into a master flat"),
}


def all_commands() -> dict[str, tuple[str, str]]:
    """This package's commands and those of every installed :data:`COMMAND_GROUP` table.

    Raises
    ------
    ValueError
        If two tables name the same command (naming it and the tables).
    """
    from importlib.metadata import entry_points  # only when another package's command runs

    found = dict(COMMANDS)
    owner = dict.fromkeys(COMMANDS, __name__)
    for ep in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        table: Mapping[str, tuple[str, str]] = ep.load()
        for name, entry in table.items():
            if name in found:
                raise ValueError(f"command {name!r} is offered by both {owner[name]} and "
                                 f"{ep.value}")
            found[name] = entry
            owner[name] = ep.value
    return found


def _usage(commands: Mapping[str, tuple[str, str]]) -> str:
    lines = ["usage: live-stack COMMAND [ARGS...]", "", "commands:"]
    width = max(len(name) for name in commands)
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in commands.items()]
    lines += ["", "Run 'live-stack COMMAND --help' for the options of a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``live-stack COMMAND ...`` to the command's module."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(_usage(all_commands()))
        return 0 if args else 2
    if args[0] == "--version":
        from live_stack import __version__

        print(f"live-stack {__version__}")
        return 0
    name, rest = args[0], args[1:]
    commands = COMMANDS if name in COMMANDS else all_commands()
    if name not in commands:
        print(f"live-stack: unknown command {name!r} (another package's command is found "
              f"through its entry point {COMMAND_GROUP!r}: after pyproject.toml changed, "
              f"reinstall with scripts/setup.sh)\n\n{_usage(commands)}", file=sys.stderr)
        return 2
    target, _ = commands[name]
    tune_allocator()
    limit_blas_threads()
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
