"""ActiveLearner on a small real data set: shapes, seeds, inputs, the evidence table, teaching, saving, streaming."""

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.datasets import load_wine

from acquisition import bald, expected_entropy, predictive_entropy
from bayes_models.selection import kass_raftery
from learner import ActiveLearner, round_seed
from learner.query import TOP_K_SUBSAMPLE_PER_PICK, pool_predict, resolve_subsample

LAST_LAYER_EVIDENCE = "Laplace log p(D₂|D₁) (last_layer, exact GGN, D₁ = 50% of the labels)"
ALL_WEIGHTS_EVIDENCE = "Laplace log p(D₂|D₁) (all, exact GGN, D₁ = 50% of the labels)"

CANDIDATES = [{"name": "h8", "hidden": 8, "depth": 1}, {"name": "h32", "hidden": 32}]


@pytest.fixture(scope="module")
def wine():
    """Standardised wine: 16 labelled items (a few per class), 150 in the pool, 12 held out."""
    data = load_wine()
    x = ((data.data - data.data.mean(0)) / data.data.std(0)).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    labeled, pool, held = order[:16], order[16:166], order[166:]
    return x[labeled], data.target[labeled], x[pool], data.target[pool], x[held]


def _learner(**options) -> ActiveLearner:
    return ActiveLearner(**{"candidates": CANDIDATES, "steps": 40, "samples": 8, "device": "cpu", **options})


def test_query_shapes_and_parts(wine):
    x, y, pool, _, held = wine
    learner = _learner(acquisition="bald", pool_subsample="all").fit(x, y)
    batch = learner.query(pool, k=7)
    assert len(batch.ids) == len(batch.indices) == 7 and len(set(batch.indices.tolist())) == 7
    assert batch.scores.shape == batch.epistemic.shape == batch.aleatoric.shape == batch.predicted.shape == (7,)
    # The predicted class and its probability: the pool's predictive (same draws as the scoring) averaged over S.
    mean_probs = pool_predict(
        learner.selected.model, torch.from_numpy(pool[batch.indices]), 8, seed=round_seed(learner.seed, learner.round)
    )
    mean_probs = mean_probs.double().mean(0).numpy()
    assert batch.predicted.tolist() == mean_probs.argmax(1).tolist()
    assert batch.probability.tolist() == pytest.approx(mean_probs.max(1).tolist(), abs=1e-6)
    assert batch.ids == [f"{i:012d}" for i in batch.indices]  # items without ids are named by position
    assert batch.scores.tolist() == pytest.approx(batch.epistemic.tolist(), abs=1e-12)  # BALD's score is its MI
    assert list(batch.scores) == sorted(batch.scores, reverse=True)
    assert batch.n_scored == batch.pool_size == len(pool) and batch.epistemic_hist.sum() == len(pool)
    # BALD + aleatoric = the predictive entropy, for the chosen items' own posterior draws.
    probs = learner.selected.model.predictive_samples(torch.from_numpy(pool[batch.indices]), 8, seed=0)
    assert (batch.epistemic >= 0).all() and (batch.aleatoric >= 0).all()
    assert expected_entropy(probs).shape == bald(probs).shape == predictive_entropy(probs).shape == (7,)
    proba = learner.predict_proba(held)
    assert proba.shape == (len(held), 3) and np.allclose(proba.sum(1), 1, atol=1e-5)


def test_same_seed_same_batch_other_seed_other_model(wine):
    x, y, pool, _, _ = wine
    first = _learner(seed=4).fit(x, y).query(pool, k=10)
    again = _learner(seed=4).fit(x, y).query(pool, k=10)
    other = _learner(seed=5).fit(x, y)
    assert again.ids == first.ids and again.scores.tolist() == first.scores.tolist()
    assert other.query(pool, k=10).scores.tolist() != first.scores.tolist()


