"""A live campaign on one's own CSV, as a new user runs it: the flags a CSV needs, declared and new classes, how
many test items a metric stands on, a queue topped up to k, the campaign at a glance, and warnings said aloud."""

import json

import pytest
import torch
from sklearn.datasets import load_wine

from data.store import LabelStore

SMALL = "campaign:\n  min_labels: 5\nmodel:\n  steps: 30\nacquisition:\n  samples: 4\nselection:\n  candidates: []\n"


def _wine_csv(path, labelled: list[int], split: dict[int, str] | None = None):
    """Wine as a user's CSV: an ``id`` column, features, a ``label`` column blank but for the ``labelled`` rows
    (and an optional ``split`` column)."""
    data = load_wine(as_frame=True)
    frame = data.frame.drop(columns="target")
    frame.insert(0, "id", [f"w{i:03d}" for i in range(len(frame))])
    frame["label"] = ""
    frame.loc[labelled, "label"] = [data.target_names[data.target[i]] for i in labelled]
    if split is not None:
        frame["split"] = [split.get(i, "train") for i in range(len(frame))]
    frame.to_csv(path, index=False)
    return path


def _small_round(beliefloop, tmp_path, path, *flags: str):
    """``beliefloop round`` of a small model on the CSV at ``path`` (columns ``label`` and ``id``), workspace ``w``."""
    (tmp_path / "params.yaml").write_text(SMALL)
    where = ["--workspace", str(tmp_path / "w"), "--params", str(tmp_path / "params.yaml")]
    return beliefloop("round", "--dataset", str(path), "--label-column", "label", "--id-column", "id", *where, *flags)


@pytest.fixture()
def mostly_blank(tmp_path):
    """Six labelled rows, four of class_1 and two of class_2 (none of class_0): the issue's wine CSV."""
    return _wine_csv(tmp_path / "wine.csv", [60, 61, 62, 63, 140, 141])


def test_a_failing_dataset_leaves_no_workspace(tmp_path, mostly_blank, beliefloop):
    path = mostly_blank
    workspace = tmp_path / "w"
    no_column = beliefloop("round", "--dataset", str(path), "--workspace", str(workspace), check=False)
    assert no_column.returncode == 2 and "--label-column" in no_column.stderr and "'label'" in no_column.stderr
    common = ["--dataset", str(path), "--label-column", "label", "--id-column", "id", "--workspace", str(workspace)]
    undeclared = beliefloop("prepare", *common, "--classes", "class_0,class_1", check=False)
    assert undeclared.returncode == 2 and "'class_2', not one of ['class_0', 'class_1']" in undeclared.stderr
    assert not workspace.exists()  # (a simulation on unlabelled rows: tests/flows/test_cli_errors.py)


