"""The MNIST label-efficiency benchmark's ``--quick`` mode, cut to 3 rounds each scoring 2,000 pool items, as a smoke
test: the user's whole path (the pool's spectral embedding of 60,000 images, real ``labeling_round`` flows, MLflow
and the label store) produces the curves, timings and plot the README's table is built from, and logs the comparison
to the campaigns' MLflow store. Only that they are produced and well formed is asserted; the figures themselves are
the benchmark's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist.npz"


@pytest.mark.skipif(not MNIST.is_file(), reason="needs ../shared/data/mnist.npz")
def test_al_mnist_quick_produces_its_curves_and_plot(tmp_path):
    out = tmp_path / "al_mnist.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [
            *(sys.executable, str(ROOT / "benchmarks" / "al_mnist.py"), "--quick", "--threads", "1"),
            *("--rounds", "3", "--pool-subsample", "2000"),  # --quick's 5 rounds of the 60k pool took 190 s in CI
            *("--out", str(out), "--workspace", str(tmp_path / "workspace")),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert payload["complete"] is True
    assert set(payload["methods"]) == {"powerbald", "random"}
    for summary in payload["methods"].values():
        [curve] = summary["curves"]
        assert [r["n_labeled"] for r in curve] == [20, 30, 40]
        assert all(0.5 < r["accuracy"] <= 1 and 0 <= r["ece"] <= 1 for r in curve)
        assert set(summary["seconds_per_round"]) == {"wall", "train", "acquisition", "overhead"}
        assert len(summary["labels_to_90"]) == len(summary["labels_to_95"]) == 1
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'workspace' / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("benchmark-al_mnist").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["quick"] == "True"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"al_mnist.json", "al_mnist.png"}
    history = client.get_metric_history(run.info.run_id, "powerbald/median_test_accuracy")
    assert sorted(m.step for m in history) == [20, 30, 40]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [
        r["accuracy"] for r in payload["methods"]["powerbald"]["curves"][0]
    ]
    campaigns = {e.name for e in client.search_experiments()} - {"benchmark-al_mnist", "Default"}
    assert len(campaigns) == 2 and all(
        name.startswith(("mnist-powerbald-seed0-", "mnist-random-seed0-")) for name in campaigns
    )