def test_numpy_torch_and_pandas_inputs_agree(wine):
    x, y, pool, _, _ = wine
    columns = [f"f{i}" for i in range(x.shape[1])]
    from_numpy = _learner().fit(x, y).query(pool, k=5)
    from_torch = _learner().fit(torch.from_numpy(x), torch.from_numpy(y)).query(torch.from_numpy(pool), k=5)
    from_pandas = _learner().fit(pd.DataFrame(x, columns=columns), pd.Series(y)).query(pd.DataFrame(pool), k=5)
    assert from_numpy.ids == from_torch.ids == from_pandas.ids
    assert from_numpy.scores.tolist() == from_torch.scores.tolist() == from_pandas.scores.tolist()


def test_evidence_table_is_the_bayes_factor_table(wine):
    x, y, _, _, _ = wine
    learner = _learner().fit(x, y)
    table = learner.evidence_table()
    assert list(table.columns[:8]) == [
        "candidate",
        "family",
        "log_evidence",
        "kind",
        "evidence_kind",
        "log_bayes_factor",
        "kass_raftery",
        "selected",
    ]
    assert sorted(table.candidate) == ["h32", "h8"] and table.selected.tolist() == [True, False]
    assert table.candidate[0] == learner.selected.name
    best = table.log_evidence.max()
    assert table.log_evidence[0] == best
    assert table.log_bayes_factor.tolist() == pytest.approx((best - table.log_evidence).tolist(), abs=1e-12)
    assert table.kass_raftery.tolist() == ["selected", kass_raftery(table.log_bayes_factor[1])]
    assert set(table.kind) == {"evidence"} and set(table.evidence_kind) == {LAST_LAYER_EVIDENCE}
    # condition_on=0: the marginal likelihood of all labels, which the conditional's factorisation also gives
    marginal = _learner(condition_on=0.0).fit(x, y).evidence_table().set_index("candidate")
    assert set(marginal.evidence_kind) == {"Laplace log Z (last_layer, exact GGN)"}
    assert (marginal.log_evidence < table.set_index("candidate").log_evidence[marginal.index]).all()
    elbo = _learner(model="vi").fit(x, y).evidence_table()
    assert set(elbo.kind) == {"bound"} and set(elbo.evidence_kind) == {"ELBO (lower bound)"}
    assert all(math.isfinite(v) for v in elbo.log_evidence)


def test_teach_retrains_on_every_label_or_updates_beliefs_on_the_new_ones(wine):
    x, y, pool, pool_y, _ = wine
    retrain = _learner().fit(x, y)
    batch = retrain.query(pool, k=6)
    retrain.teach(pool[batch.indices], pool_y[batch.indices])
    assert (retrain.round, retrain.n_labeled) == (2, 22)
    assert set(retrain.evidence_table().n_fitted) == {22}

    belief = _learner(model="laplace", update="belief", update_steps=20).fit(x, y)
    log_z = belief.evidence_table().set_index("candidate").log_evidence
    assert set(belief.evidence_table().evidence_kind) == {ALL_WEIGHTS_EVIDENCE}
    belief.teach(pool[:6], pool_y[:6])
    table = belief.evidence_table().set_index("candidate")
    assert set(table.n_fitted) == {6}
    # the increment log p(D_new | D_old) has a posterior for its prior: under the KFAC structure, and labelled so
    assert set(table.evidence_kind) == {ALL_WEIGHTS_EVIDENCE + " + updates under the structure's"}
    assert (table.log_evidence < log_z[table.index]).all()  # log p(D_old) + log p(D_new | D_old), each term < 0
    # A relabelled item: the old posterior holds its old label, so the candidates retrain on everything.
    belief.teach(x[:1], [(int(y[0]) + 1) % 3], ids=["000000000000"])
    assert belief.n_labeled == 22 and set(belief.evidence_table().n_fitted) == {22}


def test_save_and_load_round_trip(wine, tmp_path):
    x, y, pool, pool_y, held = wine
    learner = _learner(model="laplace", update="belief", update_steps=20).fit(x, y)
    learner.teach(pool[:4], pool_y[:4])
    torch.save(learner.state_dict(), tmp_path / "learner.pt")
    restored = ActiveLearner.from_state_dict(torch.load(tmp_path / "learner.pt", weights_only=True))
    assert restored.round == 2 and restored.n_labeled == 20 and restored.update == "belief"
    pd.testing.assert_frame_equal(restored.evidence_table(), learner.evidence_table())
    assert np.array_equal(restored.predict_proba(held), learner.predict_proba(held))
    expected = learner.query(pool[4:], k=5)
    assert restored.query(pool[4:], k=5).ids == expected.ids
    # Teaching the restored learner continues exactly as the original would.
    learner.teach(pool[4:8], pool_y[4:8])
    restored.teach(pool[4:8], pool_y[4:8])
    assert np.array_equal(restored.predict_proba(held), learner.predict_proba(held))


