"""Several annotators on a real campaign: the label policy a round trains on and the agreement it logs to MLflow."""

import itertools
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from mlflow.tracking import MlflowClient

from data.store import LabelAnswer, LabelStore, labels
from flows.tracking import ROUND

CAMPAIGN = "digits8"


def _round_args(store: LabelStore, workspace: Path, tmp_path: Path, extra: str = "") -> list[str]:
    """``beliefloop round`` arguments for the session campaign, its params plus ``extra`` YAML."""
    dataset = Path(store.dataset_of(CAMPAIGN))
    params = tmp_path / "params.yaml"
    params.write_text(dataset.with_name("params.yaml").read_text() + extra)
    return ["round", "--dataset", str(dataset), "--workspace", str(workspace), "--params", str(params)]


def _round_run_metrics(workspace: Path, round_: int) -> dict[str, float]:
    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(CAMPAIGN)
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{ROUND}` = '{round_}'")
    return run.data.metrics


def test_majority_policy_trains_on_agreed_answers_and_logs_the_disagreement(queued_workspace, beliefloop, tmp_path):
    store = LabelStore.for_workspace(queued_workspace)
    p = [q.item_id for q in store.queued(CAMPAIGN, status="pending")]
    n_imported = len(store.current_labels(CAMPAIGN))
    answers = {
        "ada": {p[0]: 4, p[1]: 1, p[2]: 3, p[3]: 7},
        "bob": {p[0]: 4, p[1]: 2, p[2]: 5},
        "cy": {p[1]: 1},
    }
    for annotator, given in answers.items():
        report = store.record_labels(CAMPAIGN, [LabelAnswer(i, c) for i, c in given.items()], annotator=annotator)
        assert report.rejected == []
    beliefloop(*_round_args(store, queued_workspace, tmp_path, "labels:\n  policy: majority\n"))

    # p0 agreed, p1 two votes to one, p2 a tie (left out), p3 one answer; p1 and p2 conflict, of 3 answered by several.
    expected = {"n_labeled": n_imported + 3, "n_conflicting_items": 2, "n_tied_items": 1}
    metrics = _round_run_metrics(queued_workspace, 2)
    assert {key: metrics[key] for key in expected} == expected
    assert metrics["disagreement_rate"] == pytest.approx(2 / 3)
    summary = store.round_metrics(CAMPAIGN)[-1]
    assert {key: summary[key] for key in expected} == expected
    assert store.current_labels(CAMPAIGN, "majority") == {
        **{i: c for i, c in store.current_labels(CAMPAIGN).items() if i not in p},
        p[0]: 4,
        p[1]: 1,
        p[3]: 7,
    }
    # Round 1, before anyone answered, logged no disagreement.
    first = _round_run_metrics(queued_workspace, 1)
    assert (first["disagreement_rate"], first["n_conflicting_items"]) == (0.0, 0.0)


def test_labelling_a_skipped_item_is_refused_until_unskip(queued_workspace, beliefloop, tmp_path):
    store = LabelStore.for_workspace(queued_workspace)
    item = store.queued(CAMPAIGN, status="pending")[0].item_id
    common = ["--workspace", str(queued_workspace)]
    beliefloop("skip", "--item", item, *common)
    refused = beliefloop("label", "--item", item, "--label", "3", *common, check=False)
    assert refused.returncode == 1 and f"rejected {item}: item was skipped; undo the skip first" in refused.stderr
    answers = tmp_path / "answers.csv"
    answers.write_text(f"item_id,label\n{item},3\n")
    imported = beliefloop("queue", "import", str(answers), *common, check=False)
    assert imported.returncode == 1 and f"line 2 {item}: rejected: item was skipped" in imported.stderr
    assert store.label_history(CAMPAIGN, item) == []

    assert f"{item} is pending again" in beliefloop("unskip", "--item", item, *common).stdout
    beliefloop("label", "--item", item, "--label", "3", "--annotator", "ada", *common)
    assert store.label_history(CAMPAIGN, item) == [(3, "ada", 1)]
    again = beliefloop("unskip", "--item", item, *common, check=False)
    assert again.returncode == 2 and f"item {item!r} has no skipped queue entry" in again.stderr


def test_four_annotators_answer_through_the_page_while_a_round_runs(
    queued_workspace, serve_annotate, beliefloop, tmp_path
):
    """Four threads post answers to a real ``beliefloop annotate`` server before, during and after a real round.

    Every answer is stored once, in each annotator's order; the round trains on the answers of its one read
    (``labels_upto``) and the rest stand for the next round.
    """
    store = LabelStore.for_workspace(queued_workspace)
    items = [q.item_id for q in store.queued(CAMPAIGN, status="pending")]
    before = store.label_snapshot(CAMPAIGN).upto
    _, port = serve_annotate(queued_workspace)
    round_args = _round_args(store, queued_workspace, tmp_path)
    round_done = threading.Event()
    sent: dict[str, list[tuple[str, int]]] = {}
    failures: list[str] = []

    def annotate(k: int) -> None:
        name, answered = f"annotator-{k}", []
        sent[name] = answered
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for step in itertools.count():
                if round_done.is_set():
                    return
                item, label = items[(step + 2 * k) % len(items)], (step // len(items) + k) % 10
                try:
                    response = client.post("/api/labels", json={"item_id": item, "label": label, "annotator": name})
                except httpx.HTTPError as error:  # reported, not lost in the thread
                    failures.append(f"{name} {item}: {error!r}")
                    return
                if response.status_code != 200:
                    failures.append(f"{name} {item}: {response.status_code} {response.text}")
                    return
                answered.append((item, label))
                time.sleep(0.2)  # four people answering fast, without starving the round of the CPU

    threads = [threading.Thread(target=annotate, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    while sum(map(len, sent.values())) < 8 and not failures:  # answers exist before the round starts
        time.sleep(0.05)
    command = [sys.executable, "-m", "flows", *round_args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    round_done.set()
    for thread in threads:
        thread.join(60)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert failures == []

    # No answer lost or doubled: each annotator's stored answers are exactly what it was told were stored, in order.
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(labels.c.id, labels.c.annotator, labels.c.item_id, labels.c.label)
            .where(labels.c.campaign == CAMPAIGN, labels.c.id > before)
            .order_by(labels.c.id)
        ).all()
    assert {name: [(r.item_id, r.label) for r in rows if r.annotator == name] for name in sent} == sent
    assert len(rows) == sum(map(len, sent.values()))

    # The round read the answers once: what it trained on is the snapshot up to its read; later ones waited.
    summary = store.round_metrics(CAMPAIGN)[-1]
    upto = summary["labels_upto"]
    assert before < upto < rows[-1].id
    seen = store.label_snapshot(CAMPAIGN, upto=upto)
    assert (summary["n_labeled"], summary["n_conflicting_items"]) == (len(seen.labels), seen.n_conflicting)
    assert summary["disagreement_rate"] == pytest.approx(seen.disagreement_rate)
    beliefloop(*round_args)
    last = store.round_metrics(CAMPAIGN)[-1]
    everything = store.label_snapshot(CAMPAIGN)
    assert (last["round"], last["labels_upto"], last["n_labeled"]) == (3, rows[-1].id, len(everything.labels))
    assert last["n_conflicting_items"] == everything.n_conflicting
