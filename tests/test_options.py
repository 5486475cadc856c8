"""Options derived from the parameter dataclasses: names, help, precedence, config files."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import pytest

from live_stack.apgrid import APParams
from live_stack.live import LiveParams
from live_stack.options import add_options, as_dict, build, field_help, known_keys, load_config
from live_stack.reprocess_cli import SPECS, parser


@dataclass(frozen=True)
class DemoParams:
    """A parameter dataclass of every supported field type."""

    size: int = 48  # side of the box in pixels
    share: float = 0.5  # a fraction
    method: str = "laplacian"  # how to measure
    enabled: bool = False  # switch it on
    sizes: tuple[str, ...] = ("10%",)  # several values

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"demo_size must be >= 1, got {self.size}")


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_options(p, DemoParams, "demo")
    return p.parse_args(argv)


def test_field_help_reads_the_field_comments() -> None:
    helps = field_help(DemoParams)
    assert helps == {"size": "side of the box in pixels", "share": "a fraction",
                     "method": "how to measure", "enabled": "switch it on",
                     "sizes": "several values"}


@pytest.mark.parametrize("cls", [*SPECS.values(), LiveParams])
def test_every_parameter_field_has_a_comment(cls) -> None:
    """Project standard: a comment on every field (it is the option's help text)."""
    helps = field_help(cls)
    missing = [f.name for f in dataclasses.fields(cls) if not helps.get(f.name)]
    assert not missing, f"{cls.__name__} fields without a comment: {missing}"


def test_options_are_named_after_prefix_and_field() -> None:
    args = _parse(["--demo-size", "64", "--demo-share", "0.25", "--demo-method", "gradient",
                   "--demo-enabled", "--demo-sizes", "5%"])
    assert args.demo_size == 64 and isinstance(args.demo_size, int)
    assert args.demo_share == 0.25 and args.demo_method == "gradient"
    assert args.demo_enabled is True and args.demo_sizes == "5%"
    assert _parse(["--no-demo-enabled"]).demo_enabled is False
    # not given: None, so that build() can tell
    assert vars(_parse([])) == {"demo_size": None, "demo_share": None, "demo_method": None,
                                "demo_enabled": None, "demo_sizes": None}


def test_bad_option_type_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit):
        _parse(["--demo-size", "big"])
    assert "--demo-size" in capsys.readouterr().err


def test_build_precedence_option_over_config_over_default() -> None:
    given = vars(_parse(["--demo-size", "64"]))
    config = {"demo_size": 32, "demo_method": "gradient"}
    p = build(DemoParams, "demo", given, config)
    assert p == DemoParams(size=64, method="gradient")
    assert build(DemoParams, "demo", vars(_parse([])), {}) == DemoParams()


def test_build_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="demo_size"):
        build(DemoParams, "demo", {"demo_size": 0}, {})
    with pytest.raises(ValueError, match="ap"):
        build(APParams, "ap", {}, {"ap_size": "big"})  # wrong type from a config file


@pytest.mark.parametrize(("key", "value", "kind"), [
    ("ap_size", "64", "whole number"), ("ap_size", 64.5, "whole number"),
    ("ap_size", True, "whole number"), ("local_min_snr", "x", "number"),
    ("local_min_snr", False, "number"), ("local_snr_weights", 1, "true or false"),
])
def test_config_values_of_the_wrong_type_are_named(key, value, kind) -> None:
    """A TOML value of the wrong type is refused naming its key and what it must be,
    not passed on (``wide_margin = 2.5`` once reached numpy as a TypeError)."""
    from live_stack.local import LocalParams

    cls, prefix = (APParams, "ap") if key.startswith("ap_") else (LocalParams, "local")
    with pytest.raises(ValueError, match=f"{key} must be") as err:
        build(cls, prefix, {}, {key: value})
    assert kind in str(err.value)
    assert build(cls, prefix, {}, {}) == cls()  # an int where a float goes is fine
    assert build(LocalParams, "local", {}, {"local_min_snr": 4}).min_snr == 4.0


def test_load_config_flattens_tables(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('stack = ["5%", "10%"]\ndemo_share = 0.75\n[demo]\nsize = 16\n')
    known = known_keys({"demo": DemoParams}) | {"stack"}
    assert load_config(path, known=known) == {"stack": ["5%", "10%"], "demo_share": 0.75,
                                              "demo_size": 16}


@pytest.mark.parametrize(("text", "match"), [
    ("demo_sise = 3\n", r"unknown config keys: demo_sise"),
    ("[demo]\nsise = 3\nfoo = 1\n", r"unknown config keys: demo_foo, demo_sise"),
    ("[demo\nsize = 3\n", "not valid TOML"),
])
def test_load_config_errors_name_the_file_and_key(tmp_path, text, match) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        load_config(path, known=known_keys({"demo": DemoParams}))
    assert "bad.toml" in str(err.value)


def test_load_config_missing_file(tmp_path) -> None:
    with pytest.raises(ValueError, match="absent.toml"):
        load_config(tmp_path / "absent.toml", known=set())


def test_known_keys_and_as_dict() -> None:
    assert known_keys({"demo": DemoParams}) == {"demo_size", "demo_share", "demo_method",
                                                "demo_enabled", "demo_sizes"}
    d = as_dict(DemoParams())
    assert d["sizes"] == ["10%"] and d["size"] == 48  # tuples become lists (JSON, TOML)


def test_reprocess_has_an_option_for_every_field() -> None:
    text = parser().format_help()
    for prefix, cls in SPECS.items():
        for f in dataclasses.fields(cls):
            flag = f"--{prefix}-{f.name.replace('_', '-')}"
            assert flag in text, flag
    assert f"(default: {APParams().size})" in text  # defaults are shown
