"""The stopping signal in real flow runs: the stop set drawn at the first model, κ between rounds' saved
predictions, the round's note and ``status``'s next step, MLflow's metric."""

import subprocess
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient
from mlflow.tracking import MlflowClient
from sklearn.metrics import cohen_kappa_score

from data.store import LabelStore, database_url
from flows.console import NOTHING_QUEUED
from flows.settings import load_settings


def _settings(workspace, campaign_rounds=4, **stopping):
    return load_settings(
        None,
        {
            "workspace": workspace,
            "dataset": {"name": "iris"},
            "campaign": {"rounds": campaign_rounds, "k": 5, "initial": 9},
            "model": {"steps": 50},
            "acquisition": {"samples": 8},
            "selection": {"test_samples": 8},
            "tracking": {"register_model": False},
            "stopping": stopping,
        },
    )


def _status(workspace) -> str:
    """``beliefloop status``'s text, from a process of its own as a person would run it."""
    command = [sys.executable, "-m", "flows", "status", "--workspace", str(workspace)]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def test_rounds_compare_their_predictions_on_one_stop_set_and_say_when_they_are_stable(tmp_path):
    from flows.rounds import simulate_campaign

    settings = _settings(tmp_path / "w", items=40, agreement=0.5, rounds=2)
    directory = settings.models_dir / settings.campaign_name / "stop_set"
    directory.mkdir(parents=True)
    (directory / "round-0002.tmp.npz").write_bytes(b"left by a crash mid-write")  # not a round's predictions
    results = simulate_campaign(settings)
    with np.load(directory / "items.npz") as saved:
        ids = saved["ids"]
    store = LabelStore(settings.store_url)
    seed_labels = set(store.current_labels(settings.campaign_name)) - {
        q.item_id for q in store.queued(settings.campaign_name)
    }
    pool = set(store.item_rows(settings.campaign_name, "pool"))
    assert len(ids) == 40 == len(set(ids)) and set(ids) <= pool - seed_labels  # drawn from round 1's pool
    predicted = [np.load(directory / f"round-{r:04d}.npz")["predicted"] for r in (1, 2, 3, 4)]
    assert all(p.shape == (40,) and set(p) <= {0, 1, 2} for p in predicted)

    assert "stop_set_agreement" not in results[0]  # nothing to compare round 1 with
    kappas = [cohen_kappa_score(predicted[r - 1], predicted[r]) for r in (1, 2, 3)]
    assert [r["stop_set_agreement"] for r in results[1:]] == pytest.approx(kappas, abs=1e-9)
    stable = [False] + [bool(kappas[i - 1] >= 0.5 and (i > 1 and kappas[i - 2] >= 0.5)) for i in (1, 2, 3)]
    assert [bool(r["stopping_note"]) for r in results] == stable
    assert any(stable), kappas  # iris at 9+ labels: the 3 classes' predictions barely move

    client = MlflowClient(tracking_uri=database_url(settings.tracking_uri))
    experiment = client.get_experiment_by_name(settings.campaign_name)
    parent = next(
        r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("beliefloop.role") == "campaign"
    )
    history = client.get_metric_history(parent.info.run_id, "stop_set_agreement")
    assert [m.step for m in history] == [2, 3, 4]
    assert [m.value for m in history] == pytest.approx(kappas)
    rounds = client.search_runs([experiment.experiment_id], "tags.`beliefloop.role` = 'round'")
    tagged = {int(r.data.tags["beliefloop.round"]): r.data.tags.get("beliefloop.stopping") for r in rounds}
    assert tagged == {i + 1: r["stopping_note"] for i, r in enumerate(results)}  # a column of the UI's run list

    status = _status(settings.workspace)
    assert f"stop_set_agreement {kappas[-1]:.3f}" in status
    next_step = status.split("next: ", 1)[1]
    assert next_step.startswith("predictions stable: the model's classes for 40 unlabelled pool items") == stable[-1]
    assert (
        next_step.endswith(
            f"stop here, or run the next round (the oracle answers the 5 pending items): "
            f"beliefloop simulate --dataset iris --workspace {settings.workspace} "
            f"--campaign {settings.campaign_name} --rounds 5\n"
        )
        == stable[-1]
    )


