"""The ``live-stack`` dispatcher: the pipeline's commands here, the other packages' ones
found through their entry-point tables, none of them named by the pipeline package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import live_stack.cli as cli


def test_usage_lists_every_package_s_commands(capsys) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("reprocess", "simulate", "master-dark", "daemon", "source", "ctl", "keys",
                 "demo", "view"):
        assert f"\n  {name} " in out, name
    assert set(cli.all_commands()) >= {"reprocess", "daemon", "ctl", "view"}


def test_unknown_command_is_refused_with_the_usage(capsys) -> None:
    assert cli.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'frobnicate'" in err and "ctl" in err
    assert cli.main([]) == 2


def test_the_pipeline_package_names_no_package_above_it() -> None:
    """live_stack/cli.py imports nothing of daemon or viewer and names no module of theirs."""
    source = Path(cli.__file__).read_text(encoding="utf-8")
    tree = ast.parse(source)
    names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    strings = [n.value for n in ast.walk(tree)
               if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    for text in names + strings:
        assert not text.startswith(("daemon", "viewer")), text


def test_a_pipeline_command_loads_no_other_package() -> None:
    code = ("import sys\nfrom live_stack.cli import main\n"
            "assert main(['--version']) == 0\n"
            "try:\n    main(['master-dark', '--help'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0\n"
            "top = {m.split('.')[0] for m in sys.modules}\n"
            "bad = sorted(top & {'daemon', 'viewer', 'zmq'})\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


def test_a_daemon_command_runs_through_the_dispatcher() -> None:
    proc = subprocess.run([sys.executable, "-m", "live_stack.cli", "keys", "--help"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "usage: live-stack keys" in proc.stdout
