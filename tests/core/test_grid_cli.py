"""The argument handling the grid commands (qat.plan, qat.status) share."""

from qat.orchestration.grid import cli_overrides


def test_multirun_flag_is_accepted_and_dropped():
    assert cli_overrides(["-m", "grid=smoke", "bits=2,4"], "doc") == ["grid=smoke", "bits=2,4"]
    assert cli_overrides(["--multirun", "tokens=2M"], "doc") == ["tokens=2M"]


def test_help_prints_the_doc_and_returns_none(capsys):
    assert cli_overrides(["grid=smoke", "--help"], "Plan a grid.") is None
    assert "Plan a grid." in capsys.readouterr().out
