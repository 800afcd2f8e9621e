"""``softmax_over_classes``: torch's softmax over the last dimension, whichever layout computes it."""

from __future__ import annotations

import pytest
import torch

from bayes_models.softmax import VECTORISED_CLASSES, softmax_over_classes


@pytest.mark.parametrize("shape", [(7,), (5, 3), (4, 9, 2), (3, 11, 10), (2, 6, VECTORISED_CLASSES), (2, 5, 40)])
def test_equals_torch_softmax_over_the_last_dimension(shape):
    logits = 6 * torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(len(shape)))
    probs = softmax_over_classes(logits)
    assert probs.shape == logits.shape and probs.is_contiguous()
    torch.testing.assert_close(probs, torch.softmax(logits, dim=-1), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(probs.sum(-1), torch.ones(shape[:-1], dtype=torch.float64))


def test_views_and_extreme_logits():
    """A transposed view (as the MC-dropout head returns) and logits that would overflow a naive exp."""
    class_major = torch.randn(3, 10, 8, generator=torch.Generator().manual_seed(0)).double()
    view = class_major.transpose(1, 2)  # [S, B, C] over [S, C, B] memory
    torch.testing.assert_close(softmax_over_classes(view), torch.softmax(view, -1), rtol=1e-12, atol=1e-15)
    huge = torch.tensor([[[1000.0, 0.0, -1000.0], [-5e4, -5e4, 7e4]]])
    assert torch.equal(softmax_over_classes(huge), torch.softmax(huge, -1))