@pytest.mark.parametrize("acquisition", ["bald", "batchbald", "powerbald", "margin"])
def test_streaming_query_over_chunks_equals_the_in_memory_query(wine, acquisition):
    x, y, pool, _, _ = wine
    learner = _learner(acquisition=acquisition, batch_candidates=30).fit(x, y)
    ids = [f"wine-{i:03d}" for i in range(len(pool))]
    in_memory = learner.query(pool, k=8, ids=ids, chunk_size=40)
    chunked = learner.query(((ids[s : s + 40], pool[s : s + 40]) for s in range(0, len(pool), 40)), k=8)
    assert chunked.ids == in_memory.ids and chunked.indices.tolist() == in_memory.indices.tolist()
    assert chunked.scores.tolist() == in_memory.scores.tolist()
    assert chunked.epistemic_hist.tolist() == in_memory.epistemic_hist.tolist()
    without_ids = learner.query(iter(np.array_split(pool, 4)), k=8)
    assert without_ids.n_scored == len(pool) and len(without_ids.ids) == 8
    if acquisition in ("bald", "batchbald", "margin"):  # deterministic scores: the chunking does not matter
        assert without_ids.indices.tolist() == in_memory.indices.tolist()


def test_random_scores_only_the_items_it_draws(wine):
    """``random`` on an in-memory pool draws its k items first (seeded by the round) and scores those alone; over a
    stream of chunks, whose size is not known up front, it scores every item and keeps a uniform top-k."""
    x, y, pool, _, _ = wine
    learner = _learner(acquisition="random").fit(x, y)
    batch = learner.query(pool, k=8)
    assert batch.n_scored == 8 and batch.pool_size == len(pool) and len(set(batch.indices.tolist())) == 8
    assert int(batch.epistemic_hist.sum()) == 8
    assert np.allclose(batch.epistemic, learner.query(pool, k=8).epistemic)  # the same draw again
    again = _learner(acquisition="random").fit(x, y).query(pool, k=8)
    assert again.indices.tolist() == batch.indices.tolist()
    assert np.allclose(batch.probability, learner.predict_proba(pool[batch.indices]).max(1), atol=1e-6)
    streamed = learner.query(iter(np.array_split(pool, 4)), k=8)
    assert streamed.n_scored == len(pool) and len(set(streamed.indices.tolist())) == 8


def test_cold_start_and_subsample(wine):
    x, y, pool, _, _ = wine
    cold = _learner(seed=2).query(pool, k=5)
    assert cold.scores is None and cold.acquisition == "random" and len(set(cold.indices.tolist())) == 5
    assert _learner(seed=2).query(pool, k=5).indices.tolist() == cold.indices.tolist()
    sub = _learner(pool_subsample=40).fit(x, y).query(pool, k=5)
    assert sub.n_scored == 40 and sub.pool_size == len(pool)


