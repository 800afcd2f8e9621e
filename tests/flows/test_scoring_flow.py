"""Pool scoring inside real flows: shards on a real Dask cluster equal one process; BatchBALD and subsampling."""

import io
import logging
import re

import numpy as np
import pytest
import torch
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner
from rich.console import Console

from acquisition import EPIG_TARGETS, epig
from bayes_models import MCDropout, MCDropoutConfig
from flows.campaign_setup import ensure_feature_store
from flows.progress import RoundProgress
from flows.rounds import score_pool
from flows.settings import load_settings
from learner import pool_predict, round_rng, round_seed


@pytest.fixture(scope="module", autouse=True)
def prefect_no_heartbeat():
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _setup(tmp_path, **acquisition):
    settings = load_settings(
        None,
        {"workspace": tmp_path / "w", "dataset": {"name": "digits"}, "campaign": {"k": 10}, "acquisition": acquisition},
    )
    features = ensure_feature_store(settings)
    train = np.asarray(features.rows_train)
    x = torch.from_numpy(np.asarray(features.features[train[:80]]))
    y = torch.from_numpy(np.asarray(features.targets[train[:80]]))
    model = MCDropout(MCDropoutConfig((64,), 10, hidden=32, steps=100), device="cpu").fit(x, y)
    pool = {str(features.ids[r]): int(r) for r in train[80:]}
    return settings, features, model, pool


@flow
def _score_flow(settings, store_dir: str, pool: dict, state: dict):
    from flows.campaign_setup import ensure_feature_store

    model = MCDropout.from_state_dict(state, device="cpu")
    return score_pool(model, ensure_feature_store(settings), pool, settings, 1, settings.campaign.k)


def _run(settings, features, model, pool, runner):
    result = _score_flow.with_options(task_runner=runner)(settings, str(features.directory), pool, model.state_dict())
    return [(e.item_id, e.score, e.predicted) for e in result.entries], result


def test_dask_shards_equal_single_process(tmp_path):
    distributed = pytest.importorskip("distributed")
    from prefect_dask import DaskTaskRunner

    # BALD's scores are deterministic; every pool item is scored
    settings, features, model, pool = _setup(tmp_path, name="bald", pool_subsample="all")
    single, one = _run(settings, features, model, pool, ThreadPoolTaskRunner(max_workers=1))
    sharded_settings = settings.model_copy(
        update={"acquisition": settings.acquisition.model_copy(update={"shards": 3})}
    )
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        sharded, many = _run(sharded_settings, features, model, pool, DaskTaskRunner(address=cluster.scheduler_address))
    # Same ids, order and predictions; scores equal to float32 rounding: a Dask worker runs torch on one thread, this
    # process on two, and the head's GEMMs run over a chunk's items, whose count differs by shard, so reductions may
    # sum in another order (relative differences of up to ~1e-11 seen).
    assert [(i, p) for i, _, p in sharded] == [(i, p) for i, _, p in single]
    np.testing.assert_allclose([s for _, s, _ in sharded], [s for _, s, _ in single], rtol=1e-7, atol=0)
    assert len(single) == 10
    assert np.array_equal(many.query.epistemic_hist, one.query.epistemic_hist)
    assert many.query.n_scored == one.query.n_scored == len(pool)


def test_batchbald_and_subsample_in_the_flow(tmp_path):
    settings, features, model, pool = _setup(tmp_path, name="batchbald", batch_candidates=40, pool_subsample=300)
    entries, result = _run(settings, features, model, pool, ThreadPoolTaskRunner(max_workers=1))
    assert result.query.n_scored == 300 and result.query.pool_size == len(pool)
    ids = [item_id for item_id, _, _ in entries]
    assert len(ids) == len(set(ids)) == 10 and set(ids) <= set(pool)
    assert {e.acquisition for e in result.entries} == {"batchbald"}
    assert all(score >= 0 for _, score, _ in entries)  # per-item BALD of the chosen items
    # Deterministic: the same seed and round choose the same batch again.
    again, _ = _run(settings, features, model, pool, ThreadPoolTaskRunner(max_workers=1))
    assert again == entries


