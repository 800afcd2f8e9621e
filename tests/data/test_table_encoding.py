"""Tables as people export them: category columns one-hot, missing numbers imputed and flagged, both recorded."""

import numpy as np
import pandas as pd
import pytest

from data import DatasetError, load_dataset, open_feature_store, write_feature_store
from data.table_encoding import MAX_CATEGORIES
from flows.item_views import feature_table

PENGUINS = """id,island,bill,sex,species,split
p0,Biscoe,39.1,male,Adelie,train
p1,Dream,,female,Adelie,train
p2,Biscoe,46.5,,Gentoo,train
p3,Torgersen,50.0,male,Gentoo,train
p4,Dream,41.0,female,,train
p5,Biscoe,45.0,female,Gentoo,test
p6,Dream,,male,Adelie,test
"""


def _load_later(path, text, first):
    """Rows arriving later (``text`` written to ``path``), read as ingest reads them: all to the pool, in the first
    import's encoding and standardisation."""
    path.write_text(text)
    return load_dataset(
        path,
        label_column="species",
        id_column="id",
        test_fraction=0.0,
        allow_empty_test=True,
        standardization=first.standardization,
        encoding=first.encoding,
    )


@pytest.fixture()
def penguins(tmp_path):
    path = tmp_path / "penguins.csv"
    path.write_text(PENGUINS)
    return path


def test_categories_become_one_hot_features_and_missing_numbers_a_flag(penguins):
    d = load_dataset(penguins, label_column="species", id_column="id")
    assert d.feature_names == (
        "island=Biscoe",
        "island=Dream",
        "island=Torgersen",
        "bill",
        "bill missing",
        "sex=female",
        "sex=male",
    )
    mean, std = d.standardization
    x = np.concatenate([d.x_train, d.x_test]) * std + mean  # back in file units (float32 rounding: atol)
    # Reference, by hand from the file: the missing bills (p1, p6) take the train rows' mean of the others.
    train_bill_mean = np.mean([39.1, 46.5, 50.0, 41.0])
    expected = [
        [1, 0, 0, 39.1, 0, 0, 1],
        [0, 1, 0, train_bill_mean, 1, 1, 0],
        [1, 0, 0, 46.5, 0, 0, 0],  # sex missing: no category
        [0, 0, 1, 50.0, 0, 0, 1],
        [0, 1, 0, 41.0, 0, 1, 0],
        [1, 0, 0, 45.0, 0, 1, 0],
        [0, 1, 0, train_bill_mean, 1, 0, 1],
    ]
    np.testing.assert_allclose(x, expected, atol=1e-5)
    assert d.encoding.categories == {"island": ("Biscoe", "Dream", "Torgersen"), "sex": ("female", "male")}
    assert d.encoding.flagged == ("bill",)


def test_people_see_the_files_values_and_rows_added_later_are_encoded_alike(penguins, tmp_path):
    d = load_dataset(penguins, label_column="species", id_column="id")
    store = open_feature_store(write_feature_store(d, tmp_path / "store"))
    assert store.table_encoding == d.encoding  # recorded with the features
    rows = {item: int(store.row_of(item)) for item in ("p1", "p2")}
    assert feature_table(store, rows["p1"]) == [
        ("island", "Dream"),
        ("bill", "missing"),
        ("sex", "female"),
    ]
    assert feature_table(store, rows["p2"]) == [("island", "Biscoe"), ("bill", "46.5"), ("sex", "missing")]

    later = "sex,bill,island,species,id\nmale,,Biscoe,,q0\nfemale,44.0,Biscoe,Gentoo,q1\n"  # columns reordered
    new = _load_later(tmp_path / "later.csv", later, store.to_dataset())  # the encoding as the store keeps it
    assert new.feature_names == d.feature_names
    mean, std = d.standardization
    bill_mean = np.mean([39.1, 46.5, 50.0, 41.0])  # the first import's train mean, recorded with it
    expected = [[1, 0, 0, bill_mean, 1, 0, 1], [1, 0, 0, 44.0, 0, 1, 0]]
    np.testing.assert_allclose(new.x_train * std + mean, expected, atol=1e-5)


def test_rows_added_later_that_the_encoding_has_no_place_for_are_refused(penguins, tmp_path):
    d = load_dataset(penguins, label_column="species", id_column="id")
    later = tmp_path / "later.csv"

    def load(text):
        return _load_later(later, text, d)

    with pytest.raises(DatasetError, match=r"row 0 \(id 'q0'\), column 'island': 'Mars' is not one of the values"):
        load("id,island,bill,sex,species\nq0,Mars,40,male,\n")
    with pytest.raises(DatasetError, match=r"feature column 'sex' is missing; they are \['island', 'bill', 'sex'\]"):
        load("id,island,bill,species\nq0,Dream,40,\n")
    with pytest.raises(DatasetError, match=r"feature column 'mass' is not one of the campaign's"):
        load("id,island,bill,sex,mass,species\nq0,Dream,40,male,3.1,\n")

    no_gaps = tmp_path / "no_gaps.csv"  # a campaign whose bills were all measured
    no_gaps.write_text("id,bill,species\na,1,x\nb,2,y\nc,3,x\nd,4,y\n")
    complete = load_dataset(no_gaps, label_column="species", id_column="id")
    with pytest.raises(DatasetError, match=r"row 0 \(id 'e'\), column 'bill' is empty; the campaign's column had no"):
        _load_later(later, "id,bill,species\ne,,\n", complete)


def test_ids_and_free_text_are_not_taken_for_categories(tmp_path):
    path = tmp_path / "names.csv"
    frame = pd.DataFrame({"name": [f"person {i}" for i in range(60)], "x": range(60), "y": ["a", "b"] * 30})
    frame.to_csv(path, index=False)
    with pytest.raises(
        DatasetError, match=rf"column 'name' has 60 distinct values.*at most {MAX_CATEGORIES}.*--id-column"
    ):
        load_dataset(path, label_column="y")
    assert load_dataset(path, label_column="y", id_column="name").feature_names == ("x",)


def test_a_number_column_with_blank_cells_is_numbers_with_gaps(tmp_path):
    """A cell of spaces is read as text by pandas, which made the column text (found by benchmarks/fuzz.py)."""
    path = tmp_path / "spaces.csv"
    path.write_text('x0,label\n" ",cat\n0.5,cat\n1.5,dog\n2.5,dog\n')
    d = load_dataset(path, label_column="label", test_fraction=0.0, allow_empty_test=True)
    assert d.feature_names == ("x0", "x0 missing") and d.encoding.flagged == ("x0",)
    mean, std = d.standardization
    np.testing.assert_allclose(d.x_train * std + mean, [[1.5, 1], [0.5, 0], [1.5, 0], [2.5, 0]], atol=1e-6)


def test_a_parquet_feature_cell_holding_a_list_is_refused_by_row(tmp_path):
    path = tmp_path / "lists.parquet"
    pd.DataFrame({"x": [[1.0], [2.0], [3.0, 4.0]], "y": ["a", "a", "b"]}).to_parquet(path)
    with pytest.raises(DatasetError, match=r"feature column 'x' in row 0 \(id 'row-0'\) holds \[1\.0\], expected one"):
        load_dataset(path, label_column="y")