def test_auto_subsample_scores_a_random_20_per_pick_for_top_k_and_the_whole_pool_for_drawn_batches(wine):
    x, y, pool, _, _ = wine
    large = np.repeat(pool, 17, axis=0) + np.random.default_rng(0).normal(0, 0.1, (17 * len(pool), pool.shape[1]))
    large = large.astype(np.float32)  # 2,550 items
    scored = {}
    for acquisition in ("bald", "predictive_entropy", "epig", "powerbald", "batchbald"):
        batch = _learner(acquisition=acquisition, batch_candidates=20).fit(x, y).query(large, k=5)
        scored[acquisition] = batch.n_scored
        assert batch.pool_size == len(large) and len(set(batch.indices.tolist())) == 5
    top_k = TOP_K_SUBSAMPLE_PER_PICK * 5
    assert scored == {
        "bald": top_k,
        "predictive_entropy": top_k,
        "epig": top_k,
        "powerbald": 2550,
        "batchbald": 2550,
    }
    assert _learner(acquisition="bald", pool_subsample="all").fit(x, y).query(large, k=5).n_scored == len(large)
    assert _learner(acquisition="bald").fit(x, y).query(large, k=40).n_scored == TOP_K_SUBSAMPLE_PER_PICK * 40
    assert _learner(acquisition="bald").fit(x, y).query(pool, k=10).n_scored == len(pool)  # 150 < 200: all of it
    streamed = _learner(acquisition="bald").fit(x, y).query(iter(np.array_split(large, 3)), k=5)
    assert streamed.n_scored == len(large)  # a stream's size is not known up front: "auto" scores all of it
    with pytest.raises(ValueError, match="pool_subsample must be a number of items, 'auto' or 'all'; got 'some'"):
        resolve_subsample("bald", "some", 10)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="unknown acquisition function 'bold'"):
        ActiveLearner(acquisition="bold")
    with pytest.raises(ValueError, match=r"belief.*\['mc_dropout'\]"):
        ActiveLearner(update="belief")
    with pytest.raises(ValueError, match="unknown model family 'gp'"):
        ActiveLearner(model="gp")
    with pytest.raises(ValueError, match="unique"):
        ActiveLearner(candidates=[{"name": "a"}, {"name": "a", "hidden": 4}])
    with pytest.raises(RuntimeError, match="fit"):
        ActiveLearner().evidence_table()


def test_auto_evidence_subset_is_all_weights_only_for_marglik_trained_candidates():
    from learner import CandidateSpec, EvidenceOptions, ModelOptions

    laplace = CandidateSpec("l", ModelOptions(family="laplace"))
    dropout = CandidateSpec("d", ModelOptions(family="mc_dropout"))
    assert EvidenceOptions.for_candidates("auto", "kfac", [laplace]).subset == "all"
    assert EvidenceOptions.for_candidates("auto", "kfac", [laplace, dropout]).subset == "last_layer"
    assert EvidenceOptions.for_candidates("all", "diag", [dropout]) == EvidenceOptions("all", "diag")


def test_laplace_predictive_option_reaches_the_model(wine):
    """``model.predictive`` (a ModelOptions key) sets what a laplace candidate predicts with: the evidence's
    all-weights KFAC, or by default the last layer's Laplace."""
    x, y, _, _, _ = wine
    spec = [{"name": "lap", "hidden": 8, "depth": 1}]
    for predictive, subset in (("evidence", "all"), ("last_layer_kfac", "last_layer")):
        learner = _learner(model="laplace", candidates=spec, predictive=predictive).fit(x, y)
        model = learner.selected.model
        assert model.config.predictive == predictive and model.predictor().subset == subset


def test_a_laplace_models_predict_proba_is_its_link(wine):
    """``predict_proba`` (test metrics, ``ActiveLearner.predict_proba``, a held-out NLL) of a laplace model is its
    ``predict`` under its link: the probit's closed form by default, else the mean of the draws that score the pool."""
    from bayes_models import LaplaceClassifier
    from learner import predict_proba

    x, y, _, _, held = wine
    learner = _learner(model="laplace", candidates=[{"name": "lap", "hidden": 8, "depth": 1}]).fit(x, y)
    model, x_held = learner.selected.model, torch.from_numpy(held)
    assert model.config.link == "probit"
    assert torch.equal(predict_proba(model, x_held, 16, seed=3), model.predict(x_held, link="probit"))
    assert np.array_equal(learner.predict_proba(held), predict_proba(model, x_held, 8, seed=learner.round).numpy())
    state = model.state_dict()
    mc = LaplaceClassifier.from_state_dict({**state, "config": {**state["config"], "link": "mc"}}, device="cpu")
    draws = pool_predict(mc, x_held, 16, seed=3)
    assert torch.allclose(predict_proba(mc, x_held, 16, seed=3), draws.mean(0), atol=1e-6)
    assert not torch.allclose(predict_proba(mc, x_held, 16, seed=3), predict_proba(model, x_held, 16, seed=3))


