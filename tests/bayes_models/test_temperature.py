"""Temperature scaling: recovers a known over-confidence, lowers validation NLL, keeps the argmax."""

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bayes_models.metrics import nll
from bayes_models.temperature import TemperatureScaling

SETTINGS = settings(derandomize=True, deadline=None, max_examples=60)


def over_confident(n: int, seed: int, factor: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``factor`` × the true ones, with labels drawn from the true softmax."""
    g = torch.Generator().manual_seed(seed)
    true = 1.5 * torch.randn(n, 4, generator=g)
    y = torch.multinomial(torch.softmax(true, -1), 1, generator=g).squeeze(1)
    return factor * true, y


def test_recovers_temperature_and_lowers_validation_nll():
    logits, y = over_confident(3000, seed=0)
    scaler = TemperatureScaling().fit(logits, y)
    assert 3.4 < scaler.temperature < 4.6  # the true over-confidence factor is 4
    calibrated = scaler.transform(logits)
    assert calibrated.dtype == logits.dtype and calibrated.shape == logits.shape
    assert nll(calibrated, y) < nll(torch.softmax(logits, -1), y) - 0.5
    assert scaler.nll(logits, y) == pytest.approx(nll(calibrated.double(), y), abs=1e-6)
    # held-out data from the same model: the fitted T also helps there
    test_logits, test_y = over_confident(3000, seed=1)
    assert nll(scaler.transform(test_logits), test_y) < nll(torch.softmax(test_logits, -1), test_y)
    # T is the NLL minimiser: nudging it either way does not help
    for factor in (0.95, 1.05):
        other = TemperatureScaling()
        other.temperature = scaler.temperature * factor
        assert other.nll(logits, y) > scaler.nll(logits, y)


def test_probabilities_input_matches_logits_input():
    logits, y = over_confident(1000, seed=2)
    probs = torch.softmax(logits.double(), -1)
    from_logits = TemperatureScaling().fit(logits.double(), y)
    from_probs = TemperatureScaling().fit(probs, y, kind="probs")
    assert from_probs.temperature == pytest.approx(from_logits.temperature, rel=1e-4)
    torch.testing.assert_close(from_probs.transform(probs, kind="probs"), from_probs.transform(logits.double()))
    samples = torch.softmax(torch.randn(5, 7, 4, dtype=torch.float64), -1)  # any leading shape
    assert from_probs.transform(samples, kind="probs").shape == (5, 7, 4)
    zero = torch.tensor([[0.0, 0.3, 0.7]])
    assert from_probs.transform(zero, kind="probs")[0, 0] == 0.0


def test_under_confident_model_is_sharpened_and_separable_data_clipped():
    logits, y = over_confident(2000, seed=3, factor=0.25)
    assert TemperatureScaling().fit(logits, y).temperature < 0.5
    # perfectly separated validation data: the NLL falls towards 0 as T → 0 and the fit stops once it is negligible
    separable = torch.tensor([[5.0, -5.0], [-5.0, 5.0]])
    scaler = TemperatureScaling().fit(separable, torch.tensor([0, 1]))
    assert scaler.min_temperature <= scaler.temperature < 1.0
    assert scaler.nll(separable, torch.tensor([0, 1])) < 1e-6


def test_bad_inputs_rejected_and_state_round_trip():
    with pytest.raises(ValueError, match="kind"):
        TemperatureScaling().fit(torch.zeros(2, 2), torch.zeros(2), kind="log")
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        TemperatureScaling().fit(torch.zeros(2, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="at least one"):
        TemperatureScaling().fit(torch.zeros(0, 2), torch.zeros(0))
    scaler = TemperatureScaling().fit(*over_confident(200, seed=4))
    loaded = TemperatureScaling()
    loaded.load_state_dict(scaler.state_dict())
    assert loaded.temperature == scaler.temperature


def with_margin(z: np.ndarray, temperature: float) -> np.ndarray:
    """``z`` with each row's (first) top logit raised so that the top two differ by more than float32 rounding can
    blur after dividing by T: the premise of "argmax never changes" (exact ties have no argmax to keep)."""
    z = z.astype(np.float64)
    rows, top = np.arange(len(z)), z.argmax(-1)
    z[rows, top] += 1e-3 * max(temperature, 1.0) * np.maximum(1.0, np.abs(z[rows, top]))
    return z.astype(np.float32)


LOGITS = hnp.arrays(
    np.float32, st.tuples(st.integers(1, 20), st.integers(2, 6)), elements=st.floats(-1e4, 1e4, width=32)
)


@SETTINGS
@given(z=LOGITS, temperature=st.floats(1e-2, 1e2))
def test_never_changes_argmax(z, temperature):
    scaler = TemperatureScaling()
    scaler.temperature = temperature
    logits = torch.from_numpy(with_margin(z, temperature))
    assert torch.equal(scaler.transform(logits).argmax(-1), logits.argmax(-1))
    probs = torch.softmax(logits.double(), -1)
    assert torch.equal(scaler.transform(probs, kind="probs").argmax(-1), logits.argmax(-1))


@settings(derandomize=True, deadline=None, max_examples=30)
@given(
    z=hnp.arrays(np.float32, st.tuples(st.integers(2, 30), st.just(3)), elements=st.floats(-20, 20, width=32)),
    labels=st.lists(st.integers(0, 2), min_size=30, max_size=30),
)
def test_fitted_temperature_never_changes_argmax(z, labels):
    scaler = TemperatureScaling().fit(torch.from_numpy(z), torch.tensor(labels[: len(z)]))
    assert scaler.min_temperature <= scaler.temperature <= scaler.max_temperature
    logits = torch.from_numpy(with_margin(z, scaler.temperature))
    assert torch.equal(scaler.transform(logits).argmax(-1), logits.argmax(-1))