def test_no_stop_set_when_switched_off(tmp_path):
    from flows.rounds import simulate_campaign

    settings = _settings(tmp_path / "w", campaign_rounds=2, items=0)
    results = simulate_campaign(settings)
    assert not (settings.models_dir / settings.campaign_name / "stop_set").exists()
    assert all("stop_set_agreement" not in r and r["stopping_note"] is None for r in results)


def test_stop_when_stable_ends_a_simulated_campaign_and_queues_nothing_until_data_comes(tmp_path):
    from flows.rounds import simulate_campaign

    settings = _settings(tmp_path / "w", campaign_rounds=8, items=40, agreement=0.5, rounds=2, when_stable="stop")
    results = simulate_campaign(settings)
    stable_at = next(i for i, r in enumerate(results) if r["stopping_note"])  # iris: stable within a few rounds
    assert len(results) == stable_at + 1 < 8  # ended at the stable round
    assert [r["stopped_when_stable"] for r in results] == [False] * stable_at + [True]
    assert [r["n_queued"] for r in results] == [5] * stable_at + [0]
    client = MlflowClient(tracking_uri=database_url(settings.tracking_uri))
    experiment = client.get_experiment_by_name(settings.campaign_name)
    last = client.search_runs([experiment.experiment_id], f"tags.`beliefloop.round` = '{stable_at + 1}'")[0]
    assert last.data.tags["beliefloop.stopping"] == f"{results[-1]['stopping_note']}; {NOTHING_QUEUED}"
    store = LabelStore(settings.store_url)
    campaign = settings.campaign_name
    assert not store.queued(campaign, status="pending")  # every batch answered, none queued after the stop
    assert max(q.round for q in store.queued(campaign)) == stable_at  # round numbers are 1-based: the round before

    again = simulate_campaign(settings)  # nothing came since: no round is run
    assert again == results and store.next_round(campaign) == stable_at + 2

    status = _status(settings.workspace)
    assert "stopped_when_stable" not in status
    assert status.split("next: ", 1)[1].startswith("predictions stable: ")
    assert "nothing new was queued (stopping.when_stable: stop): the campaign is done" in status

    from data import open_feature_store
    from flows.annotate import create_app
    from flows.campaign_setup import feature_store_dir

    features = open_feature_store(feature_store_dir(settings, "iris"))
    with TestClient(create_app(store, campaign, features), base_url="http://127.0.0.1") as client:
        page = " ".join(client.get("/item").text.split())  # the labeling page says why nothing is pending
    assert f"nothing more is asked: its model's predictions were stable at round {stable_at + 1}" in page

    goes_on = simulate_campaign(_settings(tmp_path / "w", campaign_rounds=8, items=40, agreement=0.5, rounds=2))
    assert len(goes_on) == 8  # when_stable: note (the default) runs the rounds that are left
    assert all(r["n_queued"] == 5 and not r["stopped_when_stable"] for r in goes_on[stable_at + 1 :])


def test_the_labeling_page_of_a_stopped_campaign_says_why_nothing_is_asked(tmp_path, chromium_launch, serve_annotate):
    """In a real browser: a campaign stopped as stable (``stopping.when_stable: stop``) shows no item and says why."""
    from playwright import sync_api

    from flows.rounds import simulate_campaign

    settings = _settings(tmp_path / "w", campaign_rounds=5, items=40, agreement=0.5, rounds=1, when_stable="stop")
    results = simulate_campaign(settings)
    assert results[-1]["stopped_when_stable"]
    url, _ = serve_annotate(settings.workspace)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(**chromium_launch)
        page = browser.new_page()
        page.goto(url)
        text = " ".join(page.inner_text("#card p.empty").split())
        browser.close()
    assert text == (
        f"Nothing is pending in campaign {settings.campaign_name}, and nothing more is asked: its model's "
        f"predictions were stable at round {len(results)} (stopping.when_stable: stop). Thank you."
    )
