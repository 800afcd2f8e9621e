"""Prefect flows: ``labeling_round`` (one round of a campaign) and ``simulate_campaign`` (rounds + oracle).

A round is ingest → the learner's steps as tasks (fit each candidate, select by evidence, query the pool in
shards) → queue → log. Tasks are thin: each calls a function of ``learner`` or ``data`` and passes plain values.
A round is idempotent per (campaign, round): the label store remembers an unfinished round, its queue batch
is written once, and its MLflow run is found again by tag, so re-running after a crash adds no duplicates.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gc
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sqlalchemy as sa
import torch
from prefect import flow, get_run_logger, tags, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from acquisition import StreamResult, cohen_kappa, stable_rounds
from bayes_models.metrics import accuracy, brier, ece, nll, reliability
from bayes_models.selection import BayesFactorRow
from data import DatasetError, FeatureStore, balanced_seed_rows, open_feature_store
from data.faults import kill_point
from data.pool import iter_pool_chunks
from data.round_lock import round_lock
from data.store import LabelAnswer, LabelStore, QueueEntry
from flows import plots
from flows.campaign_setup import (
    campaign_test_rows,
    feature_store_dir,
    model_feature_store,
    open_label_store,
    prepare_campaign,
    save_arrays,
)
from flows.console import NOTHING_QUEUED, console, pool_exhausted, print_round
from flows.models import candidate_specs, evidence_options, load_candidate, prior_checkpoint, save_candidate
from flows.progress import ProgressCallback, RoundProgress
from flows.registry import EXAMPLE_ROWS, RoundModelConfig, log_round_model
from flows.retry import transient_cause, with_retries
from flows.settings import Settings
from flows.tracking import CampaignTracker
from learner import (
    CandidateSpec,
    FittedCandidate,
    QueryResult,
    StreamPlan,
    evaluation_predictive,
    fit_candidate,
    load_checkpoint,
    query_pool,
    random_batch,
    round_rng,
    round_seed,
    select_candidates,
    stream_scores,
)
from learner.query import SCORE_CHUNK

CURVE_METRICS = ("n_labeled", "test_accuracy", "test_nll", "test_ece", "stop_set_agreement")
"""Round metrics also logged on the campaign's parent run, so its chart shows the learning curve as one line."""


def _transient_failure(task, task_run, state) -> bool:
    """Retry a task only when it failed on a transient error (``flows.retry``): a bug fails at once."""
    try:
        state.result()
    except Exception as error:
        return transient_cause(error) is not None
    return False


TRANSIENT_RETRIES = {
    "retries": 2,
    "retry_delay_seconds": exponential_backoff(backoff_factor=1),
    "retry_condition_fn": _transient_failure,
}
"""Task options of the steps that talk to a store: two more tries, 1 s and 2 s later (± jitter), on a transient
error only."""


@dataclass(frozen=True)
class PoolScores:
    """The learner's query of the pool and the queue entries it makes."""

    query: QueryResult
    entries: list[QueueEntry]


@dataclass(frozen=True)
class CandidateResult:
    """One candidate of the round: its Bayes-factor row, the fitted model and its test metrics on the items the
    candidates are compared on (:attr:`Selection.n_compared`)."""

    row: BayesFactorRow
    fitted: FittedCandidate
    test: dict[str, float]


@dataclass(frozen=True)
class Selection:
    """The round's candidates, selected first; the selected model's test metrics on every test item (with the
    seconds that evaluation took, ``evaluation_seconds``) and its reliability-diagram data (empty and ``None``
    without test items); the feature-store rows of the test items those metrics stand on (read once per round) and
    the number the candidates' own rows are compared on (``selection.compare_test_items``)."""

    candidates: list[CandidateResult]
    metrics: dict[str, float]
    diagram: object | None
    test_rows: np.ndarray
    n_compared: int
    prior_tuning: str = "evidence"
    """``selection.prior_tuning`` of the round (logged as a param)."""

    @property
    def selected(self) -> CandidateResult:
        return self.candidates[0]

    @property
    def n_test(self) -> int:
        return len(self.test_rows)


def _rows_tensor(features: FeatureStore, rows: np.ndarray) -> torch.Tensor:
    order = np.argsort(rows)  # memmap reads in row order, then restore the caller's order
    block = np.empty((len(rows), *features.features.shape[1:]), dtype=np.float32)
    block[order] = features.features[rows[order]]
    return torch.from_numpy(block)


@task(cache_policy=NO_CACHE, task_run_name="oracle-answers", **TRANSIENT_RETRIES)
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


