"""Prefect flows: ``labeling_round`` (one round of a campaign) and ``simulate_campaign`` (rounds + oracle).

Tasks are thin: each calls a function of ``bayes_models``, ``acquisition`` or ``data`` and passes plain values.
A round is idempotent per (campaign, round): the label store remembers an unfinished round, its queue batch
is written once, and its MLflow run is found again by tag, so re-running after a crash adds no duplicates.
"""

from __future__ import annotations

import csv
import functools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from acquisition import BATCH_ACQUISITIONS, RunningTopK, StreamResult, bald, batchbald, score_pool_streaming
from bayes_models import MCDropout, bayes_factor_table
from bayes_models.metrics import accuracy, brier, ece, nll, reliability
from bayes_models.selection import BayesFactorRow
from data import DatasetError, FeatureStore, open_feature_store
from data.faults import kill_point
from data.pool import iter_pool_chunks
from data.store import LabelAnswer, LabelStore, QueueEntry
from flows import plots
from flows.campaign_setup import balanced_seed_rows, campaign_test_rows, model_feature_store, prepare_campaign
from flows.console import console, pool_exhausted, print_round
from flows.models import (
    CandidateSpec,
    FittedCandidate,
    candidate_specs,
    check_comparable,
    fit_candidate,
    load_candidate,
    save_candidate,
)
from flows.settings import Settings
from flows.tracking import CampaignTracker

SCORE_CHUNK = 4096


@dataclass
class PoolScores:
    """What scoring the pool leaves: the chosen batch and histograms of the pool's uncertainty."""

    entries: list[QueueEntry]
    aleatoric_hist: np.ndarray
    epistemic_hist: np.ndarray
    bin_edges: np.ndarray
    pool_size: int
    n_scored: int

    def mean(self, hist: np.ndarray) -> float:
        """Mean uncertainty over the scored items from a histogram (exact to half a bin width)."""
        centers = (self.bin_edges[:-1] + self.bin_edges[1:]) / 2
        return float((hist * centers).sum() / max(hist.sum(), 1))


def _rows_tensor(features: FeatureStore, rows: np.ndarray) -> torch.Tensor:
    order = np.argsort(rows)  # memmap reads in row order, then restore the caller's order
    block = np.empty((len(rows), *features.features.shape[1:]), dtype=np.float32)
    block[order] = features.features[rows[order]]
    return torch.from_numpy(block)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def answer_from_oracle(
    store: LabelStore, features: FeatureStore, campaign: str, round_: int, noise: float, seed: int
) -> int:
    """The simulated oracle answers every pending item of earlier rounds from the held-back labels."""
    pending = [q for q in store.queued(campaign, status="pending") if q.round < round_]
    if not pending:
        return 0
    rng = np.random.default_rng([seed, round_])
    truth = features.targets[features.row_of([q.item_id for q in pending])]
    answers = []
    n_classes = len(features.classes)
    for item, label in zip(pending, truth, strict=True):
        if noise > 0 and rng.random() < noise and n_classes > 1:
            label = (label + rng.integers(1, n_classes)) % n_classes
        answers.append(LabelAnswer(item.item_id, int(label)))
    report = store.record_labels(campaign, answers, annotator="oracle")
    if report.rejected:
        raise RuntimeError(f"oracle answers rejected: {report.rejected[:5]}")
    return len(report.accepted)


@task(cache_policy=NO_CACHE)
def fit_candidate_task(
    spec: CandidateSpec, settings: Settings, features: FeatureStore, labeled: dict[str, int], round_: int
) -> FittedCandidate:
    """Fit (``update: retrain``) or belief-update (``update: belief``) one candidate on the current labels."""
    ids = list(labeled)
    x = _rows_tensor(features, features.row_of(ids))
    y = torch.tensor(list(labeled.values()), dtype=torch.long)
    previous = None
    if settings.update == "belief":
        previous = load_candidate(_candidates_dir(settings), spec.name, spec.model.family, round_)
    return fit_candidate(
        spec,
        settings,
        x,
        y,
        ids,
        feature_shape=tuple(features.meta["feature_shape"]),
        n_classes=len(features.classes),
        seed=settings.campaign.seed * 1000 + round_,
        previous=previous,
    )