def test_the_validation_nll_criterion_ranks_candidates_that_have_an_evidence_by_held_out_nll(wine):
    """``criterion="validation_nll"``: candidates that all have an evidence are ranked by the NLL of the held-out
    20% anyway (their evidence shown, no Bayes factor), the selected one refitted on every label, the others as
    fitted without the held-out items; a state dict keeps the criterion; an unknown one is refused."""
    x, y, *_ = wine
    learner = _learner(seed=3, criterion="validation_nll").fit(x, y)
    table = learner.evidence_table().set_index("candidate")
    assert set(table.criterion) == {"validation_nll"} and table.log_bayes_factor.isna().all()
    assert table.log_evidence.notna().all()  # shown, not compared
    assert table.validation_nll.tolist() == sorted(table.validation_nll)
    assert learner.selected.n_fitted == len(y)
    assert all(r.fitted.n_fitted == len(y) - round(0.2 * len(y)) for r in learner.ranked[1:])
    assert set(_learner(seed=3).fit(x, y).evidence_table().criterion) == {"evidence"}  # the default: Bayes factors
    restored = ActiveLearner.from_state_dict(learner.state_dict())
    assert restored.criterion == "validation_nll"
    assert restored.evidence_table().candidate.tolist() == table.index.tolist()
    with pytest.raises(ValueError, match="criterion must be one of"):
        _learner(criterion="bic")


def test_a_round_with_an_ensemble_selects_every_candidate_by_validation_nll(wine):
    """An ensemble has no evidence: the round compares all candidates by the NLL of a held-out split, refits the
    selected one on every label, and reports no Bayes factor (never the mean of the members' log Z)."""
    from bayes_models.metrics import nll
    from learner import validation_rows

    x, y, _, _, held = wine
    candidates = [{"name": "ens", "family": "ensemble", "members": 2}, {"name": "drop", "hidden": 16, "depth": 1}]
    learner = _learner(candidates=candidates, seed=3).fit(x, y)
    table = learner.evidence_table().set_index("candidate")
    assert set(table.criterion) == {"validation_nll"} and table.log_bayes_factor.isna().all()
    assert table.loc["ens", "kind"] == "none" and pd.isna(table.loc["ens", "log_evidence"])
    assert math.isfinite(table.loc["drop", "log_evidence"])  # shown, not compared
    assert table.selected.tolist() == [True, False]
    assert table.validation_nll.iloc[0] <= table.validation_nll.iloc[1]

    # The held-out items and each NLL, recomputed independently from the unselected candidate's own model.
    ids = [f"{i:012d}" for i in range(len(y))]
    held_out = validation_rows(ids, seed=3001)  # round 1 of seed 3
    assert len(held_out) == round(0.2 * len(y))
    assert sorted(ids[i] for i in held_out) == sorted(ids[::-1][i] for i in validation_rows(ids[::-1], 3001))
    other = learner.ranked[1].fitted
    assert other.n_fitted == len(y) - len(held_out) and not set(other.trained_on) & {ids[i] for i in held_out}
    consistent = {"consistent": True} if other.family == "mc_dropout" else {}  # the pool's predictive
    probs = other.model.predictive_samples(torch.from_numpy(x[held_out]), 8, seed=3001, **consistent)
    expected = nll(probs.mean(0), torch.from_numpy(y[held_out]))
    assert table.loc[other.name, "validation_nll"] == pytest.approx(expected, rel=1e-6)
    assert learner.selected.n_fitted == len(y)  # refitted on every label

    restored = ActiveLearner.from_state_dict(learner.state_dict())
    assert restored.evidence_table().candidate.tolist() == table.index.tolist()
    assert learner.predict_proba(held).shape == (len(held), 3)


def test_a_lone_ensemble_is_selected_without_a_split_or_an_evidence(wine):
    x, y, _, _, _ = wine
    learner = _learner(model="ensemble", candidates=None, members=2).fit(x, y)
    row = learner.evidence_table().iloc[0]
    assert (row.criterion, row.kind, row.n_fitted) == ("none", "none", len(y))
    assert pd.isna(row.log_evidence) and pd.isna(row.log_bayes_factor)


