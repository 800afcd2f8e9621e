"""The DVC pipeline of the repository runs for real: ``dvc repro`` then ``dvc exp run -S``."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _run(args, cwd, env):
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_dvc_repro_and_experiment(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    for package in ("flows", "bayes_models", "acquisition", "data", "representation"):
        shutil.copytree(ROOT / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["dataset"]["name"] = "iris"
    params["campaign"].update(rounds=2, k=5, initial=9)
    params["model"]["steps"] = 50
    params["acquisition"]["samples"] = 4
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    (repo / ".gitignore").write_text("/workspace/\n")

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _run(["git", "init", "-q"], repo, env)
    _run([*git, "add", "-A"], repo, env)
    _run([*git, "commit", "-qm", "pipeline"], repo, env)

    _run(["dvc", "repro", "campaign"], repo, env)  # prepare → campaign (al_mnist is a long benchmark)
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    assert metrics["rounds"] == 2 and metrics["n_labeled"] == 14
    assert 0 <= metrics["test_accuracy"] <= 1
    rounds = json.loads((repo / "reports" / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [1, 2]
    assert (repo / "workspace" / "mlflow.db").exists() and (repo / "workspace" / "labels.db").exists()
    assert "test_accuracy" in _run(["dvc", "metrics", "show"], repo, env)

    _run([*git, "add", "-A"], repo, env)
    _run([*git, "commit", "-qm", "lock"], repo, env)
    _run(["dvc", "exp", "run", "campaign", "-S", "acquisition.name=random"], repo, env)
    assert yaml.safe_load((repo / "params.yaml").read_text())["acquisition"]["name"] == "random"
    shown = _run(["dvc", "exp", "show", "--json"], repo, env)
    assert "random" in shown
