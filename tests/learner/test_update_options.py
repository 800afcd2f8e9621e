"""The learner's step schedule (``epochs``), belief-update subset and ``update="finetune"``, observed through the
fitted networks on a small real data set."""

import math

import numpy as np
import pytest
import torch
from sklearn.datasets import load_wine

from bayes_models import LaplaceClassifier
from bayes_models.laplace import fit_laplace
from learner import ActiveLearner

LAPLACE = {"model": "laplace", "training": "map", "hidden": 16, "depth": 2, "samples": 4, "device": "cpu"}


@pytest.fixture(scope="module")
def wine():
    """Standardised wine: 16 labelled items and 40 more to teach."""
    data = load_wine()
    x = ((data.data - data.data.mean(0)) / data.data.std(0)).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    return x[order[:16]], data.target[order[:16]], x[order[16:56]], data.target[order[16:56]]


def _weights(learner: ActiveLearner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in learner.selected.model.network.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("update", ["retrain", "belief"])
def test_an_epochs_schedule_trains_the_steps_of_its_formula_on_the_labels_each_fit_sees(wine, update):
    x, y, new_x, new_y = wine
    options = {**LAPLACE, "update": update, "batch_size": 8}
    # steps=200 is what a schedule that ignored epochs would train
    by_epochs = ActiveLearner(**options, epochs=3, min_steps=5, steps=200).fit(x, y)
    assert by_epochs.selected.steps == math.ceil(3 * 16 / 8) == 6
    n_taught = 4
    n_fitted = 16 + n_taught if update == "retrain" else n_taught
    expected = max(5, math.ceil(3 * n_fitted / 8))  # retrain: 8 steps on 20 labels; belief: min_steps on 4
    fixed = ActiveLearner(**options, steps=6, update_steps=expected if update == "belief" else None).fit(x, y)
    assert _same(_weights(by_epochs), _weights(fixed))

    if update == "retrain":
        fixed = ActiveLearner(**options, steps=expected).fit(x, y)
    by_epochs.teach(new_x[:n_taught], new_y[:n_taught])
    fixed.teach(new_x[:n_taught], new_y[:n_taught])
    assert by_epochs.selected.steps == expected and by_epochs.selected.n_fitted == n_fitted
    assert _same(_weights(by_epochs), _weights(fixed))
    assert by_epochs.evidence_table().log_evidence[0] == pytest.approx(fixed.evidence_table().log_evidence[0])
    restored = ActiveLearner.from_state_dict(by_epochs.state_dict())
    assert restored.selected.steps == expected


def test_a_last_layer_belief_update_leaves_the_backbone_as_it_was_and_an_all_weights_one_moves_every_layer(wine):
    x, y, new_x, new_y = wine
    changed = {}
    for subset in ("last_layer", "all"):
        learner = ActiveLearner(**LAPLACE, update="belief", subset=subset, steps=40, update_steps=20).fit(x, y)
        before = _weights(learner)
        learner.teach(new_x[:8], new_y[:8])
        after = _weights(learner)
        assert learner.selected.n_fitted == 8 and learner.selected.model.laplace.subset == subset
        changed[subset] = [k for k in before if not torch.equal(before[k], after[k])]
    names = list(before)
    assert changed["last_layer"] == names[-2:] == ["head.4.weight", "head.4.bias"]  # the output layer alone
    assert changed["all"] == names


def test_finetune_is_adam_on_the_new_labels_without_a_prior_then_a_laplace_of_them_alone(wine):
    x, y, new_x, new_y = wine
    options = {**LAPLACE, "subset": "all", "steps": 40, "update_steps": 25}
    finetune = ActiveLearner(**options, update="finetune").fit(x, y)
    belief = ActiveLearner(**options, update="belief").fit(x, y)
    start = LaplaceClassifier.from_state_dict(finetune.selected.model.state_dict(), device="cpu")
    finetune.teach(new_x[:10], new_y[:10])
    belief.teach(new_x[:10], new_y[:10])

    # Oracle: 25 full-batch Adam steps (10 labels < the batch size) on the new labels' mean cross-entropy alone.
    network, xn, yn = start.network.eval(), torch.from_numpy(new_x[:10]), torch.from_numpy(new_y[:10])
    optimiser = torch.optim.Adam(network.parameters(), lr=1e-3)
    for _ in range(25):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(network(xn), yn).backward()
        optimiser.step()
    tuned = finetune.selected
    for name, value in network.state_dict().items():
        torch.testing.assert_close(tuned.model.network.state_dict()[name], value, rtol=1e-4, atol=1e-6)
    assert not _same(_weights(finetune), _weights(belief))  # the belief update's prior pulls toward θ_prev
    # The posterior and evidence are of the new labels alone, the prior precision tuned on their evidence.
    laplace = fit_laplace(network, xn, yn, subset="all", structure="kfac")
    assert tuned.steps == 25 and tuned.n_fitted == 10
    assert tuned.log_evidence == pytest.approx(laplace.log_evidence(), rel=1e-4)


def test_bad_schedule_and_finetune_options_are_refused():
    with pytest.raises(ValueError, match="epochs must be positive"):
        ActiveLearner(model="laplace", epochs=0)
    with pytest.raises(ValueError, match="min_steps must be at least 1"):
        ActiveLearner(model="laplace", epochs=2, min_steps=0)
    with pytest.raises(ValueError, match=r"finetune.*laplace.*'vi'"):
        ActiveLearner(model="vi", update="finetune")
    with pytest.raises(ValueError, match="update must be one of"):
        ActiveLearner(model="laplace", update="forget")
