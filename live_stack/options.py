"""One name per parameter, the same on the command line and in config files.

Every phase's parameters are a frozen dataclass with a prefix (``ap`` for
:class:`~live_stack.apgrid.APParams`, ...). Field ``size`` of the ``ap`` phase is the
option ``--ap-size`` and the config key ``ap_size``. This module derives the options from
the dataclasses, so the two can never drift apart, and builds the dataclasses back from
parsed options and config values (command line over config file over defaults).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import linecache
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomllib

_COMMENT_RE = re.compile(r"^\s*(\w+)\s*:.*?#\s*(.+)$")


def field_help(cls: type) -> dict[str, str]:
    """The trailing comment of each field in the class source, used as its help text.

    The class body is found by scanning its module's lines for ``class NAME`` (no
    parsing: ``inspect.getsource`` parses the whole module, which cost most of the
    ``reprocess`` start-up's option building). A dataclass's inherited fields take
    their comments from the base class that declares them.
    """
    helps: dict[str, str] = {}
    for base in reversed([c for c in cls.__mro__[1:] if dataclasses.is_dataclass(c)]):
        helps.update(_own_field_help(base))
    helps.update(_own_field_help(cls))
    return helps


def _own_field_help(cls: type) -> dict[str, str]:
    """:func:`field_help` of the fields written in ``cls``'s own body."""
    try:
        filename = inspect.getsourcefile(cls)
    except TypeError:
        return {}
    lines = linecache.getlines(filename) if filename else []
    start = re.compile(rf"^class\s+{re.escape(cls.__name__)}\b")
    helps: dict[str, str] = {}
    inside = False
    for line in lines:
        if not inside:
            inside = bool(start.match(line))
            continue
        if line.strip() and not line[0].isspace():
            break  # the end of the class body
        m = _COMMENT_RE.match(line)
        if m:
            helps.setdefault(m.group(1), m.group(2).strip())
    return helps


def _scalar_type(cls: type, name: str) -> type:
    hints = typing.get_type_hints(cls)
    hint = hints[name]
    if typing.get_origin(hint) is tuple:
        return str
    return hint if hint in (int, float, str, bool) else str


def add_options(parser: argparse.ArgumentParser, cls: type, prefix: str) -> None:
    """Add ``--PREFIX-FIELD`` options for every field of a parameter dataclass.

    Defaults are left as ``None`` so that :func:`build` can tell what was given.
    """
    group = parser.add_argument_group(f"{prefix} options ({cls.__name__})")
    helps = field_help(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        kind = _scalar_type(cls, f.name)
        flag = f"--{prefix}-{f.name.replace('_', '-')}"
        default = getattr(defaults, f.name)
        text = f"{helps.get(f.name, '')} (default: {default})"
        if kind is bool:
            group.add_argument(flag, dest=f"{prefix}_{f.name}", default=None,
                               action=argparse.BooleanOptionalAction, help=text)
        else:
            group.add_argument(flag, dest=f"{prefix}_{f.name}", default=None, type=kind,
                               metavar=f.name.upper(), help=text)


def build(cls: type, prefix: str, given: Mapping[str, Any], config: Mapping[str, Any]) -> Any:
    """Build a parameter dataclass from options over config values over defaults.

    Parameters
    ----------
    cls : type
        The dataclass.
    prefix : str
        Its prefix.
    given : mapping
        Parsed options (``vars(namespace)``); ``None`` means not given.
    config : mapping
        Flat config values (``{"ap_size": 64, ...}``).

    Returns
    -------
    object
        An instance of ``cls``; its ``__post_init__`` checks the values.
    """
    values = {}
    for f in dataclasses.fields(cls):
        key = f"{prefix}_{f.name}"
        if given.get(key) is not None:
            values[f.name] = given[key]
        elif key in config:
            values[f.name] = _checked(key, config[key], _scalar_type(cls, f.name))
    try:
        return cls(**values)
    except TypeError as exc:
        raise ValueError(f"bad value for a {prefix} option: {exc}") from None


#: What a config value of each scalar field type must be, for the error naming it.
_KINDS = {int: "a whole number", float: "a number", bool: "true or false"}


def _checked(key: str, value: Any, kind: type) -> Any:
    """A config value of a field of scalar type ``kind``, or a ValueError naming ``key``
    (TOML has types: ``"64"`` or ``64.5`` for a whole number is a mistake to report, not
    to pass on to the algorithm). Text fields are checked by the dataclass."""
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          bool: lambda v: isinstance(v, bool)}.get(kind)
    if ok is not None and not ok(value):
        raise ValueError(f"{key} must be {_KINDS[kind]}, got {value!r}")
    return float(value) if kind is float else value


def load_config(path: str | Path, *, known: set[str]) -> dict[str, Any]:
    """Read a TOML config file into a flat dict of ``prefix_field`` keys.

    Tables are flattened (``[ap] size = 64`` is ``ap_size``). Unknown keys are an error
    naming them and the file.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                flat[f"{key}_{sub}"] = v
        else:
            flat[key] = value
    unknown = sorted(set(flat) - known)
    if unknown:
        raise ValueError(f"{path}: unknown config keys: {', '.join(unknown)}")
    return flat


def known_keys(specs: Mapping[str, type]) -> set[str]:
    """All ``prefix_field`` keys of a set of ``{prefix: dataclass}``."""
    return {f"{p}_{f.name}" for p, cls in specs.items() for f in dataclasses.fields(cls)}


def as_dict(params: Any) -> dict[str, Any]:
    """A parameter dataclass as a JSON-friendly dict (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(params).items()}
