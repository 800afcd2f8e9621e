"""`beliefloop <command> --help` as people read it: every option's help shown whole, defaults that are the settings'."""

import re

import pytest
import typer
from typer.testing import CliRunner

from flows.cli import app
from flows.settings import Settings

runner = CliRunner()


def _commands(group, path: tuple[str, ...] = ()):
    """(command path, command) of every command under ``group`` (typer's own click: groups have ``commands``)."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


COMMANDS = dict(_commands(typer.main.get_command(app)))


def _flat(text: str) -> str:
    """The rendered help without its panels' borders and line wrapping."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_every_option_help_is_shown_whole(path):
    """Rich reads ``[...]`` in a help text as a style tag and drops it: "Campaign workspace folder [workspace]."
    was shown as "Campaign workspace folder ." in every command's help. A docstring's reST (double backquotes) is not
    rendered either."""
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    shown = _flat(result.output)
    helps = [param.help for param in COMMANDS[path].params if getattr(param, "help", None)]
    assert helps, f"{path}: no option documented"
    assert "``" not in shown, f"beliefloop {' '.join(path)} --help shows reST markup"
    for text in helps:
        assert _flat(text) in shown, f"beliefloop {' '.join(path)} --help lost part of {text!r}"


def test_the_defaults_the_help_states_are_the_settings():
    """Options whose default comes from the settings (``None`` on the command line) say what that default is."""
    defaults = Settings()
    stated = {
        "--rounds": defaults.campaign.rounds,
        "--k": defaults.campaign.k,
        "--initial": defaults.campaign.initial,
        "--samples": defaults.acquisition.samples,
        "--seed": defaults.campaign.seed,
        "--shards": defaults.acquisition.shards,
        "--acquisition": defaults.acquisition.name,
        "--workspace": f"./{defaults.workspace}",
    }
    checked = set()
    for path, command in COMMANDS.items():
        for param in command.params:
            flag = next((opt for opt in param.opts if opt in stated), None)
            if flag is None:
                continue
            assert f"(default: {stated[flag]})" in param.help, f"beliefloop {' '.join(path)} {flag}: {param.help!r}"
            checked.add(flag)
    assert checked == set(stated)