@task(cache_policy=NO_CACHE, task_run_name="fit[{spec.name}]")
def fit_candidate_task(
    spec: CandidateSpec,
    settings: Settings,
    features: FeatureStore,
    labeled: dict[str, int],
    round_: int,
    held_out: np.ndarray | None = None,
    bars: RoundProgress | None = None,
) -> FittedCandidate:
    """Fit (``update: retrain``) or belief-update (``update: belief``) one candidate on the current labels; with
    ``held_out`` (positions in ``labeled``), on the others, reporting the held-out items' NLL. ``bars`` shows its
    training steps.

    The body names no ``torch`` attribute: cloudpickle, sending this task to a Dask worker, would then also pickle
    every ``torch`` submodule named like an attribute used here — ``features.classes`` pulled in ``torch.classes``,
    which cannot be pickled (a round on Dask failed so)."""
    ids = list(labeled)
    x = _rows_tensor(features, features.row_of(ids))
    y = _labels_tensor(labeled)
    previous = None
    if settings.update == "belief":
        previous = load_candidate(_candidates_dir(settings), spec.name, spec.model.family, round_)
    prior = None
    if spec.model.prior_from:
        prior = load_checkpoint(prior_checkpoint(Path(spec.model.prior_from), spec.name))
    if bars is None:
        return _fit(spec, settings, features, x, y, ids, round_, previous, held_out, prior, None)
    what = f"fit {spec.name}" + (" (validation split)" if held_out is not None else "")
    with bars.step(what, 0, "steps") as step:
        return _fit(spec, settings, features, x, y, ids, round_, previous, held_out, prior, step.part())


def _fit(
    spec: CandidateSpec,
    settings: Settings,
    features: FeatureStore,
    x: torch.Tensor,
    y: torch.Tensor,
    ids: list[str],
    round_: int,
    previous: dict | None,
    held_out: np.ndarray | None,
    prior: dict | None,
    progress: ProgressCallback | None,
) -> FittedCandidate:
    """``learner.fit_candidate`` with the round's settings."""
    return fit_candidate(
        spec,
        evidence_options(settings),
        x,
        y,
        ids,
        feature_shape=tuple(features.meta["feature_shape"]),
        n_classes=len(features.classes),
        seed=round_seed(settings.campaign.seed, round_),
        previous=previous,
        held_out=held_out,
        samples=settings.acquisition.samples,
        prior_payload=prior,
        progress=progress,
    )


def _labels_tensor(labeled: dict[str, int]) -> torch.Tensor:
    return torch.tensor(list(labeled.values()), dtype=torch.long)


def _candidates_dir(settings: Settings) -> Path:
    return settings.models_dir / settings.campaign_name / "candidates"


def _stop_set_dir(settings: Settings) -> Path:
    return settings.models_dir / settings.campaign_name / "stop_set"


def stop_set_agreement(
    settings: Settings, features: FeatureStore, model, pool: dict[str, int], round_: int
) -> tuple[float | None, int]:
    """Cohen's κ between this round's and the previous model's predicted classes on the campaign's stop set, and
    the stop set's size (``acquisition.stopping``; κ ``None`` when there is no earlier round to compare with).

    The stop set is ``stopping.items`` pool items drawn (seeded by the campaign's seed) the first time a round has
    a model, kept in ``stop_set/items.npz``, and drawn afresh from the pool once items have been added to the
    campaign (``beliefloop ingest``): a stop set blind to the new data would call the model stable before it has
    learnt them, so the count starts over. Each round's predictions are saved as ``round-NNNN.npz`` with the
    feature rows the stop set was drawn at (a re-run round overwrites its own). The predictive is the one test
    metrics use, with the same draws every round, so κ moves with the model only."""
    directory = _stop_set_dir(settings)
    items_path = directory / "items.npz"
    feature_rows = len(features.ids)
    ids = None
    if items_path.exists():
        with np.load(items_path) as saved:
            if int(saved["feature_rows"]) == feature_rows:
                ids = saved["ids"]
    if ids is None:
        ordered = np.array(sorted(pool), dtype=str)
        n = min(settings.stopping.items, len(ordered))
        rng = np.random.default_rng([settings.campaign.seed, 0x5709])
        ids = ordered[np.sort(rng.choice(len(ordered), n, replace=False))]
        if n:
            directory.mkdir(parents=True, exist_ok=True)
            save_arrays(items_path, {"ids": ids, "feature_rows": feature_rows})
    if len(ids) == 0:
        return None, 0
    x = _rows_tensor(features, features.row_of(ids))
    predicted = evaluation_predictive(model, x, settings.selection.test_samples, seed=0).argmax(1).numpy()
    saved_rounds = (p.stem.removeprefix("round-") for p in directory.glob("round-*.npz"))
    earlier = [int(r) for r in saved_rounds if r.isdigit() and int(r) < round_]  # not a crash's left-over .tmp
    save_arrays(
        directory / f"round-{round_:04d}.npz", {"predicted": predicted.astype(np.int16), "feature_rows": feature_rows}
    )
    if not earlier:
        return None, len(ids)
    with np.load(directory / f"round-{max(earlier):04d}.npz") as saved:
        if int(saved["feature_rows"]) != feature_rows:
            return None, len(ids)
        return cohen_kappa(saved["predicted"], predicted), len(ids)


def stopping_note(settings: Settings, history: list[dict], kappa: float | None, items: int) -> str | None:
    """What the round says when its predictions have been stable for ``stopping.rounds`` rounds, else ``None``."""
    kappas = [h.get("stop_set_agreement") for h in history] + [kappa]
    stable = stable_rounds(kappas, settings.stopping.agreement)
    if stable < settings.stopping.rounds:
        return None
    return (
        f"predictions stable: the model's classes for {items} unlabelled pool items agreed with the round before's "
        f"at Cohen's kappa >= {settings.stopping.agreement:g} for {stable} rounds in a row (now {kappa:.3f}), so more "
        "labels are unlikely to change the model (stopping.agreement, stopping.rounds)"
    )


