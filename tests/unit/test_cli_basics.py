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


# ---- commands built from the stage registry ------------------------------------------------------------------------


def stage_command(name):
    from prismatic.cli import command

    return command().commands[name]


def test_every_stage_is_a_command_with_its_declared_options():
    from prismatic.cli import command
    from prismatic.stages.registry import STAGES

    commands = command().commands
    assert list(commands)[: len(STAGES)] == [s.name for s in STAGES]  # help lists the stages in pipeline order
    for stage in STAGES:
        params = {p.name: p for p in commands[stage.name].params}
        assert set(params) == {o.name for o in stage.options} | {"fmt"}, stage.name
        assert commands[stage.name].help == stage.help
        for o in stage.options:
            p = params[o.name]
            assert p.required == o.required, (stage.name, o.name)
            if o.argument:
                assert p.param_type_name == "argument" and p.nargs == -1
                continue
            assert p.opts[0] == o.flag and (o.short in p.opts if o.short else len(p.opts) == 1)
            assert p.multiple == o.multiple and p.is_flag == (o.kind is bool)
            assert p.secondary_opts == ([f"--no-{o.flag[2:]}"] if o.negatable else [])


@pytest.mark.parametrize("argv", [["diversity", "-h"], ["study", "-h"], ["-h"], ["vacuum", "-h"]])
def test_flags_are_shown_as_flags(argv, capsys):
    """Typer showed `--exact <bool>`; a flag takes no value, so its help shows none."""
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "<bool>" not in out and "--help" in out


BAD_FORMAT = "error: Invalid value for '--format': 'xml' is not one of 'table', 'json', 'csv'."


@pytest.mark.parametrize(
    "argv, first",
    [
        (["score", "--limit", "0"], "error: Invalid value for '--limit': Input should be greater than or equal to 1"),
        (["ingest", "--source", "s"], "error: Missing argument 'PATHS'."),
        (["dedup", "--where", "x"], "error: No such option: --where (Possible options: --help)"),
        (["diversity", "--format", "xml"], BAD_FORMAT),
        (["status", "--format", "xml"], BAD_FORMAT),
        (["train", "--student", "big"], "error: Invalid value for '--student': 'big' is not one of "),
        (["diversity", "--exact", "yes"], "error: Got unexpected extra argument(s) (yes)"),
    ],
)  # fmt: skip
def test_usage_errors_of_stage_commands_are_one_line_exit_2(argv, first, capsys, tmp_path):
    assert main(["--set", f"data_root={tmp_path / 'lake'}", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(first) and len(err) == 2
    assert err[1].startswith(f"hint: Usage: prism {argv[0]} ") and err[1].endswith(f"(see prism {argv[0]} --help)")
    assert not (tmp_path / "lake").exists()  # refused before the store opens


# ---- output formats ------------------------------------------------------------------------------------------------


def test_json_is_strict_and_csv_flattens_nested_values(capsys):
    import csv
    import io
    import json
    import math

    import numpy as np

    from prismatic.output import print_rows

    rows = [
        {"name": "a", "value": float("nan"), "n": np.int64(3), "reasons": {"bad": 2}},
        {"name": "b", "value": 1.5, "n": 4, "reasons": {}, "extra": [1, 2]},
    ]
    print_rows(rows, "json")
    got = json.loads(capsys.readouterr().out)  # NaN is not JSON: it must come out as null
    assert got[0] == {"name": "a", "value": None, "n": 3, "reasons": {"bad": 2}} and got[1]["extra"] == [1, 2]
    print_rows(rows, "csv")
    back = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["name"] for r in back] == ["a", "b"] and list(back[0]) == ["name", "value", "n", "reasons", "extra"]
    assert back[0]["value"] == "" and json.loads(back[0]["reasons"]) == {"bad": 2} and back[1]["extra"] == "[1, 2]"
    assert float(back[1]["value"]) == 1.5 and not math.isnan(float(back[1]["value"]))


def test_piped_tables_are_not_cut_to_80_columns(capsys):
    from prismatic.output import CELL_CHARS, print_rows

    long = "w" * (CELL_CHARS - 10)
    print_rows([{"first": long, "second": "v" * 60, "third": 1.25}], "table", "wide")
    out = capsys.readouterr().out  # captured stdout is no terminal, like `| cat`
    line = next(ln for ln in out.splitlines() if long in ln)  # the cell whole, on one line
    assert "v" * 60 in line and "1.25" in line and len(line) > 2 * 80


def test_prism_assets_export_gsm_writes_worked_solutions(tmp_path, capsys):
    """The math study's pool file: GSM-Symbolic problems (reasoning-gym, the `gsm` extra) with worked solutions."""
    import json

    pytest.importorskip("reasoning_gym")
    out = tmp_path / "raw" / "gsm.jsonl"
    assert main(["assets", "export-gsm", str(out), "--size", "4", "--seed", "3"]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 4 and "4 of 4 GSM-Symbolic problems (seed 3)" in capsys.readouterr().out
    assert all(set(r) == {"prompt", "completion"} and "\n#### " in r["completion"] for r in rows)
    assert main(["assets", "export-gsm", str(tmp_path / "x.jsonl"), "--seed", "1"]) == 2  # the benchmark's seed
    assert "seed 1 is the gsm_symbolic benchmark's" in capsys.readouterr().err
