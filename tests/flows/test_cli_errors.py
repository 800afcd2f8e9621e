"""User-facing CLI failures: one clear line on stderr, a non-zero exit, and no files left behind."""

from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def _fails(*args, env=None):
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def test_campaign_names_cannot_leave_the_workspace(tmp_path):
    workspace = tmp_path / "a" / "b" / "w"
    for command in (["simulate", "--dataset", "iris"], ["round", "--dataset", "iris"], ["queue", "list"]):
        error = _fails(*command, "--campaign", "../../../escaped", "--workspace", str(workspace))
        assert "campaign name '../../../escaped' is not allowed" in error
    assert list(tmp_path.iterdir()) == []
