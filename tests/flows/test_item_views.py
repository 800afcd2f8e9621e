"""Items as people see them: PNG images at a readable size, vectors in the units of the imported file."""

import io

import matplotlib.image
import numpy as np

from data import load_dataset, open_feature_store, write_feature_store
from flows.item_views import feature_table, image_png


def test_vectors_are_shown_in_the_units_of_the_file(tmp_path):
    x_train = np.array([[1.5, 200.0], [2.5, 100.0], [3.0, 150.0]], dtype=np.float32)
    np.savez(tmp_path / "v.npz", x_train=x_train, x_test=x_train[:1], y_test=np.array([0]))
    features = open_feature_store(write_feature_store(load_dataset(str(tmp_path / "v.npz")), tmp_path / "store"))
    assert not np.allclose(features.features[1], x_train[1])  # stored standardised
    assert feature_table(features, 1) == [("x0", "2.5"), ("x1", "100")]


def test_a_zero_reads_as_zero_after_standardisation_is_undone(tmp_path):
    x_train = np.array([[0.0, 5.0], [0.0, 0.0], [13.0, 16.0]], dtype=np.float32)  # digits' pixels
    np.savez(tmp_path / "v.npz", x_train=x_train, x_test=x_train[:1], y_test=np.array([0]))
    features = open_feature_store(write_feature_store(load_dataset(str(tmp_path / "v.npz")), tmp_path / "store"))
    assert [feature_table(features, row) for row in range(3)] == [
        [("x0", "0"), ("x1", "5")],
        [("x0", "0"), ("x1", "0")],
        [("x0", "13"), ("x1", "16")],
    ]


def test_images_are_enlarged_by_whole_pixels_and_keep_their_colours():
    image_C_H_W = np.zeros((3, 2, 4), dtype=np.float32)
    image_C_H_W[0, 0, 0] = 1.0  # one red pixel
    png = matplotlib.image.imread(io.BytesIO(image_png(image_C_H_W, min_side=100)))
    assert png.shape[:2] == (50, 100)  # scale 25: 4 pixels → 100
    assert png[:25, :25, :3].tolist() == [[[1.0, 0.0, 0.0]] * 25] * 25
    assert png[25:, 25:, :3].max() == 0.0


def test_pixels_in_unit_range_are_shown_as_they_are_and_others_scaled():
    pale = np.full((3, 2, 2), 0.6, dtype=np.float32)
    pale[2] = 0.2  # a pale yellow: imports put 8-bit pixels in [0, 1]; stretching would saturate it
    shown = matplotlib.image.imread(io.BytesIO(image_png(pale, min_side=2)))
    np.testing.assert_allclose(shown[..., :3], np.broadcast_to([0.6, 0.6, 0.2], (2, 2, 3)), atol=1 / 255)
    signed = np.array([[[-1.0, 0.0], [0.5, 1.0]]], dtype=np.float32)  # another range: min–max scaled
    shown = matplotlib.image.imread(io.BytesIO(image_png(signed, min_side=2)))
    np.testing.assert_allclose(shown[..., 0], [[0.0, 0.5], [0.75, 1.0]], atol=1 / 255)
