"""The notebook-style examples run as scripts (their ``--quick`` smoke size) and write what they promise."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_digits_bald_vs_random_writes_its_plot(tmp_path):
    out = tmp_path / "curves.png"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    script = ROOT / "examples" / "digits_bald_vs_random.py"
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "bald seed 0:" in result.stdout and "random seed 0:" in result.stdout
