"""MC dropout: vectorised head sampling vs full passes, BatchNorm safety, mode restoration, seeding.

Distribution comparisons use 3 standard errors, Bonferroni-corrected over the k coordinates compared at once
(``z_bound(k)``), and a chi-square homogeneity test on the (finitely many) dropout outcomes of each item.
"""

import copy

import numpy as np
import pytest
import torch
from scipy.stats import chi2_contingency, norm
from torch import nn

from bayes_models.architectures import SplitNet, has_dropout, mlp
from bayes_models.mc_dropout import MCDropout, MCDropoutConfig, dropout_only

CONFIG = MCDropoutConfig((5,), 3, hidden=16, steps=30, batch_size=32, seed=0)


def z_bound(k: int) -> float:
    return float(norm.ppf(1 - 0.0027 / (2 * k)))


def data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 1).long()


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_head_only_sampling_matches_full_passes_in_distribution():
    torch.manual_seed(0)
    net = mlp(5, 3, hidden=4, depth=1, dropout=0.5)  # 2⁴ dropout masks: few outcomes per item
    with torch.no_grad():
        net.head[1].weight.mul_(3.0)
    # the same modules behind an identity Dropout(p=0) in the backbone force MCDropout onto S full passes
    full_net = SplitNet(nn.Sequential(net.features, nn.Dropout(0.0)), net.head)
    assert not has_dropout(net.features) and has_dropout(full_net.features)
    x, _ = data(6, seed=1)
    s = 4000
    head_only = MCDropout(CONFIG, device="cpu", network=net).predictive_samples(x, s, seed=1).double()
    full = MCDropout(CONFIG, device="cpu", network=full_net).predictive_samples(x, s, seed=2).double()
    assert head_only.shape == full.shape == (s, 6, 3)

    # an item whose hidden units are all 0 after the ReLU has one outcome: compare it exactly, the rest by SE
    random = (head_only.var(0) > 0) | (full.var(0) > 0)
    torch.testing.assert_close(head_only[0, ~random], full[0, ~random], rtol=0, atol=1e-6)
    bound = z_bound(2 * int(random.sum()))
    mean_se = (head_only.var(0) / s + full.var(0) / s).sqrt()
    assert ((head_only.mean(0) - full.mean(0)).abs() / mean_se)[random].max() < bound

    # SE of a difference of sample variances under H0 (one distribution), from the pooled moments:
    # Var(s²) = μ4/S − σ⁴(S−3)/(S(S−1)), exact for i.i.d. draws and > 0 even for a symmetric two-point outcome
    centred = torch.cat([head_only, full]) - torch.cat([head_only, full]).mean(0)
    sigma2, mu4 = centred.pow(2).mean(0), centred.pow(4).mean(0)
    var_se = (2 * (mu4 / s - sigma2**2 * (s - 3) / (s * (s - 1)))).sqrt()
    assert ((head_only.var(0) - full.var(0)).abs() / var_se)[random].max() < bound

    items = [item for item in range(6) if random[item].any()]
    for item in items:  # same frequencies of each distinct dropout outcome
        outcomes = torch.cat([head_only[:, item], full[:, item]]).mul(1e5).round().numpy()
        _, codes = np.unique(outcomes, axis=0, return_inverse=True)
        codes = codes.reshape(-1)
        table = np.stack(
            [np.bincount(codes[:s], minlength=codes.max() + 1), np.bincount(codes[s:], minlength=codes.max() + 1)]
        )
        assert chi2_contingency(table).pvalue > 0.0027 / len(items)


@pytest.mark.parametrize("backbone_dropout", [False, True], ids=["head-only", "full-passes"])
def test_batchnorm_statistics_unchanged_by_sampling(backbone_dropout):
    torch.manual_seed(1)
    features = [nn.Linear(5, 16), nn.BatchNorm1d(16), nn.ReLU()] + ([nn.Dropout(0.2)] if backbone_dropout else [])
    net = SplitNet(nn.Sequential(*features), nn.Sequential(nn.Dropout(0.5), nn.Linear(16, 3)))
    model = MCDropout(CONFIG, device="cpu", network=net).fit(*data())
    batchnorm = net.features[1]
    assert int(batchnorm.num_batches_tracked) == CONFIG.steps  # fit did train the statistics
    before = _state(batchnorm)

    modes: dict[str, list[bool]] = {"bn": [], "dropout": []}
    hooks = [batchnorm.register_forward_hook(lambda m, i, o: modes["bn"].append(m.training))]
    hooks += [
        m.register_forward_hook(lambda m, i, o: modes["dropout"].append(m.training))
        for m in net.modules()
        if isinstance(m, nn.Dropout)
    ]
    probs = model.predictive_samples(data(40, seed=2)[0], 8, seed=0, batch_size=16)
    for hook in hooks:
        hook.remove()

    assert probs.shape == (8, 40, 3)
    for key, value in before.items():
        assert torch.equal(batchnorm.state_dict()[key], value), key
    assert modes["bn"] and not any(modes["bn"])  # BatchNorm ran in eval mode (running statistics) ...
    assert modes["dropout"] and all(modes["dropout"])  # ... while dropout was on
    assert not net.training and not any(m.training for m in net.modules())


