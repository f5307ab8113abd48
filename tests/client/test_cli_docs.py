"""docs/cli.md names every command and every option of the `headwater`
command, so the reference cannot silently fall behind the code."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import click

from headwater import cli

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def _commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        if isinstance(command, click.Group):
            yield from _commands(command, path + " ")
        else:
            yield path, command


def test_every_command_and_option_is_in_the_reference() -> None:
    """Each leaf command's last word and each of its long options appear in
    docs/cli.md."""
    text = DOC.read_text(encoding="utf-8")
    missing = []
    for path, command in _commands(cli.main):
        if path.rsplit(" ", 1)[-1] not in text:
            missing.append(path)
        options = [opt for param in command.params for opt in getattr(param, "opts", [])]
        missing.extend(
            f"{path} {opt}" for opt in options if opt.startswith("--") and opt not in text
        )
    assert [] == missing


def test_the_walk_finds_the_commands() -> None:
    """The check above sees all the leaf commands (so it cannot pass vacuously)."""
    expected = {
        "consume",
        "groups describe",
        "groups list",
        "produce",
        "serve",
        "topics create",
        "topics delete",
        "topics describe",
        "topics list",
        "tree",
        "repair",
        "bench",
        "transactions describe",
        "transactions list",
        "actors inspect",
        "actors kill",
        "run",
        "tables get",
    }
    assert expected == {path for path, _ in _commands(cli.main)}
