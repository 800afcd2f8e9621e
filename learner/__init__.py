"""An in-process active learner: fit candidates, select by evidence, query a pool, teach new labels.

Uses ``bayes_models`` and ``acquisition`` on in-memory numpy / torch / pandas data; never Prefect or MLflow (the
flows wrap these steps as tasks). Start with :class:`ActiveLearner`.
"""

from learner.active import ActiveLearner, as_features, as_labels, round_rng, round_seed
from learner.candidates import (
    BELIEF_FAMILIES,
    CandidateSpec,
    EvidenceOptions,
    FittedCandidate,
    ModelOptions,
    RankedCandidate,
    candidate_payload,
    candidate_specs,
    check_comparable,
    fit_candidate,
    load_checkpoint,
    load_model,
    rank_candidates,
    select_candidates,
    selection_criterion,
    validation_rows,
)
from learner.query import (
    QueryResult,
    StreamPlan,
    evaluation_predictive,
    pick_batch,
    pool_predict,
    predict_proba,
    query_pool,
    random_batch,
    stream_plan,
    stream_scores,
)
from learner.simulate import SimulatedRound, simulate

__all__ = [
    "BELIEF_FAMILIES",
    "ActiveLearner",
    "CandidateSpec",
    "EvidenceOptions",
    "FittedCandidate",
    "ModelOptions",
    "QueryResult",
    "RankedCandidate",
    "SimulatedRound",
    "StreamPlan",
    "as_features",
    "as_labels",
    "candidate_payload",
    "candidate_specs",
    "check_comparable",
    "evaluation_predictive",
    "fit_candidate",
    "load_checkpoint",
    "load_model",
    "pick_batch",
    "pool_predict",
    "predict_proba",
    "query_pool",
    "random_batch",
    "rank_candidates",
    "round_rng",
    "round_seed",
    "select_candidates",
    "selection_criterion",
    "simulate",
    "stream_plan",
    "stream_scores",
    "validation_rows",
]