def test_prior_from_a_saved_posterior_and_clear_errors_on_other_shapes_or_families(wine, tmp_path):
    from learner import candidate_payload

    x, y, pool, pool_y, _ = wine
    spec = {"name": "v", "hidden": 8, "depth": 1}
    earlier = _learner(model="vi", candidates=[spec]).fit(pool[:60], pool_y[:60])
    path = tmp_path / "v.pt"
    torch.save(candidate_payload(earlier.selected, 1), path)
    saved = earlier.selected.model.posterior()["head.1.weight"]

    later = _learner(model="vi", candidates=[{**spec, "prior_from": str(path)}]).fit(x, y)
    layer = later.selected.model.layers["head.1"]  # the saved posterior is the prior of the fresh fit
    assert torch.allclose(layer.prior_weight_mu, saved[0]) and torch.allclose(layer.prior_weight_sigma, saved[1])
    fresh = _learner(model="vi", candidates=[spec]).fit(x, y)
    assert later.selected.log_evidence != fresh.selected.log_evidence

    wider = _learner(model="vi", candidates=[{**spec, "hidden": 16, "prior_from": str(path)}])
    shapes = r"layer 'features\.0\.weight' has shape \(8, 13\) in the saved posterior, expected \(16, 13\)"
    message = f"prior from {re.escape(str(path))}: {shapes}"
    with pytest.raises(ValueError, match=message):
        wider.fit(x, y)
    with pytest.raises(ValueError, match="saved posterior is of family 'vi', expected 'laplace'"):
        _learner(model="laplace", candidates=[{**spec, "prior_from": str(path)}]).fit(x, y)


def test_prior_tuned_on_validation_scales_the_evidence_prior_of_the_fit_on_every_label(wine):
    x, y, _, _, _ = wine
    spec = [{"name": "lap", "hidden": 8, "depth": 1}]
    tuned = _learner(model="laplace", candidates=spec, prior_tuning="validation").fit(x, y)
    plain = _learner(model="laplace", candidates=spec).fit(x, y)
    tuning = tuned.selected.prior_tuning
    assert tuning.validation_nll <= tuning.evidence_nll and tuning.scale in tuning.scales
    assert plain.selected.prior_tuning is None and tuned.selected.n_fitted == len(y)
    plain_model, tuned_model = plain.selected.model, tuned.selected.model  # the same network, fitted on every label
    torch.testing.assert_close(tuned_model.laplace.prior_precision, tuning.scale * plain_model.laplace.prior_precision)
    # ... and the predictive (a last-layer Laplace) predicts under the same scaled prior
    predictor = tuned_model.predictor()
    assert predictor is not tuned_model.laplace and predictor.subset == "last_layer"
    torch.testing.assert_close(predictor.prior_precision, tuning.scale * plain_model.predictor().prior_precision)
    assert tuned.evidence_table().prior_scale[0] == tuning.scale
    assert ActiveLearner.from_state_dict(tuned.state_dict()).selected.prior_tuning == tuning
    with pytest.raises(ValueError, match="prior_tuning must be 'evidence' or 'validation'"):
        _learner(prior_tuning="grid")


