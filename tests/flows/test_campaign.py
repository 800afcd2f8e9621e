"""Real Prefect flow runs writing a real MLflow store and SQLite label store, read back independently."""

import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import torch
from mlflow.tracking import MlflowClient

from data.store import LabelStore, database_url, queue
from flows.campaign_setup import model_feature_store
from flows.settings import load_settings
from learner import load_model, pool_predict, predict_proba, round_seed

BELIEFLOOP = [sys.executable, "-m", "flows"]


@pytest.fixture(scope="module")
def prefect_no_heartbeat():
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _small(workspace: Path, store: dict | None = None, tracking: dict | None = None, shards: int = 1, **campaign):
    return load_settings(
        None,
        {
            "workspace": workspace,
            "dataset": {"name": "iris"},
            "campaign": {"rounds": 2, "k": 5, "initial": 9, **campaign},
            "model": {"steps": 50},
            "acquisition": {"samples": 8, "shards": shards},
            "store": store or {},
            "tracking": {"register_model": True, **(tracking or {})},
        },
    )


def _queue_counts(store: LabelStore, campaign: str) -> dict[int, int]:
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(queue.c.round, sa.func.count(sa.distinct(queue.c.item_id)), sa.func.count())
            .where(queue.c.campaign == campaign)
            .group_by(queue.c.round)
        ).all()
    assert all(distinct == total for _, distinct, total in rows)
    return {r: distinct for r, distinct, _ in rows}


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_round_campaign_writes_mlflow_and_queue(tmp_path, prefect_no_heartbeat, database, request, monkeypatch):
    """The workspace's SQLite files, or a PostgreSQL database each for the label store and the MLflow backend; pool
    scoring in two shards."""
    from flows.rounds import simulate_campaign

    name = f"iris-{database}"
    if database == "postgresql":
        new_database = request.getfixturevalue("postgres_database")
        databases = {"store": {"url": new_database()}, "tracking": {"uri": new_database()}}
        settings = _small(tmp_path / "w", **databases, shards=2, name=name)
        assert settings.store_url.startswith("postgresql://") and not (tmp_path / "w" / "labels.db").exists()
    else:
        settings = _small(tmp_path / "w", shards=2, name=name)
    results = simulate_campaign(settings)
    assert [r["round"] for r in results] == [1, 2]
    assert [r["n_labeled"] for r in results] == [9, 14]
    assert (tmp_path / "w" / "mlflow.db").exists() == (database == "sqlite")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", database_url(settings.tracking_uri))  # for models:/ URIs
    client = MlflowClient(tracking_uri=database_url(settings.tracking_uri))
    experiment = client.get_experiment_by_name(settings.campaign_name)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("beliefloop.role") == "campaign"]
    rounds = [r for r in runs if r.data.tags.get("beliefloop.role") == "round"]
    assert len(parents) == 1 and len(rounds) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in rounds} == {parents[0].info.run_id}
    assert parents[0].data.params["acquisition.name"] == "powerbald"
    for run in rounds:
        step = int(run.data.tags["beliefloop.round"])
        history = client.get_metric_history(run.info.run_id, "test_accuracy")
        assert [m.step for m in history] == [step]
        assert 0.0 <= history[0].value <= 1.0
        assert history[0].value == pytest.approx(results[step - 1]["test_accuracy"])
        for key in ("n_labeled", "test_nll", "test_ece", "test_brier"):
            assert key in run.data.metrics
        # The round's wall time splits into training, scoring and the rest (evaluation, evidence, plots, logging).
        m = run.data.metrics
        assert m["overhead_seconds"] > 0 and m["train_seconds"] > 0
        parts = m["train_seconds"] + m["acquisition_seconds"] + m["overhead_seconds"]
        assert m["round_seconds"] == pytest.approx(parts)
        assert 0 < m["evaluation_seconds"] < m["overhead_seconds"]  # the test predictive is part of the rest
        assert results[step - 1]["overhead_seconds"] == pytest.approx(m["overhead_seconds"])
        assert run.data.tags["beliefloop.selected"] == run.data.params["selected_candidate"]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"queued_batch.csv", "reliability.png", "uncertainty.png"} <= artifacts
        csv_path = client.download_artifacts(run.info.run_id, "queued_batch.csv", str(tmp_path))
        lines = Path(csv_path).read_text().splitlines()
        assert len(lines) == 1 + 5 and lines[0].startswith("round,rank,item_id")

    _check_registered_models(client, settings, {r.data.tags["beliefloop.round"]: r.info.run_id for r in rounds})
    _check_prefect_runs(name, n_rounds=2, shards=2)

    store = LabelStore(settings.store_url)
    assert _queue_counts(store, settings.campaign_name) == {1: 5, 2: 5}
    # Round 1's batch was answered by the oracle before round 2 trained; round 2's still waits.
    assert {q.status for q in store.queued(settings.campaign_name, round_=1)} == {"labeled"}
    assert {q.status for q in store.queued(settings.campaign_name, round_=2)} == {"pending"}