@dataclass(frozen=True)
class Evaluation:
    """The selected model's test metrics and reliability-diagram data on every test item, and each model's test
    metrics on the ``n_compared`` items the candidates are compared on."""

    metrics: dict[str, float]
    diagram: object
    compared: list[dict[str, float]]
    n_compared: int


def _test_metrics(probs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    return {
        "test_accuracy": accuracy(probs, targets),
        "test_nll": nll(probs, targets),
        "test_ece": ece(probs, targets),
        "test_brier": brier(probs, targets),
    }


@task(cache_policy=NO_CACHE, task_run_name="evaluate")
def evaluate(
    models: list,
    features: FeatureStore,
    test_rows: np.ndarray,
    samples: int,
    round_: int,
    compare_items: int | None = None,
    seed: int = 0,
) -> Evaluation:
    """Test metrics of ``models[0]`` (the selected model) on ``test_rows``: the campaign's test items (the label
    store's), ingested ones included; and of every model on ``compare_items`` of them drawn with ``seed`` (all of
    them when ``None`` or when there are no more), the selected model's read off its predictive on all. One task
    for all candidates: the test inputs are read once, and a round pays for one task run instead of one per
    candidate (``learner.evaluation_predictive``: the posterior predictive, ``samples`` fresh draws per chunk of
    items)."""
    rows = np.asarray(test_rows, dtype=np.int64)
    x = _rows_tensor(features, rows)
    targets = torch.from_numpy(np.asarray(features.targets[rows], dtype=np.int64))
    probs = evaluation_predictive(models[0], x, samples, seed=round_)
    metrics, diagram = _test_metrics(probs, targets), reliability(probs, targets)
    first = metrics
    if compare_items is not None and compare_items < len(rows):
        subset = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(len(rows), compare_items, False)))
        x, targets = x[subset], targets[subset]
        first = _test_metrics(probs[subset], targets)
    others = [_test_metrics(evaluation_predictive(model, x, samples, seed=round_), targets) for model in models[1:]]
    return Evaluation(metrics, diagram, [first, *others], len(targets))


def _shard_run_name(parameters: dict) -> str:
    return f"score-pool[{parameters['shard'] + 1}/{parameters['shards']}]"


@task(cache_policy=NO_CACHE, task_run_name=_shard_run_name, **TRANSIENT_RETRIES)
def score_shard(
    model,
    store_dir: str,
    rows: np.ndarray,
    ids: np.ndarray,
    plan: StreamPlan,
    samples: int,
    seed: int,
    shard: int,
    shards: int,
    progress: ProgressCallback | None = None,
    target_rows: np.ndarray | None = None,
) -> StreamResult:
    """Stream shard ``shard`` (of ``shards``) of the pool through the model (``learner.stream_scores``), telling
    ``progress`` the items scored after each chunk; ``target_rows``: the feature rows of EPIG's targets.

    Takes the feature store's path, not the arrays, so a Dask worker maps the file itself.
    """
    features = open_feature_store(store_dir)
    chunks = iter_pool_chunks(features.features, rows, ids, SCORE_CHUNK)
    targets = None if target_rows is None else _rows_tensor(features, target_rows)
    result = stream_scores(
        model,
        chunks,
        plan,
        samples=samples,
        seed=seed,
        shard=shard,
        progress=progress,
        total=len(rows),
        targets=targets,
    )
    kill_point("scoring")
    return result


def score_pool(
    model,
    features: FeatureStore,
    pool: dict[str, int],
    settings: Settings,
    round_: int,
    k: int,
    bars: RoundProgress | None = None,
) -> PoolScores:
    """The learner's query of ``k`` items of the pool, scored in ``acquisition.shards`` Prefect tasks (their
    progress shown on ``bars``); the batch to queue.

    Without a model (cold start) a seeded random batch is queued; an exhausted pool (every item labeled, queued or
    skipped) queues nothing (``learner.query_pool``), and so does ``k = 0`` (a full queue), without scoring.
    """
    a, seed = settings.acquisition, round_seed(settings.campaign.seed, round_)
    ids = np.asarray(list(pool), dtype=np.str_)
    rows = np.fromiter(pool.values(), dtype=np.int64, count=len(pool))
    if k == 0:
        return PoolScores(random_batch(ids, 0, round_rng(settings.campaign.seed, round_), len(features.classes)), [])

    def stream(plan: StreamPlan, positions: np.ndarray) -> list[StreamResult]:
        shards = [s for s in np.array_split(positions, a.shards) if len(s)]
        target_rows = None if plan.targets is None else rows[plan.targets]
        with contextlib.ExitStack() as stack:
            step = None if bars is None else stack.enter_context(bars.step("score pool", len(positions), "items"))
            futures = [
                score_shard.submit(
                    model, str(features.directory), rows[s], ids[s], plan, a.samples, seed, i, len(shards),
                    None if step is None else step.part(i), target_rows,
                )
                for i, s in enumerate(shards)
            ]  # fmt: skip
            return [future.result() for future in futures]

    query = query_pool(
        model,
        ids,
        stream,
        acquisition=a.name,
        k=k,
        seed=seed,
        rng=round_rng(settings.campaign.seed, round_),
        n_classes=len(features.classes),
        batch_candidates=a.batch_candidates,
        subsample=a.pool_subsample,
    )
    if query.scores is None:
        entries = [QueueEntry(item, rank, None, query.acquisition) for rank, item in enumerate(query.ids, start=1)]
    else:
        columns = zip(
            query.ids, query.scores, query.predicted, query.probability, query.epistemic, query.aleatoric, strict=True
        )
        entries = [
            QueueEntry(item, rank, float(score), query.acquisition, int(predicted), float(p), float(e), float(a))
            for rank, (item, score, predicted, p, e, a) in enumerate(columns, start=1)
        ]
    return PoolScores(query, entries)


