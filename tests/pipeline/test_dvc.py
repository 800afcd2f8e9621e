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

    # As the README walks through it: commit dvc.lock, run one experiment per acquisition, compare them.
    _run([*git, "add", "dvc.lock", "reports"], repo, env)
    _run([*git, "commit", "-qm", "campaign baseline"], repo, env)
    experiments = {"bald": "bald", "entropy": "predictive_entropy", "random": "random"}
    for name, acquisition in experiments.items():
        _run(["dvc", "exp", "run", "campaign", "-n", name, "-S", f"acquisition.name={acquisition}"], repo, env)
    assert yaml.safe_load((repo / "params.yaml").read_text())["acquisition"]["name"] == "random"

    shown = {}  # experiment name → (acquisition.name, metrics) as `dvc exp show` reports them
    for commit in json.loads(_run(["dvc", "exp", "show", "--json"], repo, env)):
        for experiment in commit.get("experiments") or []:
            data = experiment["revs"][0]["data"]
            params = data["params"]["params.yaml"]["data"]
            shown[experiment["name"]] = (params["acquisition"]["name"], data["metrics"]["reports/metrics.json"]["data"])
    assert {name: acquisition for name, (acquisition, _) in shown.items()} == experiments
    for _, metrics in shown.values():
        assert metrics["rounds"] == 2 and 0 <= metrics["mean_test_accuracy"] <= 1
    assert shown["random"][1] != shown["bald"][1]  # another acquisition queued other items

    # `dvc plots diff` draws the three learning curves side by side: one series per experiment.
    (plot,) = json.loads(_run(["dvc", "plots", "diff", *experiments, "--json"], repo, env))["data"][
        "reports/rounds.json"
    ]
    assert plot["revisions"] == list(experiments)
    points = plot["content"]["data"]["values"]
    assert sorted((p["rev"], p["n_labeled"]) for p in points) == [(e, n) for e in sorted(experiments) for n in (9, 14)]
