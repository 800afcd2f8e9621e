"""Consistent-mask head sampling: exact against a manual computation, shared masks, unchanged marginals."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from bayes_models import gal_cnn, mlp
from bayes_models.fast_head import dropout_masks, head_samples_consistent, predictive_samples_consistent


def _head(H: int = 6, C: int = 3, p: float = 0.5, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Dropout(p), nn.Linear(H, C)).double()
    with torch.no_grad():
        head[1].weight.mul_(4.0)  # spread the logits so the dropout variance is large
    return head


def test_matches_manual_masks_and_is_deterministic():
    head = _head()
    x = torch.randn(5, 6, dtype=torch.float64)
    logits = head_samples_consistent(head, x, 7, generator=torch.Generator().manual_seed(3))
    masks = dropout_masks(7, 6, 0.5, generator=torch.Generator().manual_seed(3), device=x.device, dtype=torch.float64)
    manual = torch.stack([(x * m) @ head[1].weight.T + head[1].bias for m in masks])
    assert logits.shape == (7, 5, 3) and logits.is_contiguous()
    torch.testing.assert_close(logits, manual, rtol=1e-12, atol=1e-12)
    again = head_samples_consistent(head, x, 7, generator=torch.Generator().manual_seed(3))
    assert torch.equal(logits, again)
    assert set(masks.unique().tolist()) <= {0.0, 2.0}  # inverted dropout scaling 1 / (1 - p)


def test_one_mask_per_sample_shared_by_items():
    head = _head()
    row = torch.randn(1, 6, dtype=torch.float64)
    logits = head_samples_consistent(head, row.expand(4, 6), 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits[:, 0], logits[:, 3])  # same item, same sample: same network
    assert logits[:, 0].std(0).min() > 0  # but the samples differ


def test_deeper_head_and_no_dropout():
    torch.manual_seed(1)
    head = nn.Sequential(nn.Dropout(0.3), nn.Linear(6, 5), nn.ReLU(), nn.Dropout(0.2), nn.Linear(5, 3)).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    logits = head_samples_consistent(head, x, 9, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    m1 = dropout_masks(9, 6, 0.3, generator=g, device=x.device, dtype=x.dtype)
    m2 = dropout_masks(9, 5, 0.2, generator=g, device=x.device, dtype=x.dtype)
    hidden = torch.relu((x * m1[:, None]) @ head[1].weight.T + head[1].bias)
    torch.testing.assert_close(logits, (hidden * m2[:, None]) @ head[4].weight.T + head[4].bias)
    plain = nn.Sequential(nn.Linear(6, 3)).double()
    out = head_samples_consistent(plain, x, 3, generator=None)
    assert out.shape == (3, 4, 3) and torch.equal(out[0], plain(x)) and torch.equal(out[2], plain(x))
    with pytest.raises(TypeError, match="AlphaDropout"):
        head_samples_consistent(nn.Sequential(nn.AlphaDropout(0.5), nn.Linear(6, 3)), x.float(), 2, generator=None)


@pytest.mark.parametrize("p", [0.5, 0.0, 1.0])
def test_kept_units_only_is_exact_on_a_deep_head(p):
    """Only the units the next dropout keeps are computed (the fast path): equal to the dense computation with the
    same masks, through element-wise layers of either kind, for every keep rate incl. none and all."""
    torch.manual_seed(2)
    widths = (6, 9, 7, 8)
    head = nn.Sequential(
        nn.Dropout(p), nn.Linear(6, 9), nn.Tanh(), nn.Dropout(p), nn.Linear(9, 7), nn.ReLU(), nn.Identity(),
        nn.Dropout(p), nn.Linear(7, 8), nn.Sigmoid(), nn.Dropout(p), nn.Linear(8, 3),
    ).double()  # fmt: skip
    x = torch.randn(5, 6, dtype=torch.float64)
    logits = head_samples_consistent(head, x, 11, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    masks = [dropout_masks(11, w, p, generator=g, device=x.device, dtype=x.dtype) for w in widths]
    dense = x.expand(11, *x.shape)
    for mask, index in zip(masks, (1, 4, 8, 11), strict=True):
        dense = (dense * mask[:, None]) @ head[index].weight.T + head[index].bias
        for layer in head[index + 1 :]:
            if isinstance(layer, nn.Dropout):
                break
            dense = layer(dense)
    assert logits.shape == (11, 5, 3) and logits.is_contiguous()
    torch.testing.assert_close(logits, dense, rtol=1e-12, atol=1e-12)
    # a dropout not directly followed by a Linear: its layer is computed whole
    odd = nn.Sequential(nn.Dropout(p), nn.Linear(6, 5), nn.ReLU(), nn.Dropout(p), nn.ReLU(), nn.Linear(5, 3)).double()
    logits = head_samples_consistent(odd, x, 4, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    m1, m2 = (dropout_masks(4, w, p, generator=g, device=x.device, dtype=x.dtype) for w in (6, 5))
    hidden = torch.relu(torch.relu((x * m1[:, None]) @ odd[1].weight.T + odd[1].bias) * m2[:, None])
    torch.testing.assert_close(logits, hidden @ odd[5].weight.T + odd[5].bias, rtol=1e-12, atol=1e-12)


def test_marginals_match_independent_masks_and_exact_enumeration():
    """Per-item mean and variance of the probabilities, consistent vs independent masks vs all 2^H masks."""
    H, C, B, S = 6, 3, 4, 20000
    head = _head(H, C)
    x = torch.randn(B, H, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    consistent = torch.softmax(head_samples_consistent(head, x, S, generator=torch.Generator().manual_seed(0)), -1)
    torch.manual_seed(0)
    head.train()
    with torch.no_grad():
        independent = torch.softmax(head(x.expand(S, B, H)), -1)  # nn.Dropout: a mask per (sample, item)
    # exact law: every keep-pattern of the H inputs has probability 2^-H (p = 0.5)
    patterns = torch.tensor(list(itertools.product([0.0, 2.0], repeat=H)), dtype=torch.float64)
    exact = torch.softmax((x * patterns[:, None]) @ head[1].weight.T + head[1].bias, -1)  # [2^H, B, C]
    exact_mean, exact_var = exact.mean(0), exact.var(0, unbiased=False)
    exact_m4 = (exact - exact_mean).pow(4).mean(0)
    for draws in (consistent, independent):
        se_mean = (exact_var / S).sqrt()
        z_mean = (draws.mean(0) - exact_mean) / se_mean
        se_var = ((exact_m4 - exact_var.square()) / S).sqrt()
        z_var = (draws.var(0) - exact_var) / se_var
        assert z_mean.abs().max() < 4.5, z_mean
        assert z_var.abs().max() < 4.5, z_var
    # and the two samplers against each other, with the two-sample standard error
    se = ((consistent.var(0) + independent.var(0)) / S).sqrt()
    assert ((consistent.mean(0) - independent.mean(0)) / se).abs().max() < 4.5


def test_predictive_samples_consistent_is_chunk_invariant():
    torch.manual_seed(0)
    net = mlp(5, 4, hidden=8)
    x = torch.randn(30, 5)
    whole = predictive_samples_consistent(net, x, 6, seed=2)
    parts = torch.cat([predictive_samples_consistent(net, x[i : i + 7], 6, seed=2) for i in range(0, 30, 7)], dim=1)
    assert whole.shape == (6, 30, 4)
    torch.testing.assert_close(whole, parts, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(whole.sum(-1), torch.ones(6, 30))
    assert net.training  # mode restored
    within = predictive_samples_consistent(net, x, 6, seed=2, batch_size=4)  # 8 chunks sharing one set of draws
    torch.testing.assert_close(whole, within, rtol=1e-5, atol=1e-6)
    assert predictive_samples_consistent(net, x[:0], 6, seed=2).shape == (6, 0, 4)
    cnn = gal_cnn(1, (10, 10), 3, backbone_dropout=0.25)
    with pytest.raises(ValueError, match="backbone has dropout"):
        predictive_samples_consistent(cnn, torch.zeros(2, 1, 10, 10), 3)


def test_mask_keep_rate_and_scale():
    masks = dropout_masks(4000, 50, 0.25, generator=torch.Generator().manual_seed(0), device="cpu", dtype=torch.float32)
    kept = (masks > 0).float().mean().item()
    assert abs(kept - 0.75) < 4 * np.sqrt(0.75 * 0.25 / masks.numel())
    torch.testing.assert_close(masks[masks > 0], torch.full_like(masks[masks > 0], 1 / 0.75))


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_predictive_samples_consistent_matches_dense_masks(batch_size):
    """The fast path (kept units only, unit-major activations, masked weights made once and reused by every chunk,
    class-major softmax) against the plain computation with the same masks, in float64 (rtol 1e-12)."""
    torch.manual_seed(3)
    net = mlp(5, 4, hidden=9, depth=3).double()
    x = torch.randn(20, 5, dtype=torch.float64)
    fast = predictive_samples_consistent(net, x, 7, seed=1, batch_size=batch_size)
    g = torch.Generator().manual_seed(1)
    masks = [dropout_masks(7, 9, 0.5, generator=g, device=x.device, dtype=x.dtype) for _ in range(3)]
    with torch.no_grad():
        hidden = net.features(x).expand(7, 20, 9)
        linears = [m for m in net.head if isinstance(m, nn.Linear)]
        for mask, linear in zip(masks, linears, strict=True):
            hidden = (hidden * mask[:, None]) @ linear.weight.T + linear.bias
            if linear is not linears[-1]:
                hidden = hidden.relu()
    assert fast.shape == (7, 20, 4) and fast.is_contiguous()
    torch.testing.assert_close(fast, torch.softmax(hidden, -1), rtol=1e-12, atol=1e-12)
