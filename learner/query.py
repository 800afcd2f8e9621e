"""Querying a pool: stream it through a model with a running top-k, then pick the batch.

The steps are separate so that the flows can run :func:`stream_scores` as one Prefect task per shard and merge
them, while :class:`learner.ActiveLearner` runs the same steps in-process: same seeds, same queued items.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from acquisition import (
    BATCH_ACQUISITIONS,
    EPIG_TARGETS,
    TARGETED_ACQUISITIONS,
    RunningTopK,
    StreamResult,
    bald,
    batchbald,
    expected_entropy,
    score_pool_streaming,
)
from bayes_models import LaplaceClassifier, MCDropout

SCORE_CHUNK = 4096
HIST_BINS = 50


@dataclass(frozen=True)
class QueryResult:
    """A queried batch, best first, with what the pool's scoring left.

    ``scores`` are the acquisition's (BatchBALD: each pick's own BALD); ``epistemic`` (BALD, mutual information)
    and ``aleatoric`` (expected entropy) are each item's parts of its predictive entropy; ``probability`` is the
    predictive probability of the ``predicted`` class. A cold start (no model) has ``None`` for the scores, parts
    and predictions.
    """

    ids: list[str]
    indices: np.ndarray
    """Positions of the items in the pool as it was given (across chunks)."""
    scores: np.ndarray | None
    epistemic: np.ndarray | None
    aleatoric: np.ndarray | None
    predicted: np.ndarray | None
    probability: np.ndarray | None
    acquisition: str
    pool_size: int
    n_scored: int
    aleatoric_hist: np.ndarray
    epistemic_hist: np.ndarray
    bin_edges: np.ndarray

    def mean(self, hist: np.ndarray) -> float:
        """Mean uncertainty over the scored items from a histogram (exact to half a bin width)."""
        centers = (self.bin_edges[:-1] + self.bin_edges[1:]) / 2
        return float((hist * centers).sum() / max(hist.sum(), 1))


@dataclass(frozen=True)
class StreamPlan:
    """What to stream: BatchBALD streams BALD's best ``batch_candidates`` and picks among them afterwards; EPIG
    scores against the pool items at ``targets`` (positions, like the streamed ones), which every shard predicts
    under the same posterior draws as its items."""

    acquisition: str
    k: int
    batch: bool
    targets: np.ndarray | None = None


def stream_plan(acquisition: str, k: int, batch_candidates: int, targets: np.ndarray | None = None) -> StreamPlan:
    if acquisition in BATCH_ACQUISITIONS:
        return StreamPlan("bald", max(batch_candidates, k), True)
    if acquisition in TARGETED_ACQUISITIONS and targets is None:
        raise ValueError(f"{acquisition} needs target inputs drawn from the pool")
    return StreamPlan(acquisition, k, False, targets)


def pool_predict(model, x: torch.Tensor, samples: int, *, seed: int) -> torch.Tensor:
    """``probs[S, B, C]`` for pool scoring: the same S posterior draws for every item, whatever the chunk or shard
    (MC dropout with consistent masks; Laplace and VI draw weights per call), so scores never depend on sharding."""
    if isinstance(model, MCDropout):
        return model.predictive_samples(x, samples, seed=seed, consistent=True).cpu()
    return model.predictive_samples(x, samples, seed=seed).cpu()


def predict_proba(model, x: torch.Tensor, samples: int, *, seed: int) -> torch.Tensor:
    """``probs[N, C]``: the posterior predictive, the mean of the ``samples`` draws that score the pool (S networks
    shared by every item: the same per-item expectation as independent draws, at a fraction of the cost; on MNIST
    the masks of 10k items × S independent draws were most of a round's evaluation time); a Laplace model's under
    its ``link`` (the probit's closed form by default; ``"mc"``: the same draws' mean)."""
    if isinstance(model, LaplaceClassifier):
        return model.predict(x, n_samples=samples, seed=seed).cpu()
    return pool_predict(model, x, samples, seed=seed).mean(0)


EVALUATION_CHUNK = 1024
"""Items per set of posterior draws in :func:`evaluation_predictive`."""


def evaluation_predictive(model, x: torch.Tensor, samples: int, *, seed: int) -> torch.Tensor:
    """``probs[N, C]`` for metrics averaged over many items (test accuracy, NLL, ECE): :func:`predict_proba` on
    chunks of ``EVALUATION_CHUNK`` items, each with its own ``samples`` posterior draws (seeded by ``seed`` and the
    chunk's position).

    Pool scoring shares one set of S draws by every item, so a metric over the pool carries the randomness of
    those S networks however many items it averages; fresh draws per chunk average it out. Measured on MNIST
    MC-dropout networks (10k test items, RMSE over 8–10 seeds against 1,000 draws per chunk): shared draws at
    S = 100 had NLL RMSE 0.0026–0.0058 and ECE RMSE 0.0007–0.0054; per-chunk draws at S = 100 0.0012–0.0044 and
    0.0003–0.0016 (the NLL's O(1/S) upward bias is then most of the error), in 2–7% more time (each chunk draws its
    own masked weights; chunks of 512 items took 15–20% more for the same accuracy). A set of at most one chunk
    gets one set of draws: smaller chunks would redraw the masked weights for every few items (digits' 451 test
    items in chunks of 29: 3–4× the time)."""
    parts = [
        predict_proba(model, x[start : start + EVALUATION_CHUNK], samples, seed=_chunk_seed(seed, start))
        for start in range(0, x.shape[0], EVALUATION_CHUNK)
    ]
    return torch.cat(parts) if parts else predict_proba(model, x, samples, seed=seed)


def _chunk_seed(seed: int, start: int) -> int:
    """An independent seed for the draws of the chunk at ``start`` (``SeedSequence`` mixes both numbers)."""
    return int(np.random.SeedSequence([seed, start]).generate_state(1)[0])


def stream_scores(
    model,
    chunks: Iterable[tuple[Sequence[str], torch.Tensor]],
    plan: StreamPlan,
    *,
    samples: int,
    seed: int,
    shard: int = 0,
    progress: Callable[[int, int], None] | None = None,
    total: int | None = None,
    targets: torch.Tensor | None = None,
) -> StreamResult:
    """Stream one shard of the pool through the model: running top-k and uncertainty histograms.

    Every shard draws the same posterior samples (``seed``), so item scores do not depend on the sharding; only
    random score functions (``random``, ``powerbald``) draw per shard. ``progress(done, total)`` is told the items
    scored so far after each chunk (``total``: the shard's items, when the caller knows them; else the count so far).
    ``targets``: the inputs at ``plan.targets``, which a targeted acquisition (EPIG) scores the items against.
    """
    predict = functools.partial(pool_predict, model, seed=seed)
    acquisition: str | Callable[..., torch.Tensor] = plan.acquisition
    if plan.acquisition in TARGETED_ACQUISITIONS:
        if targets is None:
            raise ValueError(f"{plan.acquisition} needs the inputs of its {len(plan.targets)} target items")
        acquisition = functools.partial(
            TARGETED_ACQUISITIONS[plan.acquisition], target_probs_S_M_C=predict(targets, samples)
        )
    if progress is not None:
        chunks = _reporting(chunks, progress, total)
    return score_pool_streaming(
        predict,
        chunks,
        k=plan.k,
        acquisition=acquisition,
        samples=samples,
        generator=torch.Generator().manual_seed(seed * 1009 + shard),
        bins=HIST_BINS,
        keep_probs=True,
    )


def _reporting(
    chunks: Iterable[tuple[Sequence[str], torch.Tensor]], progress: Callable[[int, int], None], total: int | None
) -> Iterator[tuple[Sequence[str], torch.Tensor]]:
    """The chunks, calling ``progress(done, total)`` once each chunk is scored (when the next one is asked for)."""
    done = 0
    for ids, x in chunks:
        yield ids, x
        done += len(ids)
        progress(done, total if total is not None else done)


TOP_K_SUBSAMPLE_PER_PICK = 20
"""``subsample="auto"``: a top-k acquisition scores a random ``20 k`` pool items per round (200 for k = 10) and
queues its best k, the top 5% of a random draw (the random subset is Gal et al. 2017's protocol; their 2,000 was
not tuned). The top 10 of MNIST's whole 60k pool by BALD were isolated items of the embedding, where the network
extrapolates, and labelling them hurt (mean test accuracy over 17 rounds 0.899 against random's 0.930, 3 seeds); of a
random 2,000 top-k BALD was level with random (0.923 against 0.927, ahead at 6 of the 13 label counts from 60, 10
seeds); of a random 200 it was ahead of random at every count from 30 (0.943 against 0.927, 9 of 10 seeds; README,
``benchmarks/results/al_mnist.json``): a smaller draw holds fewer atypical items and its top k are spread over more
classes."""
DRAWN_ACQUISITIONS = ("powerbald", "random", "batchbald")
"""Acquisitions that ``"auto"`` lets see the whole pool: PowerBALD and random draw their batch at random (a few
outliers never fill it), BatchBALD takes its ``batch_candidates`` best by BALD and then picks jointly."""


def resolve_subsample(acquisition: str, subsample: int | str | None, k: int) -> int | None:
    """The pool items to score per round when ``k`` are queued, ``None`` for all: ``"auto"`` →
    :data:`TOP_K_SUBSAMPLE_PER_PICK` × ``k`` for a top-k acquisition, all for those in :data:`DRAWN_ACQUISITIONS`;
    ``"all"`` or ``None`` → all; a number as given."""
    if subsample == "auto":
        return None if acquisition in DRAWN_ACQUISITIONS else TOP_K_SUBSAMPLE_PER_PICK * k
    if subsample is None or subsample == "all":
        return None
    if isinstance(subsample, str):
        raise ValueError(f"pool_subsample must be a number of items, 'auto' or 'all'; got {subsample!r}")
    return subsample


def subsample_positions(n: int, subsample: int | None, rng: np.random.Generator) -> np.ndarray | None:
    """Sorted positions of a seeded random ``subsample`` of ``n`` pool items (Gal et al. 2017); ``None``: all."""
    if subsample is None or subsample >= n:
        return None
    return np.sort(rng.choice(n, subsample, replace=False))


def random_batch(ids: Sequence[str], k: int, rng: np.random.Generator, n_classes: int) -> QueryResult:
    """Cold start (no model yet) or an exhausted pool: a seeded random batch, nothing scored."""
    chosen = rng.permutation(len(ids))[:k]
    edges = np.linspace(0.0, np.log(max(n_classes, 2)), HIST_BINS + 1)
    empty = np.zeros(HIST_BINS, np.int64)
    return QueryResult(
        [str(ids[i]) for i in chosen], chosen, None, None, None, None, None, "random", len(ids), 0, empty, empty, edges
    )


def pick_batch(
    results: list[StreamResult],
    plan: StreamPlan,
    *,
    acquisition: str,
    k: int,
    seed: int,
    index_of: dict[str, int],
    pool_size: int,
) -> QueryResult:
    """Merge the shards' top-k (streamed with ``keep_probs``) and choose the batch.

    The kept predictive samples give each pick's predicted class and uncertainty parts, and BatchBALD its joint
    samples, without predicting the top-k again.
    """
    merged = RunningTopK(plan.k)
    probs = None
    for result in results:
        kept = merged.update(result.scores, result.ids)
        both = result.probs if probs is None else torch.cat([probs, result.probs], dim=1)
        probs = both[:, torch.from_numpy(kept)]
    top_ids, top_scores = merged.result()
    if plan.batch:
        positions = batchbald(probs, k, generator=torch.Generator().manual_seed(seed), item_ids=top_ids).tolist()
        scores = bald(probs[:, positions]).numpy()
    else:
        positions, scores = list(range(len(top_ids))), np.asarray(top_scores, dtype=np.float64)
    chosen = probs[:, positions]
    predictive = chosen.mean(0)
    ids = [top_ids[p] for p in positions]
    return QueryResult(
        ids,
        np.array([index_of[i] for i in ids], dtype=np.int64),
        scores,
        bald(chosen).numpy(),
        expected_entropy(chosen).numpy(),
        predictive.argmax(-1).numpy(),
        predictive.max(-1).values.numpy(),
        acquisition,
        pool_size,
        sum(r.n_scored for r in results),
        sum(r.aleatoric_hist for r in results),
        sum(r.epistemic_hist for r in results),
        results[0].bin_edges,
    )


def query_pool(
    model,
    ids: np.ndarray,
    stream: Callable[[StreamPlan, np.ndarray], list[StreamResult]],
    *,
    acquisition: str,
    k: int,
    seed: int,
    rng: np.random.Generator,
    n_classes: int,
    batch_candidates: int = 1000,
    subsample: int | str | None = None,
) -> QueryResult:
    """Query a pool of known ``ids``: ``stream(plan, positions)`` scores the items at ``positions`` (in-process,
    or as one Prefect task per shard) and returns its stream results, which :func:`pick_batch` merges.

    Without a model (cold start) a seeded random batch; an exhausted pool queries nothing; ``subsample`` scores a
    seeded random subset (Gal et al. 2017; ``"auto"``: :func:`resolve_subsample`). ``random`` draws its k items
    first and scores only those (their predicted class and uncertainty parts for the queue; the result's histograms
    then cover the k, a random sample of the pool): a random campaign's round no longer pays for a pass over the
    pool. EPIG's :data:`~acquisition.EPIG_TARGETS` target items are drawn from the whole pool. ``rng`` draws the
    random batch or the subsample, then ``random``'s items or EPIG's targets, in that order.
    """
    if model is None or len(ids) == 0:
        return random_batch(ids, k, rng, n_classes)
    positions = subsample_positions(len(ids), resolve_subsample(acquisition, subsample, k), rng)
    if positions is None:
        positions = np.arange(len(ids))
    if acquisition == "random":
        positions = np.sort(rng.choice(positions, size=min(k, len(positions)), replace=False))
    targets = None
    if acquisition in TARGETED_ACQUISITIONS:
        targets = np.sort(rng.choice(len(ids), size=min(EPIG_TARGETS, len(ids)), replace=False))
    plan = stream_plan(acquisition, k, batch_candidates, targets)
    results = stream(plan, positions)
    index_of = {str(ids[p]): int(p) for p in positions}
    return pick_batch(results, plan, acquisition=acquisition, k=k, seed=seed, index_of=index_of, pool_size=len(ids))
