"""Image campaigns train on the pool's spectral embedding: a real simulated campaign and a real ingest append."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from data.feature_store import append_rows
from flows.campaign_setup import ensure_feature_store, model_feature_store
from flows.settings import load_settings
from representation import SpectralConfig, SpectralEmbedding


@pytest.fixture(scope="module")
def prefect_no_heartbeat():
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


@pytest.fixture
def digit_images(tmp_path):
    """scikit-learn's digits as an image .npz (8×8, uint8-like 0..16), 1,500 train and 297 test items."""
    digits = load_digits()
    images, y = digits.images.astype(np.uint8), digits.target.astype(np.int64)
    path = tmp_path / "digit_images.npz"
    np.savez(path, x_train=images[:1500], y_train=y[:1500], x_test=images[1500:], y_test=y[1500:])
    return path


def _settings(workspace, dataset, **representation):
    return load_settings(
        None,
        {
            "workspace": workspace,
            "dataset": {"name": str(dataset)},
            "campaign": {"rounds": 2, "k": 10, "initial": 20},
            "model": {"steps": 200},
            "selection": {"candidates": []},
            "acquisition": {"samples": 8},
            "representation": {"dim": 12, **representation},
        },
    )


def test_auto_uses_the_embedding_for_images_and_it_beats_raw_pixels(tmp_path, digit_images, prefect_no_heartbeat):
    from flows.rounds import simulate_campaign

    settings = _settings(tmp_path / "w", digit_images)
    embedded = simulate_campaign(settings)
    features, raw = model_feature_store(settings), ensure_feature_store(settings)
    assert raw.feature_shape == (1, 8, 8) and features.feature_shape == (12,)
    assert features.directory != raw.directory and features.directory.parent == raw.directory.parent
    np.testing.assert_array_equal(features.ids, raw.ids)
    np.testing.assert_array_equal(features.targets, raw.targets)
    assert [r["n_labeled"] for r in embedded] == [20, 30]
    pixels = simulate_campaign(_settings(tmp_path / "p", digit_images, name="none"))
    accuracy = {name: [r["test_accuracy"] for r in run] for name, run in [("embedded", embedded), ("pixels", pixels)]}
    print(accuracy)
    assert all(e > p + 0.05 for e, p in zip(accuracy["embedded"], accuracy["pixels"], strict=True)), accuracy


def test_none_and_small_pools_keep_the_imported_features(tmp_path, digit_images):
    assert model_feature_store(_settings(tmp_path / "a", digit_images, name="none")).feature_shape == (1, 8, 8)
    assert model_feature_store(_settings(tmp_path / "b", digit_images, auto_min_pool=5000)).feature_shape == (1, 8, 8)
    assert model_feature_store(_settings(tmp_path / "c", "iris", name="auto")).feature_shape == (4,)


def test_ingested_rows_are_mapped_by_the_fitted_embedding(tmp_path, digit_images):
    settings = _settings(tmp_path / "w", digit_images)
    first = model_feature_store(settings)
    before = np.array(first.features)
    raw = ensure_feature_store(settings)
    new_x = np.asarray(raw.features[1500:1503]) + 0.5
    append_rows(raw.directory, new_x, np.array([-1, 3, -1]), ["new-0", "new-1", "new-2"])
    extended = model_feature_store(settings)
    assert len(extended.ids) == len(first.ids) + 3
    assert list(extended.ids[-3:]) == ["new-0", "new-1", "new-2"]
    assert list(extended.targets[-3:]) == [-1, 3, -1]
    state = np.load(first.directory.with_name(f"{first.directory.name}.npz"))
    embedding = SpectralEmbedding(SpectralConfig(dim=12))
    embedding.load_state_dict(state)
    np.testing.assert_allclose(np.asarray(extended.features[-3:]), embedding.transform(new_x), atol=1e-6)
    # The fitted rows are left as they were (the models' earlier inputs keep their meaning).
    np.testing.assert_array_equal(np.asarray(extended.features[:-3]), before)