def test_epig_in_the_flow_scores_the_same_in_one_shard_or_three(tmp_path):
    """Each shard reads EPIG's target rows from the feature store and predicts them under the round's draws."""
    settings, features, model, pool = _setup(tmp_path, name="epig", pool_subsample="all")
    single, one = _run(settings, features, model, pool, ThreadPoolTaskRunner(max_workers=1))
    sharded_settings = settings.model_copy(
        update={"acquisition": settings.acquisition.model_copy(update={"shards": 3})}
    )
    sharded, _ = _run(sharded_settings, features, model, pool, ThreadPoolTaskRunner(max_workers=3))
    assert [(i, p) for i, _, p in sharded] == [(i, p) for i, _, p in single] and len(single) == 10
    # float32 rounding of the chunk-shaped GEMMs, through EPIG's joint over 200 targets: up to ~4e-7 relative seen
    np.testing.assert_allclose([s for _, s, _ in sharded], [s for _, s, _ in single], rtol=1e-5, atol=0)
    assert one.query.n_scored == len(pool) and {e.acquisition for e in one.entries} == {"epig"}
    assert all(0 < e.score <= e.epistemic + 1e-6 for e in one.entries)
    # The queued scores against EPIG computed here from the round's generator: the targets it draws from the pool
    # (the whole pool is scored, so nothing is drawn before them) and the round's posterior draws.
    rows = np.fromiter(pool.values(), dtype=np.int64)
    targets = rows[np.sort(round_rng(settings.campaign.seed, 1).choice(len(rows), EPIG_TARGETS, replace=False))]
    chosen = rows[[list(pool).index(item) for item, _, _ in single]]
    seed, samples = round_seed(settings.campaign.seed, 1), settings.acquisition.samples

    def draws(rows):
        return pool_predict(model, torch.from_numpy(np.asarray(features.features[rows])), samples, seed=seed)

    expected = epig(draws(chosen), draws(targets)).numpy()  # float32 draws: the chunk's shape moves them by ~1e-7
    np.testing.assert_allclose([s for _, s, _ in single], expected, rtol=1e-5, atol=1e-9)


SCREEN = io.StringIO()


@flow
def _score_flow_shown(settings, pool: dict, state: dict, terminal: bool):
    from flows.campaign_setup import ensure_feature_store

    model = MCDropout.from_state_dict(state, device="cpu")
    screen = Console(file=SCREEN, force_terminal=terminal, width=120)
    with RoundProgress(screen, logging.getLogger("beliefloop.test.progress")).shown() as bars:
        return score_pool(model, ensure_feature_store(settings), pool, settings, 1, settings.campaign.k, bars)


def test_scoring_progress_is_a_bar_on_a_terminal_else_one_log_line_and_changes_nothing(tmp_path, caplog):
    settings, features, model, pool = _setup(tmp_path, shards=3)
    quiet, _ = _run(settings, features, model, pool, ThreadPoolTaskRunner(max_workers=3))
    shown = _score_flow_shown.with_options(task_runner=ThreadPoolTaskRunner(max_workers=3))
    bar = shown(settings, pool, model.state_dict(), True)
    assert [(e.item_id, e.score, e.predicted) for e in bar.entries] == quiet
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", SCREEN.getvalue())  # without the terminal's control codes
    assert "score pool ━" in screen and f" {len(pool)}/{len(pool)} " in screen  # the three shards summed
    with caplog.at_level(logging.INFO, logger="beliefloop.test.progress"):
        shown(settings, pool, model.state_dict(), False)
    lines = [r.getMessage() for r in caplog.records if r.name == "beliefloop.test.progress"]
    assert len(lines) == 1 and re.fullmatch(rf"score pool: {len(pool)} of {len(pool)} items in \d+\.\d s", lines[0])
