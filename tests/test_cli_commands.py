"""The ``dmlkit`` command: extra sub-commands added through ``add_command`` functions."""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

import pytest

import dmlkit.cli
from dmlkit.training.cli import main


def _add_echo(commands: Any) -> None:
    parser = commands.add_parser("echo", help="print a word")
    parser.add_argument("word")

    def run(args: argparse.Namespace) -> int:
        print(f"echo:{args.word}")
        return 3

    parser.set_defaults(handler=run)


def test_an_extra_command_is_parsed_and_its_handler_gives_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["echo", "hello"], [_add_echo]) == 3
    assert capsys.readouterr().out == "echo:hello\n"


def test_without_the_extra_command_it_is_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["echo", "hello"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'echo'" in capsys.readouterr().err


def test_every_listed_module_adds_its_command() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command")
    for name in dmlkit.cli.COMMAND_MODULES:
        before = set(commands.choices)
        __import__(name, fromlist=["add_command"]).add_command(commands)
        added = set(commands.choices) - before
        assert len(added) == 1, f"{name} must add exactly one sub-command, added {sorted(added)}"
        command = commands.choices[added.pop()]
        actions = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        leaves = [p for a in actions for p in a.choices.values()] if actions else [command]
        assert leaves and all(leaf.get_default("handler") is not None for leaf in leaves), name


def test_python_dash_m_dmlkit_lists_the_commands() -> None:
    done = subprocess.run([sys.executable, "-m", "dmlkit", "--help"], capture_output=True, text=True, check=True)
    for command in ("train", "embed", "eval", "index", "benchmark", "topics", "tldr"):
        assert command in done.stdout
