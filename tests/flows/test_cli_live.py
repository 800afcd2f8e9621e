"""A live campaign through the real CLI: cold-start batch, people's labels, a trained round, bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_iris

from data.round_lock import round_lock
from data.store import LabelStore, QueueEntry

CLI = [sys.executable, "-m", "flows"]


def _cli(*args, check=True):
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture()
def unlabeled_npz(tmp_path):
    x, y = load_iris(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    train, test = order[:120], order[120:]
    path = tmp_path / "flowers.npz"
    np.savez(path, x_train=x[train], y_train=np.full(len(train), -1), x_test=x[test], y_test=y[test])
    return path, y[train]


def test_live_round_label_and_train(tmp_path, unlabeled_npz):
    path, truth = unlabeled_npz
    workspace = tmp_path / "w"
    common = ["--workspace", str(workspace)]
    out = _cli("round", "--dataset", str(path), "--k", "12", *common).stdout
    assert "12 items wait in the queue" in out
    store = LabelStore.for_workspace(workspace)
    batch = store.queued("flowers", round_=1)
    assert len(batch) == 12 and {q.acquisition for q in batch} == {"random"}  # cold start

    listing = _cli("queue", "list", "--status", "pending", *common).stdout
    assert batch[0].item_id in listing

    for q in batch[:11]:
        _cli("label", "--item", q.item_id, "--label", str(int(truth[int(q.item_id.split("-")[1])])), *common)
    bad = _cli("label", "--item", "train-999", "--label", "0", *common, check=False)
    assert bad.returncode == 1 and "train-999" in bad.stderr and "unknown item" in bad.stderr
    bad_class = _cli("label", "--item", batch[11].item_id, "--label", "7", *common, check=False)
    assert bad_class.returncode == 1 and "unknown class 7" in bad_class.stderr
    assert len(store.current_labels("flowers")) == 11
    _cli("skip", "--item", batch[11].item_id, *common)
    assert store.queued("flowers", round_=1)[11].status == "skipped"
    again = _cli("skip", "--item", batch[11].item_id, *common, check=False)
    assert again.returncode == 2 and "no pending queue entry" in again.stderr

    # While another process's round holds the campaign's lock, a round does nothing and says why (exit 3).
    with round_lock(store, "flowers"):
        busy = _cli("round", "--dataset", str(path), *common, check=False)
    assert (
        busy.returncode == 3
        and f"a round of campaign 'flowers' is running in another process (pid {os.getpid()}" in (busy.stderr)
    )
    assert store.unfinished_rounds("flowers") == [] and store.queued("flowers", round_=2) == []

    # min_labels defaults to 20: still a random batch; with it lowered the round trains and uses BALD.
    env_round = _cli("round", "--dataset", str(path), "--k", "5", *common, "--acquisition", "bald")
    assert "5 items wait" in env_round.stdout
    assert {q.acquisition for q in store.queued("flowers", round_=2)} == {"random"}
    params = tmp_path / "params.yaml"
    params.write_text("campaign:\n  min_labels: 10\nmodel:\n  steps: 50\nacquisition:\n  samples: 4\n")
    trained = _cli("round", "--dataset", str(path), "--k", "5", *common, "--params", str(params), "--full-batch")
    assert "10 items wait" in trained.stdout and "topped" not in trained.stdout  # round 2's 5 are still pending
    third = store.queued("flowers", round_=3)
    assert {q.acquisition for q in third} == {"powerbald"} and all(q.predicted is not None for q in third)
    metrics = store.round_metrics("flowers")
    assert [m["round"] for m in metrics] == [1, 2, 3]
    assert "test_accuracy" in metrics[2] and "test_accuracy" not in metrics[0]


def test_the_labelling_commands_start_without_torch_pandas_prefect_or_mlflow(tmp_path):
    """``label``, ``skip``, ``queue list`` and ``status`` touch the label store only, so a person answering items one
    command at a time waits ~1 s each: importing pandas (the dataset loaders) and, for a refused answer, torch (the
    error handler) had made ``label`` take 1.9 and 3.5 s."""
    workspace = tmp_path / "w"
    workspace.mkdir()
    store = LabelStore(f"sqlite:///{workspace / 'labels.db'}")
    store.create_campaign("toy", "toy.npz", ["cat", "dog"])
    store.add_items("toy", ["a", "b", "c", "t"], ["pool", "pool", "pool", "test"], [0, 1, 2, 3])
    store.enqueue("toy", 1, [QueueEntry(item, rank, 0.5, "bald") for rank, item in enumerate("abc", start=1)])
    runs = [
        ["label", "--item", "a", "--label", "dog"],
        ["label", "--item", "nope", "--label", "dog"],  # refused: exit 1
        ["skip", "--item", "b"],
        ["queue", "list"],
        ["status"],
    ]
    code = (
        "import json, sys\nfrom flows.cli import app\n"
        f"codes = [app([*args, '--workspace', {str(workspace)!r}], standalone_mode=False) for args in {runs!r}]\n"
        "print(json.dumps([codes, sorted(m for m in ('torch', 'pandas', 'prefect', 'mlflow') if m in sys.modules)]))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    codes, heavy = json.loads(result.stdout.splitlines()[-1])
    assert codes == [None, 1, None, None, None] and heavy == []
    assert store.current_labels("toy") == {"a": 1}
    statuses = [(q.item_id, q.status) for q in store.queued("toy")]
    assert statuses == [("a", "labeled"), ("b", "skipped"), ("c", "pending")]


def test_round_on_a_fully_skipped_pool_queues_nothing(tmp_path, unlabeled_npz):
    path, _ = unlabeled_npz
    common = ["--dataset", str(path), "--workspace", str(tmp_path / "w")]
    _cli("round", "--k", "500", *common)  # the whole pool
    store = LabelStore.for_workspace(tmp_path / "w")
    for q in store.queued("flowers"):
        store.skip("flowers", q.item_id)
    out = _cli("round", *common).stdout
    assert "round 2: the pool is exhausted" in out and "items wait" not in out
    assert store.unfinished_rounds("flowers") == []
    assert [(m["round"], m["pool_size"], m["n_queued"]) for m in store.round_metrics("flowers")] == [
        (1, 120, 120),
        (2, 0, 0),
    ]
    assert len(store.queued("flowers")) == 120


def test_a_round_without_dataset_continues_the_workspace_campaign(tmp_path, unlabeled_npz):
    """No ``--dataset``: the workspace's only campaign (or the one ``--campaign`` names) goes on with its own
    dataset, instead of a new campaign on the bundled default appearing beside it; with two, the round asks."""
    path, _ = unlabeled_npz
    common = ["--workspace", str(tmp_path / "w"), "--k", "4"]
    _cli("round", "--dataset", str(path), *common)
    _cli("round", *common, "--full-batch")
    store = LabelStore.for_workspace(tmp_path / "w")
    assert store.campaign_names() == ["flowers"]
    assert [m["round"] for m in store.round_metrics("flowers")] == [1, 2] and len(store.queued("flowers")) == 8
    _cli("round", "--dataset", str(path), "--campaign", "second", *common)
    two = _cli("round", *common, check=False)
    assert two.returncode == 2 and "holds campaigns ['flowers', 'second']: name one with --campaign" in two.stderr
    _cli("round", "--campaign", "second", *common, "--full-batch")
    assert [m["round"] for m in store.round_metrics("second")] == [1, 2]
    assert store.campaign_names() == ["flowers", "second"]


def test_a_simulated_campaign_is_continued_by_simulate_not_by_a_live_round(tmp_path):
    """A live round refuses a simulated campaign (an oracle answers its queue) and names the command that goes on;
    ``status`` suggests the same command, and it runs the next round; run again, it says there is nothing to run."""
    import shlex

    workspace = ["--workspace", str(tmp_path / "w")]
    _cli("simulate", "--dataset", "iris", "--rounds", "1", "--k", "5", *workspace)
    store = LabelStore.for_workspace(tmp_path / "w")
    (campaign,) = store.campaign_names()
    refused = _cli("round", *workspace, check=False)
    command = f"beliefloop simulate --dataset iris --workspace {tmp_path / 'w'} --campaign {campaign} --rounds 2"
    assert refused.returncode == 2 and f"campaign {campaign!r} is simulated" in refused.stderr
    assert command in refused.stderr.replace("\n", " ")
    assert store.queued(campaign, round_=2) == [] and len(store.round_metrics(campaign)) == 1
    status = _cli("status", *workspace).stdout
    assert f"next: run the next round (the oracle answers the 5 pending items): {command}" in status
    _cli(*shlex.split(command)[1:])
    assert [m["round"] for m in store.round_metrics(campaign)] == [1, 2]
    again = _cli("simulate", *workspace, "--campaign", campaign, "--rounds", "2").stdout
    assert f"campaign {campaign} has run 2 rounds" in again and "--rounds 3 or more goes on" in again
    # No --dataset: another simulated campaign on the workspace's dataset (for a comparison), not on the default.
    _cli("simulate", *workspace, "--acquisition", "random", "--rounds", "1", "--k", "5")
    assert sorted(store.campaign_names()) == sorted([campaign, "iris-random-seed0"])
    assert store.dataset_of("iris-random-seed0") == "iris" and len(store.round_metrics("iris-random-seed0")) == 1
    selected = _cli("select", *workspace, "--candidate", "h8:hidden=8,depth=1", "--candidate", "h4:hidden=4,depth=1")
    assert "Model selection on iris" in selected.stdout  # its campaigns' dataset, not the bundled default (digits)


def test_bad_dataset_file_gives_clear_error(tmp_path):
    broken = tmp_path / "broken.npz"
    np.savez(broken, x_train=np.zeros((3, 2)), x_test=np.zeros((2, 2)))
    result = _cli("round", "--dataset", str(broken), "--workspace", str(tmp_path / "w"), check=False)
    assert result.returncode != 0
    assert "broken.npz" in result.stderr + result.stdout and "y_test" in result.stderr + result.stdout
