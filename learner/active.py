"""``ActiveLearner``: fit candidates and select by evidence, query a pool, teach new labels — in memory.

The flows wrap the same steps (``learner.candidates``, ``learner.query``) as Prefect tasks around the label
store and MLflow; this class holds the labels and the fitted candidates itself, for notebooks and scripts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from acquisition import BATCH_ACQUISITIONS, TARGETED_ACQUISITIONS, get_acquisition
from bayes_models.laplace import CONDITIONED, PriorTuning
from learner.candidates import (
    BELIEF_FAMILIES,
    CandidateSpec,
    EvidenceOptions,
    FittedCandidate,
    ModelOptions,
    RankedCandidate,
    candidate_payload,
    candidate_specs,
    fit_candidate,
    load_checkpoint,
    load_model,
    rank_candidates,
    select_candidates,
    selection_criterion,
)
from learner.query import (
    SCORE_CHUNK,
    QueryResult,
    pick_batch,
    predict_proba,
    query_pool,
    stream_plan,
    stream_scores,
)

if TYPE_CHECKING:
    import pandas

UPDATES = ("retrain", "belief", "finetune")
ID_WIDTH = 12
"""Items without ids are named by their zero-padded position, so ties go to the earlier item."""


def round_seed(seed: int, round_: int) -> int:
    """The seed of round ``round_``'s training and posterior draws (the flows use the same)."""
    return seed * 1000 + round_


def round_rng(seed: int, round_: int) -> np.random.Generator:
    """The generator of round ``round_``'s cold-start batch and pool subsample (the flows use the same)."""
    return np.random.default_rng([seed, round_])


def _is_table(x: Any) -> bool:
    """A pandas DataFrame or Series (recognised by ``to_numpy``, so that importing the learner skips pandas)."""
    return hasattr(x, "to_numpy") and not isinstance(x, np.ndarray | torch.Tensor)


def as_features(x: Any) -> torch.Tensor:
    """float32 CPU tensor ``x[N, ...]`` from a numpy array, a torch tensor or a pandas DataFrame."""
    if _is_table(x):
        x = x.to_numpy(dtype=np.float32)
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32)
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def as_labels(y: Any) -> torch.Tensor:
    """int64 tensor ``y[N]`` from a sequence, numpy array, torch tensor or pandas Series."""
    if _is_table(y):
        y = y.to_numpy()
    if isinstance(y, torch.Tensor):
        return y.detach().to("cpu", torch.long).reshape(-1)
    return torch.tensor(np.asarray(y, dtype=np.int64)).reshape(-1)


def _position_ids(start: int, n: int) -> list[str]:
    return [f"{i:0{ID_WIDTH}d}" for i in range(start, start + n)]