def _check_prefect_runs(campaign: str, n_rounds: int, shards: int) -> None:
    """Prefect's server holds each round's flow run as ``<campaign> · round N``, tagged with the campaign and
    ``round:N``; its task runs are named after their step (``score-pool[i/n]``, ``fit[candidate]``) and tagged with
    the campaign alone (a tag set per round leaked Prefect services, see ``labeling_round``)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterTags

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[campaign])))
        assert sorted(r.name for r in runs) == [f"{campaign} · round {n}" for n in range(1, n_rounds + 1)]
        for run in runs:
            round_tag = f"round:{run.name.rsplit(' ', 1)[1]}"
            assert round_tag in run.tags
            steps = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            names = {t.name for t in steps}
            pool = {f"score-pool[{i}/{shards}]" for i in range(1, shards + 1)}
            assert {*pool, "oracle-answers", "fit[h64-d1]", "evaluate", "register-model", "log-round"} <= names
            assert all(set(t.tags) == {campaign} for t in steps)


def _check_registered_models(client: MlflowClient, settings, round_runs: dict[str, str]) -> None:
    """Each round registered its selected model as a version of ``<campaign>-model`` tagged with the round; the last
    one, loaded back as a pyfunc from the store, answers the learner's own predictive of the saved checkpoint."""
    name = f"{settings.campaign_name}-model"
    versions = {v.tags["beliefloop.round"]: v for v in client.search_model_versions(f"name = '{name}'")}
    assert {r: v.run_id for r, v in versions.items()} == round_runs
    uri = f"models:/{name}/{versions['2'].version}"
    info = mlflow.models.get_model_info(uri)
    assert info.saved_input_example_info["type"] == "dataframe"
    assert info.signature.inputs.input_names() == ["x0", "x1", "x2", "x3"]  # iris: 4 features
    pyfunc = mlflow.pyfunc.load_model(uri)

    features = model_feature_store(settings)
    rows = np.asarray(features.rows_train[:7])
    x = np.asarray(features.features[rows], dtype=np.float32)
    answer = pyfunc.predict(pd.DataFrame(x, columns=[f"x{i}" for i in range(4)]))

    selected = client.get_run(round_runs["2"]).data.params["selected_candidate"]
    checkpoint = settings.models_dir / settings.campaign_name / "candidates" / f"{selected}.pt"
    model = load_model(torch.load(checkpoint, weights_only=True), "cpu")
    seed, samples = round_seed(settings.campaign.seed, 2), settings.acquisition.samples
    probs = predict_proba(model, torch.from_numpy(x), samples, seed=seed).double().numpy()
    classes = [str(c) for c in features.classes]
    np.testing.assert_allclose(answer[[f"p_{c}" for c in classes]].to_numpy(), probs, rtol=1e-5, atol=1e-7)
    assert list(answer["predicted"]) == [classes[i] for i in probs.argmax(1)]
    # Entropy and BALD against numpy, on the posterior draws the learner scores the pool with.
    draws = pool_predict(model, torch.from_numpy(x), samples, seed=seed).double().numpy()
    entropy = -(probs * np.log(probs)).sum(1)
    expected = -(draws * np.log(draws)).sum(2).mean(0)
    np.testing.assert_allclose(answer["predictive_entropy"], entropy, rtol=1e-5)
    np.testing.assert_allclose(answer["bald"], np.maximum(entropy - expected, 0), rtol=1e-4, atol=1e-7)
    assert (answer["bald"] > 0).any()


