"""A table's text column: kept as text, featurised by a stateless pipeline, stored and appended to unchanged."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from data import DatasetError, load_dataset, open_feature_store, write_feature_store
from data.feature_store import FeatureStoreError, append_rows
from data.text import TextFeatures

TEXTS = ["the striker scored a late goal", "simmer the onions in butter", "", "référé: carton rouge <b>!</b>"]


def _table(path, texts=TEXTS):
    frame = pd.DataFrame(
        {"id": [f"t{i}" for i in range(len(texts))], "stars": np.arange(len(texts)) + 1.0, "body": texts}
    )
    frame["label"] = ["sport", "food"] * (len(texts) // 2)
    frame.loc[1, "label"] = None  # one unlabeled row
    frame.to_csv(path, index=False) if path.suffix == ".csv" else frame.to_parquet(path)
    return path


def _load(path, **kwargs):
    return load_dataset(
        path, label_column="label", id_column="id", text_column="body", text_dim=16, allow_empty_test=True,
        test_fraction=0.0, **kwargs,
    )  # fmt: skip


def test_each_row_is_featurised_from_its_own_text_alone():
    text = TextFeatures("body", dim=16)
    together = text.transform(TEXTS)
    alone = np.concatenate([text.transform([t]) for t in reversed(TEXTS)])[::-1]
    np.testing.assert_array_equal(together, alone)  # same numbers whatever the other rows
    assert together.shape == (4, 16) and not together[2].any()  # the empty text has no words
    assert np.abs(together[[0, 1, 3]]).sum(axis=1).min() > 0
    assert (
        TextFeatures("body", dim=16).fingerprint == text.fingerprint != TextFeatures("body", dim=16, seed=1).fingerprint
    )


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_text_column_is_kept_as_text_and_becomes_the_last_features(tmp_path, suffix):
    d = _load(_table(tmp_path / f"reviews{suffix}"))
    assert d.feature_shape == (17,) and d.names[0] == "stars" and d.names[1:3] == ("body:rp0", "body:rp1")
    assert d.texts_train.tolist() == TEXTS  # a missing cell is the empty text
    raw = np.concatenate([np.arange(1.0, 5.0)[:, None], TextFeatures("body", dim=16).transform(TEXTS)], axis=1)
    mean, std = d.standardization
    np.testing.assert_allclose(std, np.where(raw.std(0) == 0, 1, raw.std(0)))  # the train rows' statistics
    np.testing.assert_allclose(d.x_train, (raw - mean) / std, atol=1e-5)


def test_text_column_errors_name_the_file_and_the_columns(tmp_path):
    path = _table(tmp_path / "reviews.csv")
    with pytest.raises(
        DatasetError,
        match=r"reviews\.csv: text column 'text' not found; columns are \['id', 'stars', 'body', 'label'\]",
    ):
        load_dataset(path, label_column="label", text_column="text")
    with pytest.raises(DatasetError, match="text column 'label' is also the label, id or split column"):
        load_dataset(path, label_column="label", text_column="label")
    with pytest.raises(DatasetError, match="apply to CSV and Parquet tables only"):
        load_dataset("iris", text_column="body")
    frame = pd.DataFrame({"id": ["a", "b"], "body": [["two", "texts"], ["one"]], "label": ["x", "y"]})
    frame.to_parquet(tmp_path / "lists.parquet")
    with pytest.raises(DatasetError, match=r"lists\.parquet: text column 'body' in row 0 \(id 'a'\) holds"):
        load_dataset(tmp_path / "lists.parquet", label_column="label", id_column="id", text_column="body")


def test_texts_are_stored_with_the_features_and_appended_rows_keep_them(tmp_path):
    d = _load(_table(tmp_path / "reviews.csv"))
    directory = write_feature_store(d, tmp_path / "store")
    store = open_feature_store(directory)
    assert [store.texts[i] for i in range(4)] == TEXTS and store.text_features == d.text
    assert store.meta["text"]["fingerprint"] == d.text.fingerprint
    assert store.to_dataset().texts_train.tolist() == TEXTS
    store.verify()

    later = _load(_table(tmp_path / "later.csv", ["a new goal", "\u00e9t\u00e9 <script>x</script>"]),
                  standardization=store.standardization)  # fmt: skip
    rows = append_rows(directory, later.x_train, later.y_train, ["n0", "n1"], later.texts_train)
    store = open_feature_store(directory)
    assert rows.tolist() == [4, 5] and store.texts[5] == "\u00e9t\u00e9 <script>x</script>"
    assert store.texts.decode(range(6)).tolist() == [*TEXTS, "a new goal", "\u00e9t\u00e9 <script>x</script>"]
    store.verify()
    with pytest.raises(FeatureStoreError, match="the store has text column; rows to append need texts"):
        append_rows(directory, later.x_train[:1], later.y_train[:1], ["n2"])

    (directory / "text_offsets.npy").unlink()
    with pytest.raises(FeatureStoreError, match=r"text_offsets\.npy: missing from the feature store"):
        open_feature_store(directory)
    assert json.loads((directory / "meta.json").read_text())["text"]["dim"] == 16
