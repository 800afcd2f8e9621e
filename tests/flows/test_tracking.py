"""The campaign tracker against a real MLflow SQLite store, read back by an independent client."""

from mlflow.tracking import MlflowClient

from flows.tracking import CampaignTracker


def test_one_batch_per_round_within_mlflow_limits_and_nothing_logged_twice(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = CampaignTracker(uri, (tmp_path / "artifacts").as_uri(), "c")
    run_id = tracker.round_run(tracker.campaign_run({"seed": 0}), 1)
    metrics = {f"m{i}": float(i) for i in range(1500)}  # more than one MLflow batch holds
    params = {f"p{i}": i for i in range(150)}
    tracker.log_batch(run_id, metrics, step=1, params=params, tags={"beliefloop.selected": "a"})
    tracker.log_batch(run_id, {"m0": 5.0, "late": 1.0}, step=1, params={"p0": 0, "new": "x"})  # a re-run round
    tracker.log_batch(run_id, {"m0": 6.0}, step=2)

    run = MlflowClient(tracking_uri=uri).get_run(run_id)
    assert len(run.data.metrics) == 1501 and run.data.metrics["m1499"] == 1499.0
    assert run.data.params == {**{f"p{i}": str(i) for i in range(150)}, "new": "x"}
    assert run.data.tags["beliefloop.selected"] == "a"
    history = MlflowClient(tracking_uri=uri).get_metric_history(run_id, "m0")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.0), (2, 6.0)]  # the first value at a step stands
