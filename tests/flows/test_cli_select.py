"""``beliefloop select`` runs model selection alone through the real CLI and prints the Bayes-factor table."""

import os
import subprocess
import sys

import pytest

LAST_LAYER_EVIDENCE = "Laplace log p(D₂|D₁) (last_layer, exact GGN, D₁ = 50% of the labels)"


def test_select_prints_bayes_factor_table(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows",
            "select",
            "--dataset",
            "wine",
            "--workspace",
            str(tmp_path / "w"),
            "--candidate",
            "tiny:hidden=2,depth=1",
            "--candidate",
            "h64:hidden=64",
            "--labels",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert LAST_LAYER_EVIDENCE in out
    lines = [line for line in out.splitlines() if "tiny" in line or "h64" in line]
    assert len(lines) == 2 and "selected" in lines[0]  # the selected candidate is listed first
    header = next(line for line in out.splitlines() if "log ev" in line)
    # every header whole on rich's 80 columns for a pipe; no validation-NLL column under the evidence criterion
    assert "…" not in header and "Kass–Raftery" in header and "val NLL" not in header


@pytest.mark.parametrize(
    ("first", "environment"),
    [
        ("e2:family=ensemble,hidden=8,members=2", {}),  # an ensemble has no evidence
        ("e2:hidden=8", {"BELIEFLOOP_SELECTION__CRITERION": "validation_nll"}),  # asked for, evidence or not
    ],
)
def test_select_by_validation_nll_shows_its_columns(tmp_path, first, environment):
    """Selection by validation NLL — with an ensemble among the candidates, or asked for by
    ``selection.criterion``: the table shows that column and no Bayes factors, every header whole at 80 columns."""
    result = subprocess.run(
        [
            *(sys.executable, "-m", "flows", "select", "--dataset", "wine", "--workspace", str(tmp_path / "w")),
            *("--candidate", first, "--candidate", "h16:hidden=16", "--labels", "60"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **environment},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    header = next(line for line in result.stdout.splitlines() if "candidate" in line and "test NLL" in line)
    assert "…" not in header and "val NLL" in header and "reading" in header and "log BF" not in header
    rows = [line for line in result.stdout.splitlines() if line.startswith("│ e2") or line.startswith("│ h16")]
    assert len(rows) == 2 and "selected" in rows[0]


def test_select_rejects_a_malformed_candidate(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "flows", "select", "--dataset", "wine", "--candidate", "h64:hidden"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "expected key=value" in result.stderr