def _candidates_dir(settings: Settings) -> Path:
    return settings.models_dir / settings.campaign_name / "candidates"


@task(cache_policy=NO_CACHE)
def evaluate(
    models: list, features: FeatureStore, test_rows: np.ndarray, samples: int, round_: int
) -> list[tuple[dict[str, float], object]]:
    """Test metrics and reliability-diagram data of each model on ``test_rows``: the campaign's test items (the
    label store's), ingested ones included. One task for all candidates: the test inputs are read once, and a
    round pays for one task run instead of one per candidate."""
    rows = np.asarray(test_rows, dtype=np.int64)
    x = _rows_tensor(features, rows)
    targets = torch.from_numpy(np.asarray(features.targets[rows], dtype=np.int64))
    results = []
    for model in models:
        probs = model.predictive_samples(x, samples, seed=round_).mean(0).cpu()
        metrics = {
            "test_accuracy": accuracy(probs, targets),
            "test_nll": nll(probs, targets),
            "test_ece": ece(probs, targets),
            "test_brier": brier(probs, targets),
        }
        results.append((metrics, reliability(probs, targets)))
    return results


def pool_predict(model, x: torch.Tensor, samples: int, *, seed: int) -> torch.Tensor:
    """``probs[S, B, C]`` for pool scoring: the same S posterior draws for every item, whatever the chunk or shard
    (MC dropout with consistent masks; Laplace and VI draw weights per call), so scores never depend on sharding."""
    if isinstance(model, MCDropout):
        return model.predictive_samples(x, samples, seed=seed, consistent=True).cpu()
    return model.predictive_samples(x, samples, seed=seed).cpu()


@task(cache_policy=NO_CACHE, retries=1)
def score_shard(
    model,
    store_dir: str,
    rows: np.ndarray,
    ids: np.ndarray,
    acquisition: str,
    samples: int,
    k: int,
    seed: int,
    shard: int,
) -> StreamResult:
    """Stream one shard of the pool through the model: running top-k and uncertainty histograms.

    Every shard draws the same posterior samples (``seed``), so item scores do not depend on the sharding; only
    random score functions (``random``, ``powerbald``) draw per shard. Takes the feature store's path, not the
    arrays, so a Dask worker maps the file itself.
    """
    features = open_feature_store(store_dir)
    chunks = iter_pool_chunks(features.features, rows, ids, SCORE_CHUNK)
    result = score_pool_streaming(
        functools.partial(pool_predict, model, seed=seed),
        chunks,
        k=k,
        acquisition=acquisition,
        samples=samples,
        generator=torch.Generator().manual_seed(seed * 1009 + shard),
    )
    kill_point("scoring")
    return result