def test_live_campaign_on_a_csv_tells_the_truth(tmp_path, mostly_blank, beliefloop):
    path = mostly_blank
    workspace, params = tmp_path / "w", tmp_path / "params.yaml"
    params.write_text(SMALL)
    where = ["--workspace", str(workspace)]
    declared = ["--label-column", "label", "--id-column", "id", "--classes", "class_0,class_1,class_2"]
    first = beliefloop("round", "--dataset", str(path), *declared, "--k", "4", *where)
    assert "warning: round 1: 4 labels < campaign.min_labels=20: no model trained; the batch is random" in (
        first.stderr
    )
    store = LabelStore.for_workspace(workspace)
    assert store.classes("wine") == ["class_0", "class_1", "class_2"]
    assert len(store.item_rows("wine", "test")) == 2  # the stratified split took 2 of the 6 labelled rows
    batch = [q.item_id for q in store.queued("wine", round_=1)]
    assert len(batch) == 4 and all(item.startswith("w") for item in batch)  # the id column's ids

    # class_0 has no labelled row, yet it is declared: it can be answered.
    assert beliefloop("label", "--item", batch[0], "--label", "class_0", *where).returncode == 0
    refused = beliefloop("label", "--item", batch[1], "--label", "rosé", *where, check=False)
    assert refused.returncode == 2 and "unknown class 'rosé'" in refused.stderr and "--new-class" in refused.stderr
    typo = beliefloop("label", "--item", batch[1], "--label", "Class_1", *where, check=False)
    assert typo.returncode == 2 and "unknown class 'Class_1' (did you mean 'class_1'?)" in typo.stderr
    assert store.classes("wine") == ["class_0", "class_1", "class_2"]
    stray = beliefloop("label", "--item", "w999", "--label", "rosé", "--new-class", *where, check=False)
    assert stray.returncode == 2 and "'w999' is an unknown item" in stray.stderr
    assert store.classes("wine") == ["class_0", "class_1", "class_2"]  # a refused answer adds no class
    admitted = beliefloop("label", "--item", batch[1], "--label", "rosé", "--new-class", *where).stdout
    assert "new class 'rosé'" in admitted and "4 outputs" in admitted
    assert store.classes("wine") == ["class_0", "class_1", "class_2", "rosé"]
    assert store.current_labels("wine")[batch[1]] == 3
    beliefloop("skip", "--item", batch[2], *where)

    # 6 labels (4 training rows + 2 answers); batch[3] is still pending: the round tops the queue up with 3 new.
    second = beliefloop("round", "--dataset", str(path), "--k", "4", "--params", str(params), *where)
    assert "1 items were still pending from earlier rounds: topped the queue up to k=4 with 3 new" in second.stdout
    assert "4 items wait in the queue" in second.stdout
    header, line = second.stdout.splitlines()[:2]
    assert "test n" in header and line.split()[:3] == ["2", "6", "2"]  # round, labels, test items
    assert "warning: round 2: test metrics stand on 2 test items (campaign.min_test=30)" in second.stderr
    assert len(store.queued("wine", round_=2)) == 3
    metrics = store.round_metrics("wine")[-1]
    assert (metrics["n_test"], metrics["n_pending"], metrics["n_queued"]) == (2, 1, 3)
    saved = torch.load(workspace / "models" / "wine" / "candidates" / "mc_dropout.pt", weights_only=True)
    assert saved["state"]["config"]["n_classes"] == 4  # trained with the admitted class's output

    status = json.loads(beliefloop("status", *where, "--format", "json").stdout)
    assert {k: status[k] for k in ("rounds_done", "labels", "pending", "skipped", "test_items")} == {
        "rounds_done": 2,
        "labels": 6,
        "pending": 4,
        "skipped": 1,
        "test_items": 2,
    }
    assert status["labels"] == metrics["n_labeled"]
    assert status["last_round"]["n_test"] == 2 and "2 test items" in status["last_round"]["warnings"][0]
    assert status["next_step"].startswith("label the 4 pending items")
    text = beliefloop("status", *where).stdout
    assert "pending: 4" in text and "skipped: 1" in text and "last round 2:" in text and "next: label" in text


def test_a_split_column_decides_the_test_set(tmp_path, beliefloop):
    """The CSV's ``split`` column, not a fraction of the few labelled rows, makes the test set: 36 labelled test
    rows, 8 labelled training rows; the round's metrics stand on the 36 and nothing warns."""
    test_rows = [*range(0, 12), *range(60, 72), *range(131, 143)]
    path = _wine_csv(
        tmp_path / "wine.csv", [*test_rows, 20, 21, 22, 80, 81, 82, 150, 151], dict.fromkeys(test_rows, "test")
    )
    out = _small_round(beliefloop, tmp_path, path, "--k", "3")
    assert out.stdout.splitlines()[1].split()[:3] == ["1", "8", "36"] and "warning" not in out.stderr
    assert LabelStore.for_workspace(tmp_path / "w").round_metrics("wine")[0]["n_test"] == 36


def test_a_round_without_test_items_reports_no_test_metric(tmp_path, mostly_blank, beliefloop):
    path = mostly_blank
    out = _small_round(beliefloop, tmp_path, path, "--test-fraction", "0")
    assert "warning: round 1: no test items: no test metrics (campaign.min_test=30)" in out.stderr
    metrics = LabelStore.for_workspace(tmp_path / "w").round_metrics("wine")[0]
    assert metrics["n_labeled"] == 6 and metrics["n_test"] == 0 and "test_accuracy" not in metrics