def test_a_posterior_with_fewer_classes_is_retrained_not_updated(wine):
    """A class admitted after a posterior was saved: the belief update cannot use it as a prior (one output short),
    so the candidate is retrained on every label with the wider output and says which class count it replaced."""
    from learner import EvidenceOptions, ModelOptions, candidate_payload, fit_candidate
    from learner.candidates import CandidateSpec

    x, y, pool, _, _ = wine
    spec = CandidateSpec("h8", ModelOptions(family="laplace", hidden=8, depth=1, steps=30, device="cpu"))
    options = EvidenceOptions(subset="last_layer")
    ids = [f"i{i}" for i in range(len(x))]
    common = {"feature_shape": (x.shape[1],), "seed": 0}
    first = fit_candidate(spec, options, torch.from_numpy(x), torch.from_numpy(y), ids, n_classes=3, **common)
    saved = candidate_payload(first, 1)
    x2 = torch.from_numpy(np.concatenate([x, pool[:2]]))
    y2 = torch.from_numpy(np.concatenate([y, [3, 3]]))  # two answers of a fourth class
    ids2 = [*ids, "p0", "p1"]
    grown = fit_candidate(spec, options, x2, y2, ids2, n_classes=4, previous=saved, **common)
    assert grown.previous_classes == 3 and grown.n_fitted == len(ids2)  # retrained on everything
    assert grown.model.predictive_samples(x2[:5], 3, seed=0).shape == (3, 5, 4)
    same = fit_candidate(spec, options, x2[:-2], y2[:-2], ids, n_classes=3, previous=saved, **common)
    assert same.previous_classes is None and same.n_fitted == 0  # same classes, nothing new: a belief update


@pytest.mark.parametrize("family", ["mc_dropout", "laplace", "vi", "ensemble"])
def test_epig_scores_items_against_targets_under_the_same_posterior_draws(wine, family):
    """EPIG's joint predictive needs each posterior draw to be the same network for the items and the targets,
    which are predicted in separate calls (and chunks): every family's pool predictive must draw the same S."""
    x, y, pool, _, _ = wine
    learner = _learner(acquisition="epig", model=family, candidates=CANDIDATES[:1], pool_subsample="all").fit(x, y)
    model, seed = learner.selected.model, round_seed(learner.seed, learner.round)
    a, b = torch.from_numpy(pool[:30]), torch.from_numpy(pool[30:70])
    apart = torch.cat([pool_predict(model, a, 8, seed=seed), pool_predict(model, b, 8, seed=seed)], dim=1)
    torch.testing.assert_close(pool_predict(model, torch.cat([a, b]), 8, seed=seed), apart, rtol=1e-5, atol=1e-6)

    batch = learner.query(pool, k=6, chunk_size=40)
    assert batch.acquisition == "epig" and len(set(batch.indices.tolist())) == 6 and batch.n_scored == len(pool)
    assert learner.query(pool, k=6, chunk_size=1000).ids == batch.ids  # the chunking does not matter
    # What a label says about the targets' labels is part of what it says about the parameters (BALD).
    assert bool((batch.scores <= batch.epistemic + 1e-6).all()) and float(batch.scores.max()) > 0
    with pytest.raises(ValueError, match="epig needs an in-memory pool"):
        learner.query(iter(np.array_split(pool, 3)), k=6)


def test_evaluation_predictive_averages_the_draws_noise_over_chunks(wine):
    """A metric over many items (the mean NLL): with one set of S dropout masks shared by every item (pool
    scoring's draws) it carries the randomness of those S networks however many items it averages; with fresh
    draws per ``EVALUATION_CHUNK`` items that randomness averages over the chunks (8 here: the spread over seeds
    should shrink by about √8 = 2.8; asserted below 0.6), while the expectation per item is the same draws' law (means
    within 4 standard errors). Seeded, so the same call gives the same probabilities."""
    from bayes_models.metrics import nll
    from learner import evaluation_predictive, predict_proba
    from learner.query import EVALUATION_CHUNK

    x, y, _, _, _ = wine
    model = _learner(candidates=[{"name": "h32", "hidden": 32, "depth": 2}]).fit(x, y).selected.model
    items = torch.randn(8 * EVALUATION_CHUNK, x.shape[1], generator=torch.Generator().manual_seed(0))
    targets = predict_proba(model, items, 2000, seed=99).argmax(1)
    shared = torch.tensor([nll(predict_proba(model, items, 8, seed=s), targets) for s in range(16)])
    chunked = torch.tensor([nll(evaluation_predictive(model, items, 8, seed=s), targets) for s in range(16)])
    assert chunked.std() < 0.6 * shared.std()
    standard_error = math.sqrt((shared.var() + chunked.var()).item() / 16)
    assert abs(chunked.mean() - shared.mean()) < 4 * standard_error
    assert torch.equal(evaluation_predictive(model, items, 8, seed=3), evaluation_predictive(model, items, 8, seed=3))