@task(cache_policy=NO_CACHE, task_run_name="log-round", **TRANSIENT_RETRIES)
def log_round(
    tracker: CampaignTracker,
    run_id: str,
    round_: int,
    metrics: dict[str, float],
    queued: list,
    query: QueryResult,
    selection: Selection | None,
    checkpoint: Path | None,
    started_at: float,
    parent_id: str,
    history: list[dict[str, float]],
    gallery: Gallery,
    stopping_agreement: float,
    stopping: str | None,
) -> dict[str, float]:
    """Artifacts (queued batch as CSV and as a gallery, Bayes factors as CSV and as an MLflow table, plots incl. the
    learning curve over ``history`` — the earlier rounds' summaries — and this round, with the stop set's κ against
    the ``stopping_agreement`` the signal asks for, the selected candidate's checkpoint as saved for the next round),
    then the round's metrics, params and tags in one MLflow batch, with the round's timings up to that point
    (``started_at``: the round's start, Unix time), and the learning-curve metrics on the campaign's parent run.
    ``stopping`` (what the round says of stable predictions) becomes the round run's tag ``beliefloop.stopping``, a
    column of the MLflow UI's run list. Returns the timings: ``round_seconds`` and ``overhead_seconds``, everything
    but training and scoring."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        fields = ("round", "rank", "item_id", "score", "acquisition", "predicted", "probability", "epistemic")
        fields += ("aleatoric", "status")
        paths = [_write_csv({f: [getattr(q, f) for q in queued] for f in fields}, tmp_path / "queued_batch.csv")]
        if queued:
            paths.append(
                plots.queued_gallery(
                    queued,
                    gallery.classes,
                    gallery.images,
                    tmp_path / "queued_gallery.png",
                    vectors=gallery.vectors,
                    texts=gallery.texts,
                )
            )
        if query.n_scored:
            paths.append(
                plots.uncertainty_histogram(
                    query.aleatoric_hist, query.epistemic_hist, query.bin_edges, tmp_path / "uncertainty.png"
                )
            )
        params, tags = {}, {}
        if selection is not None:
            paths.append(_write_csv(_bayes_factor_table(selection), tmp_path / "bayes_factors.csv"))
            diagram = selection.diagram
            if diagram is not None:
                paths.append(
                    plots.reliability_diagram(
                        diagram.confidence, diagram.accuracy, diagram.count, tmp_path / "reliability.png"
                    )
                )
            chosen = selection.selected.fitted
            params = {
                "selected_candidate": chosen.name,
                "evidence_kind": chosen.evidence_kind,
                "selection_criterion": selection.selected.row.criterion,
                "prior_tuning": selection.prior_tuning,
            }
            tags = {"beliefloop.selected": chosen.name}
        if stopping:
            tags["beliefloop.stopping"] = stopping
        curve = [r for r in [*history, metrics] if "test_accuracy" in r]
        if curve:
            paths.append(
                plots.learning_curve(
                    [int(r["n_labeled"]) for r in curve],
                    [r["test_accuracy"] for r in curve],
                    [r["test_nll"] for r in curve],
                    [r.get("stop_set_agreement") for r in curve],
                    stopping_agreement,
                    tmp_path / "learning_curve.png",
                )
            )
        if checkpoint is not None:
            paths.append(checkpoint)
        tracker.log_artifacts(run_id, paths)
    if selection is not None:
        tracker.log_table(run_id, _bayes_factor_table(selection), "bayes_factors.json")
    elapsed = time.time() - started_at
    timings = {
        "round_seconds": elapsed,
        "overhead_seconds": elapsed - metrics.get("train_seconds", 0.0) - metrics["acquisition_seconds"],
    }
    tracker.log_batch(run_id, {**metrics, **timings}, step=round_, params=params, tags=tags)
    # The campaign's learning curve as one line on its parent run (step = round), what a reviewer opens first.
    tracker.log_batch(parent_id, {key: metrics[key] for key in CURVE_METRICS if key in metrics}, step=round_)
    return timings


@task(cache_policy=NO_CACHE, task_run_name="register-model", **TRANSIENT_RETRIES)
def register_model(
    tracker: CampaignTracker,
    run_id: str,
    round_: int,
    checkpoint: Path,
    model,
    features: FeatureStore,
    settings: Settings,
    test_rows: np.ndarray,
) -> int:
    """The selected model as an MLflow pyfunc in the round's run and a new version of ``<campaign>-model``
    (``flows.registry``); three of ``test_rows`` (the round's test items) are its input example (training rows
    when the campaign has no test split). Returns the version number."""
    config = RoundModelConfig(
        classes=[str(c) for c in features.classes],
        feature_shape=[int(d) for d in features.meta["feature_shape"]],
        samples=settings.acquisition.samples,
        seed=round_seed(settings.campaign.seed, round_),
    )
    rows = np.asarray(test_rows)[:EXAMPLE_ROWS]
    if not len(rows):
        rows = np.asarray(features.rows_train)[:EXAMPLE_ROWS]
    version = log_round_model(tracker, run_id, round_, checkpoint, model, config, _rows_tensor(features, rows))
    return int(version.version)


@dataclass(frozen=True)
class Gallery:
    """What the queued batch's gallery shows: class names, and each queued item's raw image (``None``: vectors,
    shown as a table), or its first named features in the file's units (``None``: images) and a snippet of its text
    (``None``: no text column), best rank first."""

    classes: list[str]
    images: list[np.ndarray] | None
    vectors: list[list[tuple[str, str]]] | None = None
    texts: list[str] | None = None


def queued_items_gallery(settings: Settings, features: FeatureStore, queued: list) -> Gallery:
    """The queued items' pictures, or their named features, from the imported (raw) feature store, whatever
    representation the models train on."""
    from flows.item_views import feature_table, item_text, snippet

    raw = features if features.meta["is_image"] else open_feature_store(feature_store_dir(settings))
    classes = list(features.classes)
    if not queued:
        return Gallery(classes, None)
    ranked = sorted(queued, key=lambda q: q.rank)[: plots.GALLERY_MAX]
    rows = raw.row_of([q.item_id for q in ranked])
    if not raw.meta["is_image"]:
        vectors = [feature_table(raw, int(r))[: plots.GALLERY_FEATURES] for r in rows]
        texts = None if raw.texts is None else [snippet(item_text(raw, int(r))) for r in rows]
        return Gallery(classes, None, vectors, texts)
    return Gallery(classes, [np.asarray(raw.features[int(r)]) for r in rows])


def _bayes_factor_table(selection: Selection) -> dict[str, list]:
    """The round's model-selection table as columns: evidence, log Bayes factor against the selected model, its
    Kass–Raftery reading, and each candidate's test metrics (on the ``test_items`` they are compared on) and
    training time."""
    candidates = selection.candidates
    return {
        "candidate": [c.row.candidate for c in candidates],
        "family": [c.fitted.family for c in candidates],
        "log_evidence": [c.row.log_evidence for c in candidates],
        "log_bayes_factor": [c.row.log_bayes_factor for c in candidates],
        "kass_raftery": [c.row.reading for c in candidates],
        "evidence_kind": [c.fitted.evidence_kind for c in candidates],
        "criterion": [c.row.criterion for c in candidates],
        "validation_nll": [c.row.validation_nll for c in candidates],
        "test_nll": [c.test.get("test_nll", float("nan")) for c in candidates],
        "test_accuracy": [c.test.get("test_accuracy", float("nan")) for c in candidates],
        "test_items": [selection.n_compared for _ in candidates],
        "train_seconds": [c.fitted.train_seconds for c in candidates],
        "selected": [c.row.selected for c in candidates],
    }


def _write_csv(columns: dict[str, list], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(zip(*columns.values(), strict=True))
    return path


def select_model(
    settings: Settings,
    features: FeatureStore,
    labeled: dict[str, int],
    round_: int,
    bars: RoundProgress | None = None,
    compare_items: int | None = None,
) -> Selection:
    """Fit every candidate as a Prefect task (its training steps shown on ``bars``), rank them by evidence or, when
    one has none, by validation NLL (``learner.select_candidates``), evaluate the selected one on the test split
    and every one on ``compare_items`` of its items (:func:`evaluate`)."""

    def fit_all(specs: list[CandidateSpec], held_out: np.ndarray | None) -> list[FittedCandidate]:
        args = (settings, features, labeled, round_, held_out, bars)
        if settings.selection.workers > 1:  # concurrent fits share torch's RNG: faster, not bit-reproducible
            futures = [fit_candidate_task.submit(spec, *args) for spec in specs]
            return [future.result() for future in futures]
        return [fit_candidate_task.submit(spec, *args).result() for spec in specs]

    ranked = select_candidates(
        candidate_specs(settings),
        fit_all,
        list(labeled),
        round_seed(settings.campaign.seed, round_),
        settings.selection.criterion,
    )
    test_rows = campaign_test_rows(settings, features)
    if not len(test_rows):  # no test split (dataset.test_fraction: 0): nothing to measure on, no metric made up
        return Selection(
            [CandidateResult(r.row, r.fitted, {}) for r in ranked],
            {},
            None,
            test_rows,
            0,
            settings.selection.prior_tuning,
        )
    start = time.perf_counter()
    test = evaluate(
        [r.fitted.model for r in ranked],
        features,
        test_rows,
        settings.selection.test_samples,
        round_,
        compare_items,
        settings.campaign.seed,
    )
    metrics = {**test.metrics, "evaluation_seconds": time.perf_counter() - start}  # part of the round's "other"
    candidates = [CandidateResult(r.row, r.fitted, m) for r, m in zip(ranked, test.compared, strict=True)]
    return Selection(candidates, metrics, test.diagram, test_rows, test.n_compared, settings.selection.prior_tuning)


def _few_test_items(n_test: int, min_test: int) -> str:
    what = "no test items: no test metrics" if n_test == 0 else f"test metrics stand on {n_test} test items"
    return (
        f"{what} (campaign.min_test={min_test}); add labelled test rows: `beliefloop ingest FILE` with a `split` "
        "column saying test, or a folder of images with test/<class>/ folders (a new campaign takes its dataset's "
        "`split` column or test/ folder)"
    )


@flow(name="labeling_round")
def labeling_round(
    settings: Settings, oracle: bool = False, full_batch: bool = False, progress: bool = False
) -> dict[str, float]:
    """One round: ingest labels → fit and select (evaluate) → query the pool → enqueue → log to MLflow.

    ``progress`` shows the training and scoring steps as they go (``flows.progress``: bars on a terminal, else a
    line each in the round's log); not with a Dask cluster, whose workers have no terminal.

    The queue is topped up to ``campaign.k`` pending items: items still pending from earlier rounds count
    (``n_pending``), so only ``k − n_pending`` new ones are queued; ``full_batch`` queues ``k`` new items anyway.
    A round whose predictions are stable queues none under ``stopping.when_stable: stop``.
    The flow run is named ``<campaign> · round N`` and tagged with the campaign and ``round:N`` once the label store
    says which round this is (a new one, or an unfinished one resumed); its task runs are tagged with the campaign.
    Not with ``round:N``: Prefect keeps one tag-concurrency service (a thread, a client connection, and the context
    holding the first task run's parameters) per set of task tags for the life of the process, so a new set every
    round leaked all of that, the round's open feature-store files included, in a long-lived process (``serve``;
    measured in the README's **Scheduled rounds**). The campaign's round lock (``data.round_lock``) is held
    throughout: a second round started meanwhile does nothing.
    """
    started_at = time.time()
    campaign = settings.campaign_name
    # closed after the round: a long-lived process (serve) kept one more SQLite connection open per round
    with contextlib.closing(open_label_store(settings)) as store, round_lock(store, campaign):
        round_ = store.next_round(campaign)  # the lock: another process's round of this campaign, RoundInProgress
        _label_flow_run(campaign, round_)
        with tags(campaign):  # not round:N, see the docstring
            return _shown_round_steps(settings, store, round_, oracle, full_batch, started_at, progress)


def _shown_round_steps(
    settings: Settings, store: LabelStore, round_: int, oracle: bool, full_batch: bool, started_at: float, show: bool
) -> dict:
    """:func:`_round_steps`, its long steps shown when ``show`` (not on Dask, whose workers have no terminal).

    Not in the flow's body: Prefect sends the flow to Dask with every task, pickled by value with the globals its
    body names, and the console holds a lock that cannot be pickled (a round on Dask failed so)."""
    if not show or settings.acquisition.dask_address:
        return _round_steps(settings, store, round_, oracle, full_batch, started_at, None)
    with RoundProgress(console, get_run_logger()).shown() as bars:
        return _round_steps(settings, store, round_, oracle, full_batch, started_at, bars)


def _label_flow_run(campaign: str, round_: int) -> None:
    """Name the running flow run after the campaign and round, and add them to its tags."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    run = FlowRunContext.get().flow_run
    with get_client(sync_client=True) as client:
        client.update_flow_run(
            run.id, name=f"{campaign} · round {round_}", tags=sorted({*run.tags, campaign, f"round:{round_}"})
        )


def _round_steps(
    settings: Settings,
    store: LabelStore,
    round_: int,
    oracle: bool,
    full_batch: bool,
    started_at: float,
    bars: RoundProgress | None,
) -> dict:
    """The body of :func:`labeling_round` for round ``round_``."""
    logger = get_run_logger()
    campaign = settings.campaign_name
    features = model_feature_store(settings)
    # The tracking store first: when it cannot be reached the round fails before the label store records it.
    tracker = CampaignTracker(settings.tracking_uri, settings.artifact_root, campaign)
    parent = tracker.campaign_run(settings.model_dump(mode="json"))
    store.start_round(campaign, round_)
    run_id = tracker.round_run(parent, round_)

    warnings: list[str] = []

    def warn(message: str) -> None:
        """Said to the user with the round's line (``flows.console.print_round``) and in the run's log."""
        warnings.append(message)
        logger.warning(message)

    if oracle:
        answered = answer_from_oracle(
            store, features, campaign, round_, settings.campaign.oracle_noise, settings.campaign.seed
        )
        logger.info("oracle answered %d items", answered)
    snapshot = store.label_snapshot(campaign, settings.labels.policy)  # later answers wait for the next round
    labeled = snapshot.labels
    metrics: dict[str, float] = {
        "n_labeled": len(labeled),
        "disagreement_rate": snapshot.disagreement_rate,
        "n_conflicting_items": snapshot.n_conflicting,
    }
    if settings.labels.policy == "majority":
        metrics["n_tied_items"] = snapshot.n_tied
        if snapshot.n_tied:
            logger.info("%d items with tied answers are left out of training until resolved", snapshot.n_tied)
    model, selection, checkpoint = None, None, None
    if len(labeled) >= settings.campaign.min_labels or (oracle and labeled):
        selection = select_model(settings, features, labeled, round_, bars, settings.selection.compare_test_items)
        chosen = selection.selected.fitted
        model = chosen.model
        metrics["train_seconds"] = sum(c.fitted.train_seconds for c in selection.candidates)
        metrics.update(selection.metrics)
        metrics["n_test"] = selection.n_test
        if selection.n_test < settings.campaign.min_test:
            warn(_few_test_items(selection.n_test, settings.campaign.min_test))
        for c in selection.candidates:
            name = c.row.candidate
            for key, value in (
                ("log_evidence", c.row.log_evidence),
                ("log_bayes_factor", c.row.log_bayes_factor),
                ("validation_nll", c.row.validation_nll),
            ):
                if value is not None:  # an ensemble has no evidence; Bayes factors only under criterion evidence
                    metrics[f"{key}/{name}"] = value
            metrics[f"n_fitted/{name}"] = c.fitted.n_fitted
            if c.fitted.prior_tuning is not None:  # selection.prior_tuning: validation
                metrics[f"prior_scale/{name}"] = c.fitted.prior_tuning.scale
                metrics[f"prior_validation_nll/{name}"] = c.fitted.prior_tuning.validation_nll
                metrics[f"prior_evidence_validation_nll/{name}"] = c.fitted.prior_tuning.evidence_nll
            if c.fitted.elbo is not None:  # VI: the ELBO's parts, so posterior collapse or over-regularisation shows
                metrics[f"vi_kl/{name}"] = c.fitted.elbo.kl
                metrics[f"vi_expected_log_lik/{name}"] = c.fitted.elbo.expected_log_lik
            if settings.update == "belief":
                metrics[f"n_relabelled/{name}"] = c.fitted.n_relabelled
            if c.fitted.n_relabelled:
                logger.info("%s: %d items relabelled since its posterior; retrained", name, c.fitted.n_relabelled)
            if c.fitted.previous_classes is not None:
                warn(
                    f"{name}: its saved posterior has {c.fitted.previous_classes} classes, the campaign "
                    f"{len(features.classes)}; retrained on all labels instead of a belief update"
                )
            path = save_candidate(_candidates_dir(settings), c.fitted, round_)  # the one place models are saved
            checkpoint = path if c.row.selected else checkpoint
        criterion = selection.selected.row.criterion
        logger.info("selected %s by %s (%s)", chosen.name, criterion, chosen.evidence_kind)
        kill_point("after_training")

    pool = store.unlabeled_pool(campaign)
    history = store.round_metrics(campaign)
    note = None
    if model is not None and settings.stopping.items:
        kappa, items = stop_set_agreement(settings, features, model, pool, round_)
        if kappa is not None:
            metrics["stop_set_agreement"] = kappa
        note = stopping_note(settings, history, kappa, items)
        if note:
            logger.info(note)
    stopped = bool(note) and settings.stopping.when_stable == "stop"
    pending = sum(q.round < round_ for q in store.queued(campaign, status="pending"))
    metrics["n_pending"] = pending
    k = settings.campaign.k if full_batch else max(settings.campaign.k - pending, 0)
    if stopped:
        k = 0
        logger.info(NOTHING_QUEUED)
    if model is None and pool:  # said, not logged at INFO: a random batch is not what the user asked for
        why = (
            "no labels yet" if oracle else f"{len(labeled)} labels < campaign.min_labels={settings.campaign.min_labels}"
        )
        warn(f"{why}: no model trained; {'the batch is random' if k else 'nothing new is queued'}")
    start = time.perf_counter()
    scores = score_pool(model, features, pool, settings, round_, k, bars)
    query = scores.query
    metrics["acquisition_seconds"] = time.perf_counter() - start
    metrics["pool_size"] = query.pool_size
    if query.n_scored:
        metrics["pool_scored"] = query.n_scored
        if query.acquisition != "random" and query.n_scored < query.pool_size:
            logger.info(
                "%s scored a random %d of the %d pool items (acquisition.pool_subsample: %s; 'all' scores every one)",
                query.acquisition,
                query.n_scored,
                query.pool_size,
                settings.acquisition.pool_subsample,
            )
        metrics["pool_mean_aleatoric"] = query.mean(query.aleatoric_hist)
        metrics["pool_mean_epistemic"] = query.mean(query.epistemic_hist)
    queued = store.enqueue(campaign, round_, scores.entries)
    metrics["n_queued"] = len(queued)
    kill_point("before_logging")

    if selection is not None and settings.tracking.register_model:
        start = time.perf_counter()
        register_model(tracker, run_id, round_, checkpoint, model, features, settings, selection.test_rows)
        metrics["model_log_seconds"] = time.perf_counter() - start
    gallery = queued_items_gallery(settings, features, queued)
    metrics |= log_round(
        tracker,
        run_id,
        round_,
        metrics,
        queued,
        query,
        selection,
        checkpoint,
        started_at,
        parent,
        history,
        gallery,
        settings.stopping.agreement,
        f"{note}; {NOTHING_QUEUED}" if stopped else note,
    )
    kill_point("after_logging")
    tracker.finish(run_id)
    summary = {
        "round": round_,
        **metrics,
        "selected": selection.selected.fitted.name if selection else None,
        "labels_upto": snapshot.upto,
        "warnings": warnings,
        "stopping_note": note,
        "stopped_when_stable": stopped,
    }
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
    selection = select_model(settings, features, labeled, 0)
    return [
        {
            "candidate": c.row.candidate,
            "family": c.fitted.family,
            "log_evidence": c.row.log_evidence,
            "log_bayes_factor": c.row.log_bayes_factor,
            "reading": c.row.reading,
            "evidence_kind": c.fitted.evidence_kind,
            "criterion": c.row.criterion,
            "validation_nll": c.row.validation_nll,
            **c.test,
            "n_test": selection.n_test,
            "train_seconds": c.fitted.train_seconds,
        }
        for c in selection.candidates
    ]


@functools.cache
def _round_flow(dask_address: str | None, max_workers: int):
    """``labeling_round`` on its task runner, built once per process (``with_options`` re-derives the flow's
    parameter schema: 0.1–0.3 s a round, measured; Prefect duplicates the runner for every flow run anyway).
    Threads by default (``max_workers`` at once); the Dask cluster at ``dask_address`` when given, through
    prefect-dask, so pool shards and candidate fits run on its workers."""
    if dask_address:
        from prefect_dask import DaskTaskRunner

        runner = DaskTaskRunner(address=dask_address)
    else:
        runner = ThreadPoolTaskRunner(max_workers=max_workers)
    return labeling_round.with_options(task_runner=runner)


def run_round(
    settings: Settings, *, oracle: bool = False, full_batch: bool = False, progress: bool = False
) -> dict[str, float]:
    """``labeling_round`` on the task runner the settings ask for; a round that fails on a transient error (an MLflow
    store unreachable, a database locked) is run again with backoff (``flows.retry``), then fails in one line.
    ``progress``: show the round's long steps (``labeling_round``)."""
    workers = max(settings.selection.workers, settings.acquisition.shards)
    round_flow = _round_flow(settings.acquisition.dask_address, workers)
    result = with_retries(
        lambda: round_flow(settings, oracle=oracle, full_batch=full_batch, progress=progress),
        what=f"a round of campaign {settings.campaign_name}",
        labels_at=sa.make_url(settings.store_url).render_as_string(hide_password=True),
        notify=lambda message: console.print(message, soft_wrap=True, markup=False),
    )
    _freeze_after_first_round()
    return result


@functools.cache
def _freeze_after_first_round() -> None:
    """Once a process, after its first round: collect its garbage, then move what stays alive — the code a round
    imports on first use (matplotlib, Pillow, MLflow's model registry) and the stores' caches, ~370k objects on
    digits — out of the garbage collector's scans (``gc.freeze``, as ``flows.cli`` does after the imports). Else a
    full collection scanned them all in a later round: 180 ms of digits' round 3, measured with ``gc.callbacks``."""
    gc.collect()
    gc.freeze()


@flow(name="simulate_campaign")
def simulate_campaign(settings: Settings, progress: bool = False) -> list[dict[str, float]]:
    """Rounds 1..``campaign.rounds`` with a simulated oracle; resumes where an earlier run stopped, and stops
    after a round that found the pool exhausted or, under ``stopping.when_stable: stop``, the predictions stable
    (or runs none when an earlier run ended so and nothing came since). ``progress``: show
    each round's long steps (``labeling_round``)."""
    with contextlib.closing(open_label_store(settings)) as store:
        prepare_campaign(settings, store, simulate=True)
        campaign = settings.campaign_name
        idle = _last_round_if_idle(store, campaign)
        if idle is not None and pool_exhausted(idle):
            console.print(
                f"the pool is exhausted since round {store.next_round(campaign) - 1} (every item is labeled, queued or "
                "skipped); no round was run",
                soft_wrap=True,
            )
            return store.round_metrics(campaign)[: settings.campaign.rounds]
        done = store.next_round(campaign) - 1
        if done >= settings.campaign.rounds:
            console.print(
                f"campaign {campaign} has run {done} rounds (campaign.rounds: {settings.campaign.rounds}); no round "
                f"was run: --rounds {done + 1} or more goes on",
                soft_wrap=True,
            )
        if idle is not None and idle.get("stopped_when_stable") and settings.stopping.when_stable == "stop":
            console.print(
                f"campaign {campaign} stopped at round {idle['round']:.0f}: its predictions were stable and nothing "
                "new was queued (stopping.when_stable: stop); no round was run (without --stop-when-stable, i.e. "
                "with when_stable: note, it goes on)",
                soft_wrap=True,
            )
            return store.round_metrics(campaign)[: settings.campaign.rounds]
        while store.next_round(campaign) <= settings.campaign.rounds:
            result = run_round(settings, oracle=True, progress=progress)
            print_round(result)
            if pool_exhausted(result) or result["stopped_when_stable"]:  # later rounds would refit the same labels
                break
        results = store.round_metrics(campaign)[: settings.campaign.rounds]
        tracker = CampaignTracker(settings.tracking_uri, settings.artifact_root, campaign)
        tracker.finish_campaign(tracker.campaign_run(settings.model_dump(mode="json")), results)
        return results


def _last_round_if_idle(store: LabelStore, campaign: str) -> dict | None:
    """The last finished round's summary when nothing came since (no round left unfinished, nothing pending, the
    pool as that round found it): another simulated round would only refit the same labels. Else ``None``."""
    done = store.round_metrics(campaign)
    if not done or store.unfinished_rounds(campaign) or store.queued(campaign, status="pending"):
        return None
    return done[-1] if len(store.unlabeled_pool(campaign)) == done[-1].get("pool_size") else None