def score_pool(model, features: FeatureStore, pool: dict[str, int], settings: Settings, round_: int) -> PoolScores:
    """Score the pool in ``acquisition.shards`` Prefect tasks and merge their top-k; queue the batch.

    Without a model (cold start) a seeded random batch is queued; an exhausted pool (every item labeled, queued or
    skipped) queues nothing. ``pool_subsample`` scores a seeded random subset (Gal et al. 2017). BatchBALD runs
    greedily on the ``batch_candidates`` best items by BALD.
    """
    a, k = settings.acquisition, settings.campaign.k
    seed = settings.campaign.seed * 1000 + round_
    generator = np.random.default_rng([settings.campaign.seed, round_])
    ids = np.asarray(list(pool), dtype=np.str_)
    rows = np.fromiter(pool.values(), dtype=np.int64, count=len(pool))
    edges = np.linspace(0.0, np.log(max(len(features.classes), 2)), 51)
    if model is None or not pool:  # cold start: a seeded random batch; an exhausted pool: nothing to score
        chosen = generator.permutation(len(ids))[:k]
        entries = [QueueEntry(str(ids[i]), rank, None, "random") for rank, i in enumerate(chosen, start=1)]
        return PoolScores(entries, np.zeros(50, np.int64), np.zeros(50, np.int64), edges, len(ids), 0)
    if a.pool_subsample is not None and a.pool_subsample < len(ids):
        keep = np.sort(generator.choice(len(ids), a.pool_subsample, replace=False))
        ids, rows = ids[keep], rows[keep]
    batch = a.name in BATCH_ACQUISITIONS
    stream_name, stream_k = ("bald", max(a.batch_candidates, k)) if batch else (a.name, k)
    shards = [s for s in np.array_split(np.arange(len(ids)), a.shards) if len(s)]
    futures = [
        score_shard.submit(model, str(features.directory), rows[s], ids[s], stream_name, a.samples, stream_k, seed, i)
        for i, s in enumerate(shards)
    ]
    results = [future.result() for future in futures]
    merged = RunningTopK(stream_k)
    for result in results:
        merged.update(result.scores, result.ids)
    top_ids, top_scores = merged.result()
    row_of = dict(zip(ids.tolist(), rows.tolist(), strict=True))
    probs = pool_predict(
        model, _rows_tensor(features, np.array([row_of[i] for i in top_ids], dtype=np.int64)), a.samples, seed=seed
    )
    if batch:
        positions = batchbald(probs, k, generator=torch.Generator().manual_seed(seed), item_ids=top_ids).tolist()
        scores = bald(probs[:, positions]).tolist()
    else:
        positions, scores = list(range(len(top_ids))), top_scores.tolist()
    predicted = probs.mean(0).argmax(-1)
    entries = [
        QueueEntry(top_ids[p], rank, float(score), a.name, int(predicted[p]))
        for rank, (p, score) in enumerate(zip(positions, scores, strict=True), start=1)
    ]
    return PoolScores(
        entries,
        sum(r.aleatoric_hist for r in results),
        sum(r.epistemic_hist for r in results),
        results[0].bin_edges,
        len(pool),
        sum(r.n_scored for r in results),
    )


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=1)
def log_round(
    tracker: CampaignTracker,
    run_id: str,
    round_: int,
    metrics: dict[str, float],
    queued: list,
    scores: PoolScores,
    diagram: object | None,
    selection: list[tuple[BayesFactorRow, FittedCandidate, dict[str, float]]],
    models_dir: Path,
    started_at: float,
) -> dict[str, float]:
    """Artifacts (queued batch, Bayes factors, plots, checkpoint), then the round's metrics, params and tags in one
    MLflow batch, with the round's timings up to that point (``started_at``: the round's start, Unix time).
    Returns the timings: ``round_seconds`` and ``overhead_seconds``, everything but training and scoring."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        batch = tmp_path / "queued_batch.csv"
        with batch.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["round", "rank", "item_id", "score", "acquisition", "predicted", "status"])
            for q in queued:
                writer.writerow([q.round, q.rank, q.item_id, q.score, q.acquisition, q.predicted, q.status])
        paths = [batch]
        if selection:
            paths.append(_bayes_factor_csv(selection, tmp_path / "bayes_factors.csv"))
        if scores.n_scored:
            paths.append(
                plots.uncertainty_histogram(
                    scores.aleatoric_hist, scores.epistemic_hist, scores.bin_edges, tmp_path / "uncertainty.png"
                )
            )
        if diagram is not None:
            paths.append(
                plots.reliability_diagram(
                    diagram.confidence, diagram.accuracy, diagram.count, tmp_path / "reliability.png"
                )
            )
        params, tags = {}, {}
        if selection:
            chosen = selection[0][1]
            params = {"selected_candidate": chosen.name, "evidence_kind": chosen.evidence_kind}
            tags = {"beliefloop.selected": chosen.name}
            models_dir.mkdir(parents=True, exist_ok=True)
            checkpoint = models_dir / f"round-{round_:03d}.pt"
            torch.save(
                {"candidate": chosen.name, "family": chosen.family, "state": chosen.model.state_dict()}, checkpoint
            )
            paths.append(checkpoint)
        tracker.log_artifacts(run_id, paths)
    elapsed = time.time() - started_at
    timings = {
        "round_seconds": elapsed,
        "overhead_seconds": elapsed - metrics.get("train_seconds", 0.0) - metrics["acquisition_seconds"],
    }
    tracker.log_batch(run_id, {**metrics, **timings}, step=round_, params=params, tags=tags)
    return timings


def _bayes_factor_csv(selection, path: Path) -> Path:
    """The round's model-selection table: evidence, log Bayes factor against the selected model and its reading."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "candidate",
                "family",
                "log_evidence",
                "log_bayes_factor",
                "kass_raftery",
                "evidence_kind",
                "test_nll",
                "test_accuracy",
                "train_seconds",
                "selected",
            ]
        )
        for row, fitted, test in selection:
            writer.writerow(
                [
                    row.candidate,
                    fitted.family,
                    f"{row.log_evidence:.6f}",
                    f"{row.log_bayes_factor:.6f}",
                    row.reading,
                    fitted.evidence_kind,
                    f"{test['test_nll']:.6f}",
                    f"{test['test_accuracy']:.6f}",
                    f"{fitted.train_seconds:.3f}",
                    row.selected,
                ]
            )
    return path


