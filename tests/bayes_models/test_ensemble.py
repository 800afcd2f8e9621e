"""Deep ensembles: distinct members, sample layout, seeding, interface errors, state round trip."""

import io
import itertools
from dataclasses import replace

import pytest
import torch

from bayes_models.ensemble import DeepEnsemble
from bayes_models.mc_dropout import MCDropoutConfig

CONFIG = MCDropoutConfig((2,), 3, hidden=16, steps=150, batch_size=32, lr=1e-2, seed=3)


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    y = torch.randint(0, 3, (n,), generator=g)
    return centers[y] + torch.randn(n, 2, generator=g), y


@pytest.fixture(scope="module")
def fitted() -> DeepEnsemble:
    return DeepEnsemble(CONFIG, members=3, device="cpu").fit(*blobs(200, seed=0))


def test_members_differ_and_learn(fitted):
    weights = fitted.posterior()
    assert len(weights) == len(fitted) == 3
    for a, b in itertools.combinations(weights, 2):
        assert a.keys() == b.keys()
        assert all(not torch.allclose(a[k], b[k]) for k in a)
    x, y = blobs(200, seed=1)
    probs = fitted.predictive_samples(x)
    for a, b in itertools.combinations(probs, 2):
        assert (a - b).abs().max() > 1e-3
    assert (probs.mean(0).argmax(-1) == y).double().mean() > 0.8  # chance is 1/3
    assert [len(losses) for losses in fitted.losses] == [CONFIG.steps] * 3


def test_samples_are_the_members(fitted):
    x, _ = blobs(11, seed=2)
    probs = fitted.predictive_samples(x, None, seed=1, batch_size=4)  # n=None: each member once
    assert probs.shape == (3, 11, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, 11))
    for m, member in enumerate(fitted.members):
        torch.testing.assert_close(probs[m], torch.softmax(member.network(x), -1))
    assert torch.equal(probs, fitted.predictive_samples(x, seed=2, batch_size=4))
    # n samples honoured: sample s is member s mod M, so n = 6 is the same mixture as the 3 members.
    six = fitted.predictive_samples(x, 6, seed=1, batch_size=4)
    assert torch.equal(six, probs[[0, 1, 2, 0, 1, 2]])
    torch.testing.assert_close(six.mean(0), probs.mean(0))


def test_fit_and_samples_repeat_for_a_seed_and_leave_the_global_rng_alone(fitted):
    state = torch.random.get_rng_state()
    again = DeepEnsemble(CONFIG, members=3, device="cpu").fit(*blobs(200, seed=0))
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(fitted.posterior(), again.posterior(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
    other_seed = DeepEnsemble(replace(CONFIG, seed=4), members=3, device="cpu")
    # seeds are config.seed + m: member 0 of seed 4 starts where member 1 of seed 3 did
    assert all(torch.equal(other_seed.members[0].network.state_dict()[k], v) for k, v in _init_state(1).items())


def _init_state(member: int) -> dict[str, torch.Tensor]:
    return DeepEnsemble(CONFIG, members=3, device="cpu").members[member].network.state_dict()


def test_mc_dropout_ensemble_samples():
    model = DeepEnsemble(CONFIG, members=2, device="cpu", mc_dropout=True).fit(*blobs(100, seed=0))
    x, _ = blobs(9, seed=3)
    probs = model.predictive_samples(x, 8, seed=5)
    assert probs.shape == (8, 9, 3)
    assert torch.equal(probs, model.predictive_samples(x, 8, seed=5))
    assert not torch.equal(probs, model.predictive_samples(x, 8, seed=6))
    assert probs[:4].std(0).max() > 1e-4  # dropout samples within a member differ
    with pytest.raises(ValueError, match="multiple of the 2 members"):
        model.predictive_samples(x, 7)
    with pytest.raises(ValueError, match="multiple"):
        model.predictive_samples(x)


def test_no_evidence_no_prior_and_state_round_trip(fitted):
    with pytest.raises(NotImplementedError, match="no marginal likelihood"):
        fitted.log_evidence()
    with pytest.raises(ValueError, match="cannot start from a posterior"):
        fitted.fit(*blobs(10, seed=0), prior=fitted.posterior())
    with pytest.raises(ValueError, match="at least one member"):
        DeepEnsemble(CONFIG, members=0)
    buffer = io.BytesIO()
    torch.save(fitted.state_dict(), buffer)
    buffer.seek(0)
    loaded = DeepEnsemble.from_state_dict(torch.load(buffer, weights_only=True), device="cpu")
    x, _ = blobs(5, seed=4)
    assert torch.equal(loaded.predictive_samples(x), fitted.predictive_samples(x))
    with pytest.raises(ValueError, match="members"):
        DeepEnsemble(CONFIG, members=2, device="cpu").load_state_dict(fitted.state_dict())