class ActiveLearner:
    """Bayesian active learning in one object: ``fit`` → ``query`` → ``teach`` → ``query`` …

    Parameters
    ----------
    model : str
        Family of every candidate not naming its own: ``mc_dropout``, ``laplace``, ``vi`` or ``ensemble``.
    acquisition : str
        An ``acquisition`` name: ``powerbald`` (the default, as in the flows' settings), ``bald``, ``batchbald``,
        ``random``, ``predictive_entropy``, …
    candidates : list of mappings, optional
        Each a ``name`` plus the model options it changes (``{"name": "h64", "hidden": 64, "depth": 1}``);
        ``None``: the model options alone. Every round fits all and selects the one of highest log evidence.
    update : str
        ``retrain`` (fit on every label each round), ``belief`` (``laplace``/``vi``: the previous posterior is
        the prior, only new labels are fitted) or ``finetune`` (``laplace``: the belief update's optimiser and
        steps on the new labels but no prior, then a Laplace of them alone — the forgetting baseline of
        ``benchmarks/belief_update.py``, not a way to run a campaign).
    samples : int
        Posterior draws S for scoring and prediction.
    seed : int
        Seeds every round's training, posterior draws and random choices.
    device : str
        ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:N``.
    subset, structure : str
        Hessian structure of the Laplace evidence every candidate is compared under.
    prior_tuning : str
        ``evidence`` or ``validation``: ``laplace`` candidates scale their evidence-tuned prior precision by the
        factor of lowest NLL on a held-out 20% of the labels (then refit on all of them).
    exact_ggn : bool
        The evidence's log determinant under the exact GGN (kernel form over the labels) where it applies, instead
        of under ``structure`` (:class:`learner.candidates.EvidenceOptions`).
    condition_on : float
        With ``exact_ggn``, candidates are compared by the evidence of the labels outside a seeded fraction of them
        given that fraction, ``log p(D₂|D₁)``; 0: by the marginal likelihood ``log Z``.
    criterion : str
        ``auto`` (by evidence when every candidate has one, else by validation NLL) or ``validation_nll`` (every
        candidate fitted without a held-out 20% of the labels and ranked by their NLL, the selected one refitted on
        all): :data:`learner.candidates.CRITERIA`.
    batch_candidates : int
        BatchBALD picks among this many of the pool's best items by BALD.
    pool_subsample : int or str
        Score only a seeded random subset of this many pool items per query (in-memory pools); ``"auto"`` (the
        default): 20 per queued item for a top-k acquisition (200 for k = 10), the whole pool for powerbald,
        random and batchbald (:func:`learner.query.resolve_subsample`); ``"all"`` or ``None``: the whole pool.
    n_classes : int, optional
        Number of classes; default: the largest label of the first ``fit`` plus one.
    **model_options
        ``hidden``, ``depth``, ``dropout``, ``steps``, ``update_steps``, ``epochs`` / ``min_steps`` (steps
        by passes over the labels a fit sees), ``batch_size``, ``lr``, ``weight_decay``, ``training``,
        ``members``, the stated priors ``prior_std`` / ``prior_precision``, ``prior_layer_std`` /
        ``prior_layer_precision`` (per layer group), ``prior_mixture`` (vi) and ``prior_from`` (a saved
        candidate ``.pt``) (see :class:`learner.ModelOptions`).
    """

    def __init__(
        self,
        model: str = "mc_dropout",
        acquisition: str = "powerbald",
        candidates: Sequence[Mapping[str, Any]] | None = None,
        update: str = "retrain",
        samples: int = 100,
        seed: int = 0,
        device: str = "auto",
        *,
        subset: str = "auto",
        structure: str = "kfac",
        prior_tuning: str = "evidence",
        exact_ggn: bool = True,
        condition_on: float = CONDITIONED,
        criterion: str = "auto",
        batch_candidates: int = 1000,
        pool_subsample: int | str | None = "auto",
        n_classes: int | None = None,
        **model_options: Any,
    ) -> None:
        if acquisition not in (*BATCH_ACQUISITIONS, *TARGETED_ACQUISITIONS):
            get_acquisition(acquisition)  # raises on an unknown name, listing the valid ones
        if update not in UPDATES:
            raise ValueError(f"update must be one of {list(UPDATES)}, got {update!r}")
        self.specs: list[CandidateSpec] = candidate_specs(
            ModelOptions(family=model, device=device, **model_options), list(candidates or [])
        )
        unsupported = sorted({s.model.family for s in self.specs} - set(BELIEF_FAMILIES))
        if update == "belief" and unsupported:
            raise ValueError(f"update='belief' needs a posterior to carry over (laplace or vi); got {unsupported}")
        not_laplace = sorted({s.model.family for s in self.specs} - {"laplace"})
        if update == "finetune" and not_laplace:
            raise ValueError(f"update='finetune' is a baseline of the laplace family; got {not_laplace}")
        self.acquisition = acquisition
        self.update = update
        self.samples = samples
        self.seed = seed
        if prior_tuning not in ("evidence", "validation"):
            raise ValueError(f"prior_tuning must be 'evidence' or 'validation', got {prior_tuning!r}")
        self.evidence_options = EvidenceOptions.for_candidates(
            subset, structure, self.specs, prior_tuning, exact_ggn, condition_on
        )
        selection_criterion(self.specs, criterion)  # raises on an unknown criterion
        self.criterion = criterion
        self.batch_candidates = batch_candidates
        self.pool_subsample = pool_subsample
        self.n_classes = n_classes
        self.round = 0
        """Rounds fitted so far: ``fit`` is round 1, each ``teach`` one more."""
        self.ranked: list[RankedCandidate] = []
        """The last round's candidates, selected first."""
        self._ids: list[str] = []
        self._x: torch.Tensor | None = None
        self._y: torch.Tensor | None = None

    # --- fitting ---------------------------------------------------------------------------------------------
    def fit(self, x: Any, y: Any, ids: Sequence[str] | None = None) -> ActiveLearner:
        """Fit every candidate on ``(x, y)`` from scratch (round 1) and select the one of highest evidence."""
        x, y = as_features(x), as_labels(y)
        self._check_rows(x, y, ids)
        self._ids = [str(i) for i in ids] if ids is not None else _position_ids(0, len(y))
        self._x, self._y = x.clone(), y.clone()  # teach() relabels in place: never the caller's arrays
        if self.n_classes is None:
            self.n_classes = int(y.max()) + 1
        self.round = 1
        self._fit_round({})
        return self

    def teach(self, x_new: Any, y_new: Any, ids: Sequence[str] | None = None) -> ActiveLearner:
        """Add labels (an id seen before is relabelled) and fit the next round: retrain on every label, or with
        ``update='belief'`` continue from each candidate's posterior on the new labels only (``'finetune'``: from
        its weights, without a prior)."""
        if self._x is None:
            raise RuntimeError("teach() needs a fitted learner; call fit() first")
        x_new, y_new = as_features(x_new), as_labels(y_new)
        self._check_rows(x_new, y_new, ids)
        if len(y_new) and int(y_new.max()) >= self.n_classes:
            raise ValueError(f"label {int(y_new.max())} is outside the learner's {self.n_classes} classes")
        new_ids = [str(i) for i in ids] if ids is not None else _position_ids(len(self._ids), len(y_new))
        position = {item: i for i, item in enumerate(self._ids)}
        fresh = []
        for j, item in enumerate(new_ids):
            if item in position:  # relabelled (or re-sent) item: replace in place
                self._x[position[item]], self._y[position[item]] = x_new[j], y_new[j]
            else:
                fresh.append(j)
        self._ids += [new_ids[j] for j in fresh]
        self._x = torch.cat([self._x, x_new[fresh]])
        self._y = torch.cat([self._y, y_new[fresh]])
        previous = {}
        if self.update != "retrain":
            previous = {r.fitted.name: candidate_payload(r.fitted, self.round) for r in self.ranked}
        self.round += 1
        self._fit_round(previous)
        return self

    def _fit_round(self, previous: dict[str, dict[str, Any]]) -> None:
        seed = round_seed(self.seed, self.round)

        def fit_all(specs: Sequence[CandidateSpec], held_out: np.ndarray | None) -> list[FittedCandidate]:
            return [
                fit_candidate(
                    spec,
                    self.evidence_options,
                    self._x,
                    self._y,
                    self._ids,
                    feature_shape=tuple(self._x.shape[1:]),
                    n_classes=self.n_classes,
                    seed=seed,
                    previous=previous.get(spec.name),
                    held_out=held_out,
                    samples=self.samples,
                    prior_payload=load_checkpoint(spec.model.prior_from) if spec.model.prior_from else None,
                    update="finetune" if self.update == "finetune" else "belief",
                )
                for spec in specs
            ]

        self.ranked = select_candidates(self.specs, fit_all, self._ids, seed, self.criterion)

    @staticmethod
    def _check_rows(x: torch.Tensor, y: torch.Tensor, ids: Sequence[str] | None) -> None:
        if x.shape[0] != y.shape[0] or (ids is not None and len(ids) != y.shape[0]):
            raise ValueError(f"got {x.shape[0]} rows, {y.shape[0]} labels and {len(ids or y)} ids")

    @property
    def selected(self) -> FittedCandidate:
        """The last round's selected candidate (highest log evidence, or lowest validation NLL)."""
        if not self.ranked:
            raise RuntimeError("the learner is not fitted; call fit() first")
        return self.ranked[0].fitted

    @property
    def n_labeled(self) -> int:
        return len(self._ids)

    # --- using the posterior -----------------------------------------------------------------------------------
    def predict_proba(self, x: Any) -> np.ndarray:
        """``probs[N, C]`` of the selected model's posterior predictive (``samples`` draws, seeded per round)."""
        probs = predict_proba(self.selected.model, as_features(x), self.samples, seed=self.round)
        return probs.numpy()

    def query(
        self,
        pool: Any,
        k: int,
        ids: Sequence[str] | None = None,
        *,
        chunk_size: int = SCORE_CHUNK,
    ) -> QueryResult:
        """The ``k`` pool items to label next, best first, by the selected model and the acquisition.

        ``pool`` is an array, tensor or DataFrame ``x[N, ...]`` (with optional ``ids``), or an iterable of chunks,
        each ``x_chunk`` or ``(ids_chunk, x_chunk)``, read once with a running top-k (memory O(k + chunk)); both
        give the same batch, except ``random``, which in memory draws its k items first and scores only those
        (:func:`learner.query.query_pool`). Before ``fit`` an in-memory pool gets a seeded random batch.
        ``QueryResult.indices`` are positions in the pool as given.
        """
        rng = round_rng(self.seed, self.round)
        model = self.selected.model if self.ranked else None
        if isinstance(pool, np.ndarray | torch.Tensor) or _is_table(pool):
            x = as_features(pool)
            item_ids = np.asarray([str(i) for i in ids] if ids is not None else _position_ids(0, len(x)), dtype=np.str_)
            if len(item_ids) != len(x):
                raise ValueError(f"got {len(item_ids)} ids for {len(x)} pool rows")

            def stream(plan, positions):
                blocks = (positions[start : start + chunk_size] for start in range(0, len(positions), chunk_size))
                chunks = ((item_ids[block], x[torch.from_numpy(block)]) for block in blocks)
                targets = None if plan.targets is None else x[torch.from_numpy(plan.targets)]
                return [stream_scores(model, chunks, plan, samples=self.samples, seed=self._seed(), targets=targets)]

            return query_pool(
                model,
                item_ids,
                stream,
                acquisition=self.acquisition,
                k=k,
                seed=self._seed(),
                rng=rng,
                n_classes=self.n_classes or 2,
                batch_candidates=self.batch_candidates,
                subsample=self.pool_subsample,
            )
        if model is None:
            raise RuntimeError("querying a stream of chunks needs a fitted learner; call fit() first")
        if isinstance(self.pool_subsample, int):  # "auto" scores a stream whole: its size is not known up front
            raise ValueError("pool_subsample needs an in-memory pool (it draws from the pool's size up front)")
        if self.acquisition in TARGETED_ACQUISITIONS:
            raise ValueError(f"{self.acquisition} needs an in-memory pool (it draws its target items from it up front)")
        seen: dict[str, int] = {}
        plan = stream_plan(self.acquisition, k, self.batch_candidates)
        result = stream_scores(model, self._chunks(pool, seen), plan, samples=self.samples, seed=self._seed())
        return pick_batch(
            [result], plan, acquisition=self.acquisition, k=k, seed=self._seed(), index_of=seen, pool_size=len(seen)
        )

    def _seed(self) -> int:
        return round_seed(self.seed, self.round)

    @staticmethod
    def _chunks(pool: Iterable[Any], seen: dict[str, int]) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """``(ids, x)`` per chunk, naming id-less chunks by position and recording each id's position."""
        for chunk in pool:
            chunk_ids, x_chunk = chunk if isinstance(chunk, tuple) else (None, chunk)
            x_chunk = as_features(x_chunk)
            start = len(seen)
            names = [str(i) for i in chunk_ids] if chunk_ids is not None else _position_ids(start, len(x_chunk))
            for offset, item in enumerate(names):
                seen[item] = start + offset
            yield np.asarray(names, dtype=np.str_), x_chunk

    def evidence_table(self) -> pandas.DataFrame:
        """The last round's Bayes-factor table, selected candidate first.

        ``log_bayes_factor = log Z_selected − log Z_candidate``; ``kass_raftery`` reads ``2 ln BF`` (<2 barely
        worth mentioning, 2–6 positive, 6–10 strong, >10 very strong); ``kind`` is ``bound`` for an ELBO,
        ``evidence`` for a Laplace log marginal likelihood, ``none`` for a deep ensemble; ``evidence_kind`` names
        its Hessian structure. ``criterion`` says how the round selected: ``evidence``, or ``validation_nll``
        (when a candidate has no evidence; ``log_bayes_factor`` is then empty and ``validation_nll`` ranks).
        """
        import pandas as pd  # here, not at import: pandas adds ~0.6 s to ``import learner``

        if not self.ranked:
            raise RuntimeError("the learner is not fitted; call fit() first")
        return pd.DataFrame(
            {
                "candidate": r.row.candidate,
                "family": r.fitted.family,
                "log_evidence": r.row.log_evidence,
                "kind": _evidence_kind(r.fitted),
                "evidence_kind": r.fitted.evidence_kind,
                "log_bayes_factor": r.row.log_bayes_factor,
                "kass_raftery": r.row.reading,
                "selected": r.row.selected,
                "criterion": r.row.criterion,
                "validation_nll": r.row.validation_nll,
                "prior_scale": None if r.fitted.prior_tuning is None else r.fitted.prior_tuning.scale,
                "n_fitted": r.fitted.n_fitted,
                "train_seconds": r.fitted.train_seconds,
            }
            for r in self.ranked
        )

    # --- saving ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Options, labels and every candidate as plain values and tensors (``torch.load(weights_only=True)``)."""
        by_name = {r.fitted.name: r.fitted for r in self.ranked}
        return {
            "options": {
                "acquisition": self.acquisition,
                "update": self.update,
                "samples": self.samples,
                "seed": self.seed,
                "subset": self.evidence_options.subset,
                "structure": self.evidence_options.structure,
                "prior_tuning": self.evidence_options.prior_tuning,
                "exact_ggn": self.evidence_options.exact_ggn,
                "condition_on": self.evidence_options.condition_on,
                "criterion": self.criterion,
                "batch_candidates": self.batch_candidates,
                "pool_subsample": self.pool_subsample,
                "n_classes": self.n_classes,
            },
            "specs": [{"name": s.name, **dataclasses.asdict(s.model)} for s in self.specs],
            "round": self.round,
            "labels": {"ids": list(self._ids), "x": self._x, "y": self._y},
            "candidates": [
                {
                    **candidate_payload(by_name[s.name], self.round),
                    "name": s.name,
                    "train_seconds": by_name[s.name].train_seconds,
                    "n_fitted": by_name[s.name].n_fitted,
                    "n_relabelled": by_name[s.name].n_relabelled,
                    "steps": by_name[s.name].steps,
                }
                for s in self.specs
                if s.name in by_name
            ],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved: options, labels, round and fitted candidates."""
        options = state["options"]
        self.acquisition, self.update, self.samples, self.seed = (
            options["acquisition"],
            options["update"],
            options["samples"],
            options["seed"],
        )
        self.evidence_options = EvidenceOptions(
            options["subset"],
            options["structure"],
            options.get("prior_tuning", "evidence"),
            options.get("exact_ggn", True),
            options.get("condition_on", 0.0),  # saved before conditioning existed: log Z
        )
        self.criterion = options.get("criterion", "auto")
        self.batch_candidates, self.pool_subsample = options["batch_candidates"], options["pool_subsample"]
        self.n_classes = options["n_classes"]
        self.specs = [
            CandidateSpec(s["name"], ModelOptions(**{k: v for k, v in s.items() if k != "name"}))
            for s in state["specs"]
        ]
        self.round = state["round"]
        labels = state["labels"]
        self._ids, self._x, self._y = list(labels["ids"]), labels["x"], labels["y"]
        device = {s.name: s.model.device for s in self.specs}
        fitted = [
            FittedCandidate(
                c["name"],
                c["family"],
                load_model(c, device[c["name"]]),
                c["log_evidence"],
                c["evidence_kind"],
                c["train_seconds"],
                dict(c["trained_on"]),
                c["n_fitted"],
                c["n_relabelled"],
                c.get("validation_nll"),
                prior_tuning=_prior_tuning(c.get("prior_tuning")),
                steps=c.get("steps"),
            )
            for c in state["candidates"]
        ]
        by_validation = selection_criterion(self.specs, self.criterion) == "validation_nll"
        self.ranked = rank_candidates(fitted, by_validation) if fitted else []

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ActiveLearner:
        """A learner restored from :meth:`state_dict` alone."""
        learner = cls()
        learner.load_state_dict(state)
        return learner


def _prior_tuning(saved: dict[str, Any] | None) -> PriorTuning | None:
    if saved is None:
        return None
    return PriorTuning(**{key: tuple(v) if isinstance(v, list | tuple) else v for key, v in saved.items()})


def _evidence_kind(fitted: FittedCandidate) -> str:
    if fitted.log_evidence is None:
        return "none"
    return "bound" if fitted.model.evidence_is_bound else "evidence"