def test_killed_round_rerun_adds_no_duplicates(tmp_path):
    workspace = tmp_path / "w"
    args = [
        *BELIEFLOOP,
        "simulate",
        "--dataset",
        "iris",
        "--rounds",
        "3",
        "--k",
        "5",
        "--initial",
        "9",
        "--samples",
        "4",
        "--workspace",
        str(workspace),
    ]
    env = {**os.environ, "BELIEFLOOP_MODEL__STEPS": "200"}
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    campaign = "iris-powerbald-seed0"
    store = LabelStore.for_workspace(workspace)
    deadline = time.monotonic() + 240
    # Kill the whole process group as soon as round 3 has started (it is mid-round then).
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with store.engine.connect() as conn:
                started = conn.exec_driver_sql(
                    "SELECT count(*) FROM rounds WHERE campaign = ? AND round = 3 AND status = 'running'",
                    (campaign,),
                ).scalar()
        except sa.exc.OperationalError:
            started = 0
        if started:
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, process.stdout.read().decode()[-2000:]
    assert store.next_round(campaign) == 3

    json_path = tmp_path / "metrics.json"
    rerun = subprocess.run([*args, "--json", str(json_path)], env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "iris, 3 rounds, k=5, powerbald, S=4, mc_dropout" in " ".join(rerun.stdout.split())  # the header line
    assert _queue_counts(store, campaign) == {1: 5, 2: 5, 3: 5}
    metrics = json.loads(json_path.read_text())
    assert [m["round"] for m in metrics] == [1, 2, 3]
    assert [m["n_labeled"] for m in metrics] == [9, 14, 19]

    client = MlflowClient(tracking_uri=f"sqlite:///{workspace / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(campaign)
    tags = [r.data.tags.get("beliefloop.round") for r in client.search_runs([experiment.experiment_id])]
    assert sorted(t for t in tags if t) == ["1", "2", "3"]


@pytest.mark.parametrize(
    ("family", "update"),
    [
        ("mc_dropout", "retrain"),
        ("laplace", "retrain"),
        ("laplace", "belief"),
        ("vi", "retrain"),
        ("vi", "belief"),
        ("ensemble", "retrain"),
    ],
)
def test_every_family_and_update_mode_runs_a_campaign(tmp_path, prefect_no_heartbeat, family, update):
    """Default S (20) and ensemble size (5): every family's predictive honours S through scoring and evaluation."""
    from flows.rounds import simulate_campaign

    settings = load_settings(
        None,
        {
            "workspace": tmp_path / "w",
            "dataset": {"name": "iris"},
            "campaign": {"rounds": 2, "k": 5, "initial": 9},
            "model": {"family": family, "steps": 60, "update_steps": 30},
            "selection": {"candidates": []},
            "update": update,
        },
    )
    results = simulate_campaign(settings)
    assert [r["n_queued"] for r in results] == [5, 5]
    assert results[1]["n_labeled"] == 14
    assert results[1][f"n_fitted/{family}"] == (5 if update == "belief" else 14)
    assert results[1]["test_accuracy"] > 0.6  # 39 test items, 3 classes
    assert results[1]["pool_scored"] == 111 - 14  # iris: 111 train items, 14 of them labelled


def test_exhausted_pool_ends_the_campaign_cleanly(tmp_path, prefect_no_heartbeat, capsys):
    from flows.rounds import simulate_campaign

    settings = _small(tmp_path / "w", rounds=3, k=99999)  # round 1 queues the whole pool
    results = simulate_campaign(settings)
    assert [r["round"] for r in results] == [1, 2]  # round 2 finds the pool exhausted; round 3 would refit alone
    assert results[1]["pool_size"] == 0 and results[1]["n_queued"] == 0
    assert "round 2: the pool is exhausted" in capsys.readouterr().out

    store = LabelStore(settings.store_url)
    assert store.unfinished_rounds(settings.campaign_name) == []
    assert _queue_counts(store, settings.campaign_name) == {1: results[1]["n_labeled"] - 9}  # the pool, answered
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.campaign_name)
    statuses = {
        r.data.tags["beliefloop.round"]: r.info.status
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("beliefloop.role") == "round"
    }
    assert statuses == {"1": "FINISHED", "2": "FINISHED"}

    more = simulate_campaign(_small(tmp_path / "w", rounds=4, k=99999))  # run again, asking for more rounds
    assert [r["round"] for r in more] == [1, 2] and store.next_round(settings.campaign_name) == 3  # no refit round
    assert "the pool is exhausted since round 2" in capsys.readouterr().out


def _simulate(workspace: Path, rounds: int, kill_at: str | None = None, **env: str) -> subprocess.CompletedProcess:
    """``beliefloop simulate`` on iris (one candidate, short training), killed at ``kill_at`` when given; ``env``:
    more ``BELIEFLOOP_*`` settings."""
    env = {
        **os.environ,
        "BELIEFLOOP_MODEL__STEPS": "50",
        "BELIEFLOOP_SELECTION__CANDIDATES": "[]",
        **({"BELIEFLOOP_KILL_AT": kill_at} if kill_at else {}),
        "BELIEFLOOP_TRACKING__REGISTER_MODEL": "true",  # a killed round registers its model once
        **env,
    }
    args = ["--dataset", "iris", "--rounds", str(rounds), "--k", "5", "--initial", "9", "--samples", "4"]
    command = [*BELIEFLOOP, "simulate", *args, "--workspace", str(workspace)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_a_round_killed_at_each_step_resumes_to_the_uninterrupted_result(tmp_path):
    """Round 2 is SIGKILLed at every step of ``ROUND_STEPS`` in turn (each re-run resumes it and dies at the next),
    then finishes: the store and MLflow hold what an uninterrupted campaign with the same seed holds, once."""
    from data.faults import ROUND_STEPS

    campaign, killed, clean = "iris-powerbald-seed0", tmp_path / "killed", tmp_path / "clean"
    assert _simulate(killed, 1).returncode == 0
    for step in ROUND_STEPS:
        result = _simulate(killed, 2, kill_at=step)
        assert result.returncode == -signal.SIGKILL, (step, result.stdout[-2000:] + result.stderr[-2000:])
        assert LabelStore.for_workspace(killed).unfinished_rounds(campaign) == [2], step
    for workspace in (killed, clean):
        result = _simulate(workspace, 2)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    stores = {w: LabelStore.for_workspace(w) for w in (killed, clean)}
    store = stores[killed]
    assert store.unfinished_rounds(campaign) == [] and _queue_counts(store, campaign) == {1: 5, 2: 5}
    with store.engine.connect() as conn:
        n_labels, n_items = conn.exec_driver_sql("SELECT count(*), count(DISTINCT item_id) FROM labels").one()
    assert n_labels == n_items == 14  # 9 seed labels and round 1's 5 answers, each once
    queued = {w: [(q.round, q.rank, q.item_id, q.predicted) for q in s.queued(campaign)] for w, s in stores.items()}
    assert queued[killed] == queued[clean]
    assert store.current_labels(campaign) == stores[clean].current_labels(campaign)

    client = MlflowClient(tracking_uri=f"sqlite:///{killed / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(campaign)
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`beliefloop.role` = 'round'")
    assert sorted((r.data.tags["beliefloop.round"], r.info.status) for r in runs) == [
        ("1", "FINISHED"),
        ("2", "FINISHED"),
    ]
    versions = client.search_model_versions(f"name = '{campaign}-model'")
    assert sorted(v.tags["beliefloop.round"] for v in versions) == ["1", "2"]  # registered once per round
    for run in runs:
        step = int(run.data.tags["beliefloop.round"])
        assert "test_accuracy" in run.data.metrics
        for key in run.data.metrics:
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [step], key


def test_a_belief_update_round_killed_after_saving_its_posterior_restarts_from_the_previous_one(tmp_path):
    """Round 2 saved its posterior, then died: its re-run updates round 1's posterior on round 2's new labels again
    (not its own, which has seen them), as the uninterrupted campaign does."""
    belief = {"BELIEFLOOP_MODEL__FAMILY": "laplace", "BELIEFLOOP_UPDATE": "belief"}
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    assert _simulate(killed, 1, **belief).returncode == 0
    assert _simulate(killed, 2, kill_at="after_training", **belief).returncode == -signal.SIGKILL
    for workspace in (killed, clean):
        result = _simulate(workspace, 2, **belief)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    keys = ("n_fitted/laplace", "log_evidence/laplace", "test_nll")
    rounds = {w: LabelStore.for_workspace(w).round_metrics("iris-powerbald-seed0") for w in (killed, clean)}
    assert [[r[k] for k in keys] for r in rounds[killed]] == [[r[k] for k in keys] for r in rounds[clean]]
    assert rounds[killed][1]["n_fitted/laplace"] == 5


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc (Linux)")
def test_rounds_leave_no_open_files_behind(tmp_path, prefect_no_heartbeat):
    """A long-lived process (``beliefloop serve``) runs round after round: no round leaves a file of the workspace
    open. Each round used to leave its SQLite connection open (two more open files on ``labels.db`` per digits round;
    5 here after 3 rounds), and, through Prefect's tag-concurrency service of each new ``round:N`` tag set, its
    feature store's memory-mapped files and MLflow's database handles (6 more open files here over rounds 3–4), so
    a served campaign would run out of file handles."""
    from flows.rounds import simulate_campaign

    workspace = (tmp_path / "w").resolve()

    def open_in_workspace() -> list[str]:
        """Files of this campaign's workspace open in this process (other tests' files are not counted), once the
        garbage collector has closed those of unreachable objects."""
        gc.collect()
        links = []
        for fd in Path("/proc/self/fd").iterdir():
            try:
                links.append(os.readlink(fd))
            except OSError:  # closed while listing
                continue
        return sorted(link for link in links if link.startswith(f"{workspace}/"))

    assert [r["round"] for r in simulate_campaign(_small(workspace, rounds=2))] == [1, 2]
    after_two = open_in_workspace()
    assert str(workspace / "labels.db") not in after_two
    assert [r["round"] for r in simulate_campaign(_small(workspace, rounds=4))] == [1, 2, 3, 4]  # resumed: 3, 4
    assert open_in_workspace() == after_two
