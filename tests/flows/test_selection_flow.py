"""Model selection by Bayes factors and belief updates inside real round flows, read back from MLflow."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from flows.settings import load_settings

LAST_LAYER_EVIDENCE = "Laplace log p(D₂|D₁) (last_layer, exact GGN, D₁ = 50% of the labels)"


@pytest.fixture(scope="module", autouse=True)
def prefect_no_heartbeat():
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _settings(workspace, **top):
    return load_settings(
        None,
        {
            "workspace": workspace,
            "dataset": {"name": "wine"},
            "campaign": {"rounds": 3, "k": 6, "initial": 12},
            "model": {"steps": 150},
            "acquisition": {"samples": 8},
            **top,
        },
    )


def _round_runs(settings):
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.campaign_name)
    runs = client.search_runs([experiment.experiment_id], "tags.`beliefloop.role` = 'round'")
    return client, sorted(runs, key=lambda r: int(r.data.tags["beliefloop.round"]))


def test_bayes_factors_logged_per_round_equal_log_evidence_differences(tmp_path):
    from flows.rounds import simulate_campaign

    settings = _settings(tmp_path / "w")
    results = simulate_campaign(settings)
    names = [c.name for c in settings.selection.candidates]
    client, runs = _round_runs(settings)
    assert len(runs) == 3
    for run, result in zip(runs, results, strict=True):
        metrics = run.data.metrics
        log_z = {name: metrics[f"log_evidence/{name}"] for name in names}
        assert all(math.isfinite(v) for v in log_z.values())
        best = max(log_z, key=log_z.get)
        assert run.data.tags["beliefloop.selected"] == best == result["selected"]
        for name in names:
            assert metrics[f"log_bayes_factor/{name}"] == pytest.approx(log_z[best] - log_z[name], abs=1e-9)
        assert metrics[f"log_bayes_factor/{best}"] == 0.0
        table_path = client.download_artifacts(run.info.run_id, "bayes_factors.csv", str(tmp_path))
        with open(table_path) as handle:
            table = list(csv.DictReader(handle))
        assert table[0]["candidate"] == best
        assert {row["evidence_kind"] for row in table} == {LAST_LAYER_EVIDENCE}
        for row in table:
            assert float(row["log_bayes_factor"]) == pytest.approx(log_z[best] - log_z[row["candidate"]], abs=1e-5)
            assert row["kass_raftery"] in {"selected", "barely worth mentioning", "positive", "strong", "very strong"}
        # The round's test metrics are the selected model's.
        selected_row = next(row for row in table if row["selected"] == "True")
        assert float(selected_row["test_accuracy"]) == pytest.approx(metrics["test_accuracy"], abs=1e-6)
        # The same table as an MLflow table artifact, and the learning curve so far as a plot.
        with open(client.download_artifacts(run.info.run_id, "bayes_factors.json", str(tmp_path))) as handle:
            logged = json.load(handle)
        assert [row[logged["columns"].index("candidate")] for row in logged["data"]] == [r["candidate"] for r in table]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {
            "learning_curve.png",
            "reliability.png",
            "uncertainty.png",
            "queued_batch.csv",
            "queued_gallery.png",
        } <= artifacts
    # The parent run: the learning curve as one line (a point per round), FINISHED with the campaign's summary.
    parent = client.get_run(runs[0].data.tags["mlflow.parentRunId"])
    curve = client.get_metric_history(parent.info.run_id, "test_accuracy")
    assert sorted((m.step, m.value) for m in curve) == [(r["round"], r["test_accuracy"]) for r in results]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["mean_test_accuracy"] == pytest.approx(
        sum(r["test_accuracy"] for r in results) / len(results)
    )


def test_belief_update_rounds_fit_only_new_labels(tmp_path):
    from flows.rounds import simulate_campaign

    settings = _settings(
        tmp_path / "w",
        model={"family": "laplace", "steps": 150, "update_steps": 40},
        selection={"candidates": [{"name": "small", "hidden": 16}, {"name": "wide", "hidden": 64}]},
        update="belief",
    )
    simulate_campaign(settings)
    _, runs = _round_runs(settings)
    for name in ("small", "wide"):
        assert [run.data.metrics[f"n_fitted/{name}"] for run in runs] == [12, 6, 6]
    # The saved posterior of each candidate knows every label it has absorbed and reloads with weights_only.
    payload = torch.load(
        settings.models_dir / settings.campaign_name / "candidates" / "wide.pt", map_location="cpu", weights_only=True
    )
    assert payload["family"] == "laplace" and len(payload["trained_on"]) == 24
    assert payload["state"]["config"]["update_steps"] == 40
    # Accumulated evidence: round 3's log Z = round 2's + the evidence of round 3's new labels (< 0 each time).
    log_z = [run.data.metrics["log_evidence/wide"] for run in runs]
    assert log_z[0] > log_z[1] > log_z[2]


def test_a_relabelled_item_makes_the_belief_update_retrain(tmp_path):
    """The saved posterior holds the old label of a corrected item: the round retrains on every label, and says so."""
    from data.store import LabelAnswer, LabelStore
    from flows.rounds import run_round, simulate_campaign

    settings = _settings(
        tmp_path / "w",
        campaign={"rounds": 2, "k": 6, "initial": 12},
        model={"family": "laplace", "steps": 150, "update_steps": 40},
        selection={"candidates": []},
        update="belief",
    )
    simulate_campaign(settings)
    store = LabelStore(settings.store_url)
    labels = store.current_labels(settings.campaign_name)
    item, old = next(iter(labels.items()))
    report = store.record_labels(
        settings.campaign_name, [LabelAnswer(item, (old + 1) % 3)], annotator="reviewer", require_queued=False
    )
    assert report.accepted
    third = run_round(
        settings.model_copy(update={"campaign": settings.campaign.model_copy(update={"rounds": 3})}), oracle=True
    )
    assert third["n_relabelled/laplace"] == 1
    assert third["n_fitted/laplace"] == third["n_labeled"] == 24  # everything refitted, not just the 6 new labels
    payload = torch.load(
        settings.models_dir / settings.campaign_name / "candidates" / "laplace.pt",
        map_location="cpu",
        weights_only=True,
    )
    assert payload["trained_on"][item] == (old + 1) % 3 and len(payload["trained_on"]) == 24
    _, runs = _round_runs(settings)
    assert [run.data.metrics["n_relabelled/laplace"] for run in runs] == [0, 0, 1]


def test_a_round_with_an_ensemble_logs_validation_nll_and_no_bayes_factor(tmp_path):
    """An ensemble has no evidence: the round selects by validation NLL, logs it per candidate with the criterion,
    and logs no Bayes factor (nor an evidence for the ensemble). The Laplace candidate's prior is tuned on validation
    NLL too (``selection.prior_tuning: validation``), and the round logs that tuning."""
    from flows.rounds import simulate_campaign

    candidates = [
        {"name": "ens", "family": "ensemble", "members": 2},
        {"name": "lap", "family": "laplace", "hidden": 16, "depth": 1},
    ]
    settings = _settings(
        tmp_path / "w",
        campaign={"rounds": 1, "k": 6, "initial": 15},
        selection={"candidates": candidates, "prior_tuning": "validation"},
    )
    [result] = simulate_campaign(settings)
    client, [run] = _round_runs(settings)
    metrics = run.data.metrics
    nlls = {name: metrics[f"validation_nll/{name}"] for name in ("ens", "lap")}
    assert result["selected"] == run.data.tags["beliefloop.selected"] == min(nlls, key=nlls.get)
    assert run.data.params["selection_criterion"] == "validation_nll"
    assert run.data.params["prior_tuning"] == "validation"
    assert not any(key.startswith("log_bayes_factor/") for key in metrics)
    assert "log_evidence/ens" not in metrics and math.isfinite(metrics["log_evidence/lap"])
    assert metrics[f"n_fitted/{result['selected']}"] == 15  # refitted on every label after the comparison
    assert metrics[f"n_fitted/{max(nlls, key=nlls.get)}"] == 12  # 3 of 15 held out
    assert metrics["prior_scale/lap"] > 0 and "prior_scale/ens" not in metrics
    assert metrics["prior_validation_nll/lap"] <= metrics["prior_evidence_validation_nll/lap"]
    table_path = client.download_artifacts(run.info.run_id, "bayes_factors.csv", str(tmp_path))
    with open(table_path) as handle:
        table = {row["candidate"]: row for row in csv.DictReader(handle)}
    assert {row["criterion"] for row in table.values()} == {"validation_nll"}
    assert table["ens"]["log_evidence"] == table["ens"]["log_bayes_factor"] == ""
    assert float(table["lap"]["validation_nll"]) == pytest.approx(nlls["lap"], rel=1e-6)


def test_a_vi_round_logs_the_elbo_parts_of_each_candidate(tmp_path):
    """``vi_kl/<candidate>`` and ``vi_expected_log_lik/<candidate>`` in MLflow are the saved candidate's ELBO terms,
    and their difference is the ELBO logged as its (bound on the) evidence. A later campaign with ``prior_from`` this
    workspace starts each candidate from its saved posterior."""
    from flows.rounds import simulate_campaign

    candidates = [{"name": "v8", "hidden": 8, "depth": 1}, {"name": "v16", "hidden": 16, "depth": 1}]
    settings = _settings(
        tmp_path / "w",
        campaign={"rounds": 1, "k": 6, "initial": 12},
        model={"family": "vi", "steps": 60},
        selection={"candidates": candidates},
    )
    simulate_campaign(settings)
    _, [run] = _round_runs(settings)
    metrics = run.data.metrics
    for name in ("v8", "v16"):
        kl, ell = metrics[f"vi_kl/{name}"], metrics[f"vi_expected_log_lik/{name}"]
        assert kl > 0 and ell < 0
        assert metrics[f"log_evidence/{name}"] == pytest.approx(ell - kl, abs=1e-9)
        saved = torch.load(
            settings.models_dir / settings.campaign_name / "candidates" / f"{name}.pt", weights_only=True
        )
        assert saved["state"]["elbo"] == {"expected_log_lik": ell, "kl": kl}

    # A second campaign takes the first one's saved posteriors as its priors (model.prior_from: <workspace>).
    later = _settings(
        tmp_path / "w2",
        campaign={"rounds": 1, "k": 6, "initial": 12, "seed": 1},
        model={"family": "vi", "steps": 60, "prior_from": str(tmp_path / "w")},
        selection={"candidates": candidates},
    )
    simulate_campaign(later)
    for name in ("v8", "v16"):
        earlier = torch.load(settings.models_dir / settings.campaign_name / "candidates" / f"{name}.pt")
        now = torch.load(later.models_dir / later.campaign_name / "candidates" / f"{name}.pt")
        for part in ("weight", "bias"):
            prior = now["state"]["network"][f"head.1.prior_{part}_mu"]
            assert torch.equal(prior, earlier["state"]["network"][f"head.1.{part}_mu"])


def test_candidates_are_compared_on_a_shared_subset_of_the_test_items(tmp_path):
    """``selection.compare_test_items``: every row of the Bayes-factor table stands on the same seeded test items
    (the same model twice gets the same row), while the round's logged metrics use every test item."""
    from flows.campaign_setup import campaign_test_rows, model_feature_store
    from flows.rounds import evaluate, simulate_campaign

    settings = _settings(
        tmp_path / "w", campaign={"rounds": 1, "k": 6, "initial": 12}, selection={"compare_test_items": 20}
    )
    [result] = simulate_campaign(settings)
    client, [run] = _round_runs(settings)
    with open(client.download_artifacts(run.info.run_id, "bayes_factors.csv", str(tmp_path))) as handle:
        table = list(csv.DictReader(handle))
    n_test = int(run.data.metrics["n_test"])
    assert n_test == result["n_test"] > 20
    assert {row["test_items"] for row in table} == {"20"}
    for row in table:  # an accuracy on 20 items is a multiple of 1/20
        assert float(row["test_accuracy"]) * 20 == pytest.approx(round(float(row["test_accuracy"]) * 20), abs=1e-6)

    from learner import ActiveLearner

    features = model_feature_store(settings)
    rows = campaign_test_rows(settings, features)
    train = np.random.default_rng(0).permutation(np.asarray(features.rows_train))[:60]
    learner = ActiveLearner("mc_dropout", "bald", [{"name": "h16", "hidden": 16}], steps=40, n_classes=3)
    learner.fit(features.features[train], features.targets[train])
    model = learner.selected.model
    whole = evaluate.fn([model], features, rows, 8, 1)
    assert whole.n_compared == len(rows) and whole.compared == [whole.metrics]
    twice = evaluate.fn([model, model], features, rows, 8, 1, compare_items=20, seed=3)
    assert twice.metrics == pytest.approx(whole.metrics, abs=1e-6)
    assert twice.n_compared == 20
    assert twice.compared[0] == pytest.approx(twice.compared[1], rel=1e-5)
    assert twice.compared[0] != pytest.approx(twice.metrics, rel=1e-3)
