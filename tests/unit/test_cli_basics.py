"""The `prism` command line as a Unix tool: --version, -h on every command, usage errors as one line + exit 2."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from prismatic.cli import main


def test_version_prints_the_installed_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"prism (prismatic) {version('prismatic')}"


@pytest.mark.parametrize("argv", [["-h"], ["ingest", "-h"], ["assets", "-h"], ["assets", "fetch", "-h"]])
def test_short_help_is_the_long_help(argv, capsys):
    assert main(argv) == 0
    short = capsys.readouterr().out
    assert main([*argv[:-1], "--help"]) == 0
    assert short == capsys.readouterr().out and "Usage: prism" in short


def test_a_missing_option_is_one_line_with_the_usage_and_exit_2(capsys):
    assert main(["ingest", "x.jsonl"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "error: Missing option '--source' / '-s'."
    assert err[1].startswith("hint: Usage: prism ingest") and len(err) == 2