def test_dropout_only_switches_dropout_and_restores_modes():
    net = SplitNet(
        nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Dropout(0.1)), nn.Sequential(nn.Dropout(), nn.Linear(8, 3))
    )
    for training in (True, False):
        net.train(training)
        with dropout_only(net):
            for m in net.modules():
                assert m.training == isinstance(m, nn.Dropout)
        assert all(m.training == training for m in net.modules())
    net.train()
    with pytest.raises(RuntimeError, match="boom"), dropout_only(net):
        raise RuntimeError("boom")
    assert all(m.training for m in net.modules())


def test_dropout_only_restores_mixed_modes():
    net = SplitNet(nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8)), nn.Sequential(nn.Dropout(), nn.Linear(8, 3)))
    net.train()
    net.features[1].eval()
    modes = [m.training for m in net.modules()]
    with dropout_only(net):
        pass
    assert [m.training for m in net.modules()] == modes


def test_predictive_samples_are_repeatable_for_a_seed():
    model = MCDropout(CONFIG, device="cpu", network=mlp(5, 3, hidden=16))
    x, _ = data(30, seed=3)
    state = torch.random.get_rng_state()
    a = model.predictive_samples(x, 10, seed=5, batch_size=7)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG stream is untouched
    assert torch.equal(a, model.predictive_samples(x, 10, seed=5, batch_size=7))
    assert not torch.equal(a, model.predictive_samples(x, 10, seed=6, batch_size=7))
    assert a.std(0).max() > 1e-4


def test_fit_is_repeatable_from_the_same_initial_weights():
    torch.manual_seed(2)
    a = MCDropout(CONFIG, device="cpu")
    b = MCDropout(CONFIG, device="cpu")
    b.network.load_state_dict(a.network.state_dict())
    x, y = data()
    state = torch.random.get_rng_state()
    a.fit(x, y)
    assert torch.equal(torch.random.get_rng_state(), state)
    b.fit(x, y)
    assert a.losses == b.losses
    for key, value in _state(a.network).items():
        assert torch.equal(b.network.state_dict()[key], value), key


def test_fit_is_repeatable_for_a_fixed_config_seed():
    x, y = data()
    a = MCDropout(CONFIG, device="cpu").fit(x, y)
    b = MCDropout(CONFIG, device="cpu").fit(x, y)
    for key, value in _state(a.network).items():
        assert torch.equal(b.network.state_dict()[key], value), key


def test_interface_errors_and_state_round_trip():
    model = MCDropout(CONFIG, device="cpu").fit(*data())
    with pytest.raises(ValueError, match="weight_decay"):
        model.fit(*data(), prior=model.posterior())
    with pytest.raises(NotImplementedError, match="marginal likelihood"):
        model.log_evidence()
    loaded = MCDropout.from_state_dict(copy.deepcopy(model.state_dict()), device="cpu")
    x, _ = data(10, seed=4)
    assert torch.equal(loaded.predictive_samples(x, 4, seed=1), model.predictive_samples(x, 4, seed=1))


def test_config_depth_builds_that_many_hidden_layers_with_dropout_before_all_but_the_first():
    for depth in (1, 3):
        model = MCDropout(MCDropoutConfig((5,), 3, hidden=8, depth=depth, dropout=0.3), device="cpu")
        layers = [*model.network.features, *model.network.head]
        linears = [i for i, m in enumerate(layers) if isinstance(m, nn.Linear)]
        assert len(linears) == depth + 1
        assert not isinstance(layers[linears[0] - 1] if linears[0] else None, nn.Dropout)
        for i in linears[1:]:
            assert isinstance(layers[i - 1], nn.Dropout) and layers[i - 1].p == 0.3
        assert not any(isinstance(m, nn.Dropout) for m in model.network.features)  # the fast path's backbone
