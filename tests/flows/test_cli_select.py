"""``beliefloop select`` runs model selection alone through the real CLI and prints the Bayes-factor table."""

import subprocess
import sys

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


def test_select_rejects_a_malformed_candidate(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "flows", "select", "--dataset", "wine", "--candidate", "h64:hidden"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "expected key=value" in result.stderr