def select_model(
    settings: Settings, features: FeatureStore, labeled: dict[str, int], round_: int
) -> tuple[list[tuple[BayesFactorRow, FittedCandidate, dict[str, float]]], object]:
    """Fit every candidate as a Prefect task, rank them by evidence, evaluate each on the test split.

    Returns the Bayes-factor rows (selected first) with their fitted candidates and test metrics, and the
    selected model's reliability-diagram data.
    """
    specs = candidate_specs(settings)
    if settings.selection.workers > 1:  # concurrent fits share torch's RNG: faster, not bit-reproducible
        futures = [fit_candidate_task.submit(spec, settings, features, labeled, round_) for spec in specs]
        results = [future.result() for future in futures]
    else:
        results = [fit_candidate_task.submit(spec, settings, features, labeled, round_).result() for spec in specs]
    fitted = {f.name: f for f in results}
    check_comparable(list(fitted.values()))
    table = bayes_factor_table({name: f.log_evidence for name, f in fitted.items()})
    test_rows = campaign_test_rows(settings, features)
    tests = evaluate(
        [fitted[row.candidate].model for row in table], features, test_rows, settings.acquisition.samples, round_
    )
    selection = [(row, fitted[row.candidate], metrics) for row, (metrics, _) in zip(table, tests, strict=True)]
    return selection, tests[0][1]  # the table lists the selected candidate first


@flow(name="labeling_round")
def labeling_round(settings: Settings, oracle: bool = False) -> dict[str, float]:
    """One round: ingest labels → train → evaluate → score the pool → enqueue top-k → log to MLflow."""
    started_at = time.time()
    logger = get_run_logger()
    campaign = settings.campaign_name
    store = LabelStore(settings.store_url)
    features = model_feature_store(settings)
    round_ = store.next_round(campaign)
    store.start_round(campaign, round_)
    tracker = CampaignTracker(settings.tracking_uri, settings.artifact_root, campaign)
    parent = tracker.campaign_run(settings.model_dump(mode="json"))
    run_id = tracker.round_run(parent, round_)

    if oracle:
        answered = answer_from_oracle(
            store, features, campaign, round_, settings.campaign.oracle_noise, settings.campaign.seed
        )
        logger.info("oracle answered %d items", answered)
    labeled = store.current_labels(campaign)
    metrics: dict[str, float] = {"n_labeled": len(labeled)}
    model, diagram, selection = None, None, []
    if len(labeled) >= settings.campaign.min_labels or (oracle and labeled):
        selection, diagram = select_model(settings, features, labeled, round_)
        chosen = selection[0][1]
        model = chosen.model
        metrics["train_seconds"] = sum(f.train_seconds for _, f, _ in selection)
        metrics.update(selection[0][2])
        for row, fitted, _ in selection:
            metrics[f"log_evidence/{row.candidate}"] = row.log_evidence
            metrics[f"log_bayes_factor/{row.candidate}"] = row.log_bayes_factor
            metrics[f"n_fitted/{row.candidate}"] = fitted.n_fitted
            if settings.update == "belief":
                metrics[f"n_relabelled/{row.candidate}"] = fitted.n_relabelled
            if fitted.n_relabelled:
                logger.info(
                    "%s: %d items relabelled since its posterior; retrained", row.candidate, fitted.n_relabelled
                )
            save_candidate(_candidates_dir(settings), fitted, round_)
        logger.info("selected %s (%s)", chosen.name, chosen.evidence_kind)
        kill_point("after_training")
    else:
        logger.info("%d labels < min_labels=%d: queueing a random batch", len(labeled), settings.campaign.min_labels)

    pool = store.unlabeled_pool(campaign)
    start = time.perf_counter()
    scores = score_pool(model, features, pool, settings, round_)
    metrics["acquisition_seconds"] = time.perf_counter() - start
    metrics["pool_size"] = scores.pool_size
    if scores.n_scored:
        metrics["pool_scored"] = scores.n_scored
        metrics["pool_mean_aleatoric"] = scores.mean(scores.aleatoric_hist)
        metrics["pool_mean_epistemic"] = scores.mean(scores.epistemic_hist)
    queued = store.enqueue(campaign, round_, scores.entries)
    metrics["n_queued"] = len(queued)
    kill_point("before_logging")

    metrics |= log_round(
        tracker, run_id, round_, metrics, queued, scores, diagram, selection, settings.models_dir / campaign, started_at
    )
    kill_point("after_logging")
    tracker.finish(run_id)
    summary = {"round": round_, **metrics, "selected": selection[0][1].name if selection else None}
    store.finish_round(campaign, round_, summary)
    return summary


