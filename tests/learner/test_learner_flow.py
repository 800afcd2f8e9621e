"""The learner and the Prefect round flow queue the same items, with the same scores, for the same seed and data."""

import numpy as np
import pytest
import torch

from data import balanced_seed_rows
from data.store import LabelStore
from flows.campaign_setup import model_feature_store
from flows.models import learner_for
from flows.settings import load_settings
from learner import ActiveLearner, evaluation_predictive


@pytest.fixture(scope="module", autouse=True)
def prefect_no_heartbeat():
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@pytest.mark.parametrize(
    ("acquisition", "model", "update"),
    [
        ("bald", {"steps": 50}, "retrain"),
        ("powerbald", {"family": "laplace", "steps": 50, "update_steps": 20}, "belief"),
    ],
)
def test_learner_queues_what_the_flow_queues(tmp_path, acquisition, model, update):
    from flows.rounds import simulate_campaign

    settings = load_settings(
        None,
        {
            "workspace": tmp_path / "w",
            "dataset": {"name": "iris"},
            "campaign": {"rounds": 2, "k": 5, "initial": 9, "seed": 3},
            "model": model,
            "acquisition": {"name": acquisition, "samples": 8},
            "selection": {"candidates": [{"name": "h16", "hidden": 16, "depth": 1}, {"name": "h32", "hidden": 32}]},
            "update": update,
        },
    )
    simulate_campaign(settings)
    store = LabelStore(settings.store_url)
    flow_rounds = [store.queued(settings.campaign_name, round_=r) for r in (1, 2)]

    # The same data as the campaign: its features, its class-balanced seed labels, its pool in row order.
    features = model_feature_store(settings)
    rows = np.asarray(features.rows_train)
    x, y, ids = np.asarray(features.features[rows]), np.asarray(features.targets[rows]), features.ids[rows].tolist()
    seed = balanced_seed_rows(y, 9, len(features.classes), settings.campaign.seed)
    options = dict(model)
    learner = ActiveLearner(
        options.pop("family", "mc_dropout"),
        acquisition=acquisition,
        candidates=[c.model_dump() for c in settings.selection.candidates],
        update=update,
        samples=8,
        seed=settings.campaign.seed,
        n_classes=len(features.classes),
        **options,
    )
    adapted = learner_for(settings, n_classes=len(features.classes))  # what the label-efficiency benchmark runs
    assert adapted.specs == learner.specs and adapted.state_dict()["options"] == learner.state_dict()["options"]
    learner.fit(x[seed], y[seed], ids=[ids[i] for i in seed])
    pool = np.setdiff1d(np.arange(len(rows)), seed)
    test_rows = np.asarray(features.rows_test)
    x_test, y_test = np.asarray(features.features[test_rows]), np.asarray(features.targets[test_rows])
    for flow_queue, flow_metrics in zip(flow_rounds, store.round_metrics(settings.campaign_name), strict=True):
        # the round's test metrics: the selected model's predictive with selection.test_samples draws per chunk
        probs = evaluation_predictive(
            learner.selected.model, torch.from_numpy(x_test), settings.selection.test_samples, seed=learner.round
        )
        accuracy = (probs.argmax(1).numpy() == y_test).mean()
        assert accuracy == pytest.approx(flow_metrics["test_accuracy"], abs=1e-12)
        batch = learner.query(x[pool], k=5, ids=[ids[i] for i in pool])
        assert batch.ids == [q.item_id for q in flow_queue]
        assert batch.scores.tolist() == pytest.approx([q.score for q in flow_queue], abs=1e-9)
        assert batch.predicted.tolist() == [q.predicted for q in flow_queue]
        chosen = pool[batch.indices]
        learner.teach(x[chosen], y[chosen], ids=[ids[i] for i in chosen])  # the oracle's answers
        pool = np.setdiff1d(pool, chosen)
    assert learner.selected.name == store.round_metrics(settings.campaign_name)[-1]["selected"]
