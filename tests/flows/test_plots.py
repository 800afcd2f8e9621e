"""The queued batch's gallery: the raw pictures of image items with their captions, a table for vectors."""

import matplotlib.image
import numpy as np

from data import Dataset, open_feature_store, write_feature_store
from data.store import QueuedItem
from flows import plots
from flows.rounds import queued_items_gallery
from flows.settings import load_settings


def _queued(ids: list[str]) -> list[QueuedItem]:
    # Given out of rank order: the gallery shows them by rank.
    return [
        QueuedItem(item, rank, 0.5 - rank / 100, "bald", rank % 3, 0.9, 0.2, 0.3, round=1)
        for rank, item in reversed(list(enumerate(ids, start=1)))
    ]


def _image_store(tmp_path):
    rng = np.random.default_rng(0)
    pixels = np.zeros((8, 1, 6, 6), dtype=np.float32)
    for i in range(8):  # item i: a bright square at column i % 6, so the pictures differ
        pixels[i, 0, 1:5, i % 6] = 1.0
    dataset = Dataset(
        name="squares",
        source="squares.npz",
        x_train=pixels,
        y_train=rng.integers(0, 3, 8).astype(np.int64),
        x_test=pixels[:2],
        y_test=np.array([0, 1]),
        ids_train=np.array([f"sq-{i}" for i in range(8)]),
        ids_test=np.array(["t0", "t1"]),
        classes=("a", "b", "c"),
    )
    return open_feature_store(write_feature_store(dataset, tmp_path / "datasets" / "squares"))


def test_an_image_gallery_shows_each_queued_item_by_rank_from_the_raw_pixels(tmp_path):
    store = _image_store(tmp_path)
    settings = load_settings(None, {"workspace": str(tmp_path), "dataset": {"name": "squares"}})
    queued = _queued(["sq-3", "sq-0", "sq-5"])
    gallery = queued_items_gallery(settings, store, queued)
    assert gallery.classes == ["a", "b", "c"]
    # by rank: sq-3 first; each the raw picture of its item
    np.testing.assert_array_equal(np.stack(gallery.images), store.features[[3, 0, 5]])
    png = plots.queued_gallery(queued, gallery.classes, gallery.images, tmp_path / "g.png")
    picture = matplotlib.image.imread(png)
    assert picture.shape[:2] == (270, 1000)  # one row of five 2.0 x 2.4 inch panels and a title, at 100 dpi
    assert picture[..., :3].std() > 0.05  # drawn, not blank
    # each picture pixel for pixel below the title's 30-pixel band (no resampling), the captions above them
    mosaic = np.round(plots._mosaic(gallery.images, 1, 5) * 255)
    laid = np.round(picture[30:, :, :3] * 255)
    pictured = mosaic < 255
    assert pictured.sum() > 3 * 100 * 100
    np.testing.assert_array_equal(laid[pictured], mosaic[pictured])
    assert (laid[:36][~pictured[:36]] < 128).any()  # caption text in the tiles' top bands


def test_a_vector_gallery_is_a_table_growing_with_the_batch(tmp_path):
    settings = load_settings(None, {"workspace": str(tmp_path), "dataset": {"name": "wine"}})
    from flows.campaign_setup import ensure_feature_store

    store = ensure_feature_store(settings)
    few, many = _queued([str(i) for i in store.ids[:2]]), _queued([str(i) for i in store.ids[:12]])
    gallery = queued_items_gallery(settings, store, few)
    assert gallery.images is None
    # each item's first features by the dataset's names, in the file's units (the raw wine table's first row)
    assert gallery.vectors[0] == [
        ("alcohol", "14.23"),
        ("malic_acid", "1.71"),
        ("ash", "2.43"),
        ("alcalinity_of_ash", "15.6"),
    ]
    named, bare = (
        matplotlib.image.imread(plots.queued_gallery(few, gallery.classes, None, tmp_path / f"{v}.png", vectors=v))
        for v in (gallery.vectors, None)
    )
    assert named.shape[1] > bare.shape[1]  # a column per named feature
    heights = [
        matplotlib.image.imread(plots.queued_gallery(q, list(store.classes), None, tmp_path / f"{len(q)}.png")).shape[0]
        for q in (few, many)
    ]
    assert heights[1] > heights[0]


def _pixels(path):
    return matplotlib.image.imread(path)


def test_a_kept_figure_draws_a_rounds_plot_as_a_new_figure_would(tmp_path):
    """Each plot's figure is built once per process and given new data every round: after an earlier round's
    different data (other limits, other filled bins), it draws pixel for pixel what a newly built figure draws."""
    rng = np.random.default_rng(0)
    edges = np.linspace(0.0, 2.3, 51)
    early = {
        plots.learning_curve: ([20, 30], [0.5, 0.6], [1.2, 0.9], [None, 0.8], 0.99),
        plots.uncertainty_histogram: (rng.integers(0, 900, 50), rng.integers(0, 40, 50), edges * 0.5),
        plots.reliability_diagram: (np.linspace(0.1, 0.9, 10), np.linspace(0.0, 1.0, 10), np.arange(10) % 2),
    }
    late = {
        plots.learning_curve: (
            [20, 30, 40, 50],
            [0.5, 0.6, 0.8, 0.85],
            [1.2, 0.9, 0.5, 0.4],
            [None, 0.7, 0.95, 0.995],
            0.99,
        ),
        plots.uncertainty_histogram: (rng.integers(0, 90, 50), rng.integers(0, 4000, 50), edges),
        plots.reliability_diagram: (np.linspace(0.05, 0.95, 10), np.linspace(0.2, 0.9, 10), np.arange(10) // 3),
    }
    for draw in early:
        plots._figures.clear()
        fresh = _pixels(draw(*late[draw], tmp_path / "fresh.png"))
        draw(*early[draw], tmp_path / "early.png")
        kept = _pixels(draw(*late[draw], tmp_path / "kept.png"))
        assert fresh[..., :3].std() > 0.05  # drawn, not blank
        assert not np.array_equal(_pixels(tmp_path / "early.png"), kept)
        np.testing.assert_array_equal(kept, fresh, err_msg=draw.__name__)
        plots._figures.clear()
        plots.warm_up()  # the CLI's, while Prefect's server starts: figures built and drawn before any data
        warmed = _pixels(draw(*late[draw], tmp_path / "warmed.png"))
        np.testing.assert_array_equal(warmed, fresh, err_msg=f"{draw.__name__} after warm_up")