@flow(name="select_models")
def select_models(settings: Settings, n_labels: int | None = None) -> list[dict]:
    """Model selection alone: fit every candidate on the dataset's known training labels (a class-balanced subset
    of ``n_labels`` when given) and return the Bayes-factor table with test metrics, selected model first."""
    features = model_feature_store(settings)
    train_rows = np.asarray(features.rows_train)
    targets = np.asarray(features.targets[train_rows])
    if n_labels is not None:
        chosen = balanced_seed_rows(targets, n_labels, len(features.classes), settings.campaign.seed)
    else:
        chosen = np.flatnonzero(targets >= 0)
    if len(chosen) == 0:
        raise DatasetError(f"dataset {settings.dataset.name!r} has no training labels to select a model on")
    labeled = {str(features.ids[train_rows[i]]): int(targets[i]) for i in chosen}
    selection, _ = select_model(settings, features, labeled, 0)
    return [
        {
            "candidate": row.candidate,
            "family": fitted.family,
            "log_evidence": row.log_evidence,
            "log_bayes_factor": row.log_bayes_factor,
            "reading": row.reading,
            "evidence_kind": fitted.evidence_kind,
            **test,
            "train_seconds": fitted.train_seconds,
        }
        for row, fitted, test in selection
    ]


def task_runner(settings: Settings):
    """Threads by default (``selection.workers`` at once); the Dask cluster at ``acquisition.dask_address`` when
    given, through prefect-dask, so pool shards and candidate fits run on its workers."""
    if settings.acquisition.dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=settings.acquisition.dask_address)
    return ThreadPoolTaskRunner(max_workers=max(settings.selection.workers, settings.acquisition.shards))


def run_round(settings: Settings, *, oracle: bool = False) -> dict[str, float]:
    """``labeling_round`` on the task runner the settings ask for."""
    return labeling_round.with_options(task_runner=task_runner(settings))(settings, oracle=oracle)


@flow(name="simulate_campaign")
def simulate_campaign(settings: Settings) -> list[dict[str, float]]:
    """Rounds 1..``campaign.rounds`` with a simulated oracle; resumes where an earlier run stopped, and stops
    after a round that found the pool exhausted (or runs none when an earlier run ended so)."""
    store = LabelStore(settings.store_url)
    prepare_campaign(settings, store, simulate=True)
    campaign = settings.campaign_name
    if _still_exhausted(store, campaign):
        console.print(
            f"the pool is exhausted since round {store.next_round(campaign) - 1} (every item is labeled, queued or "
            "skipped); no round was run",
            soft_wrap=True,
        )
        return store.round_metrics(campaign)[: settings.campaign.rounds]
    while store.next_round(campaign) <= settings.campaign.rounds:
        result = run_round(settings, oracle=True)
        print_round(result)
        if pool_exhausted(result):  # later rounds would only refit the same labels
            break
    return store.round_metrics(campaign)[: settings.campaign.rounds]


def _still_exhausted(store: LabelStore, campaign: str) -> bool:
    """Whether the last round found the pool exhausted and nothing came since (no new pool item, nothing
    pending, no round left unfinished): another simulated round would only refit the same labels."""
    if store.unfinished_rounds(campaign) or store.unlabeled_pool(campaign) or store.queued(campaign, status="pending"):
        return False
    done = store.round_metrics(campaign)
    return bool(done) and pool_exhausted(done[-1])
