"""A campaign on a CSV of free text: a real round through the CLI, the text on the page (escaped), in the Label
Studio export and the gallery, and rows ingested later featurised exactly as the same text was at first."""

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from data import open_feature_store
from data.store import LabelStore
from flows.annotate import create_app
from flows.campaign_setup import feature_store_dir
from flows.ingest import ingest
from flows.queue_io import export_queue, read_answers
from flows.rounds import queued_items_gallery
from flows.settings import load_settings

WORDS = {
    "sport": ["goal", "striker", "referee", "match", "league", "penalty", "keeper", "season", "coach", "stadium"],
    "food": ["onion", "butter", "simmer", "recipe", "oven", "garlic", "flour", "sauce", "pepper", "roast"],
}
SCRIPT_TEXT = '<script>alert("text")</script> a goal & a penalty'


def _cli(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "flows", *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _reviews(n: int = 60, seed: int = 0) -> pd.DataFrame:
    """Two topics of ten words each; the last 12 rows unlabeled (the pool), one of them HTML."""
    rng = np.random.default_rng(seed)
    topics = np.array(["sport", "food"])[np.arange(n) % 2]
    texts = [" ".join(rng.choice(WORDS[t], size=rng.integers(4, 9))) for t in topics]
    texts[n - 1] = SCRIPT_TEXT
    labels = topics.astype(object)
    labels[n - 12 :] = None
    return pd.DataFrame(
        {"id": [f"r{i:02d}" for i in range(n)], "body": texts, "stars": rng.integers(1, 6, n), "topic": labels}
    )


@pytest.fixture(scope="module")
def text_campaign(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    frame = _reviews()
    frame.to_csv(root / "reviews.csv", index=False)
    params = root / "params.yaml"
    params.write_text("model:\n  steps: 30\nacquisition:\n  samples: 4\nselection:\n  candidates: []\n")
    workspace = root / "w"
    columns = ["--label-column", "topic", "--id-column", "id", "--text-column", "body"]
    _cli("round", "--dataset", str(root / "reviews.csv"), *columns, "--k", "12", "--workspace", str(workspace),
             "--params", str(params))  # fmt: skip
    settings = load_settings(
        None,
        {
            "workspace": str(workspace),
            "dataset": {"name": str(root / "reviews.csv"), "label_column": "topic", "id_column": "id",
                        "text_column": "body"},
        },
    )  # fmt: skip
    return settings, frame


def test_a_round_queues_text_items_shown_as_escaped_text(text_campaign):
    settings, frame = text_campaign
    store = LabelStore.for_workspace(settings.workspace)
    pending = store.queued("reviews", status="pending")
    assert len(pending) == 12 and {q.acquisition for q in pending} == {"powerbald"}  # a trained model chose them
    features = open_feature_store(feature_store_dir(settings, store.dataset_of("reviews")))
    assert features.feature_shape == (257,) and features.meta["text"]["column"] == "body"

    offset = [q.item_id for q in pending].index("r59")
    with TestClient(create_app(store, "reviews", features), base_url="http://127.0.0.1") as client:
        item = client.get("/item", params={"offset": offset}).text
        other = client.get("/item", params={"offset": (offset + 1) % 12}).text
    assert "&lt;script&gt;alert(&#34;text&#34;)&lt;/script&gt; a goal &amp; a penalty" in item
    assert "<script" not in item
    assert f"<dt>stars</dt><dd>{frame.stars[59]}</dd>" in item and "body:rp" not in item  # projections not shown
    other_id = pending[(offset + 1) % 12].item_id
    assert frame.body[int(other_id[1:])] in other

    tasks = json.loads(export_queue(pending, store.classes("reviews"), features, "label-studio"))
    task = tasks[offset]
    assert task["data"]["item_id"] == "r59" and task["data"]["text"] == SCRIPT_TEXT
    assert task["data"]["features"] == f"stars={frame.stars[59]}"

    gallery = queued_items_gallery(settings, features, pending)
    by_rank = sorted(pending, key=lambda q: q.rank)
    assert gallery.texts == [frame.body[int(q.item_id[1:])][:60] for q in by_rank]  # short texts: all of it
    assert gallery.vectors[0] == [("stars", str(frame.stars[int(by_rank[0].item_id[1:])]))]


def test_a_csv_export_carries_the_text_and_comes_back_filled_in(text_campaign, tmp_path):
    """A CSV for a spreadsheet: each item's text (quoted as CSV needs: quotes, ``&``, ``<``) and its other columns as
    ``name=value``; filled in and read back, each answer is matched to its item by id."""
    settings, frame = text_campaign
    store = LabelStore.for_workspace(settings.workspace)
    pending, classes = store.queued("reviews", status="pending"), store.classes("reviews")
    features = open_feature_store(feature_store_dir(settings, store.dataset_of("reviews")))
    rows = list(csv.DictReader(io.StringIO(export_queue(pending, classes, features, "csv"))))
    assert [row["item_id"] for row in rows] == [q.item_id for q in pending]
    assert [(row["text"], row["features"]) for row in rows] == [
        (frame.body[int(q.item_id[1:])], f"stars={frame.stars[int(q.item_id[1:])]}") for q in pending
    ]
    assert SCRIPT_TEXT in [row["text"] for row in rows]

    truth = {row["item_id"]: ("sport", "food")[int(row["item_id"][1:]) % 2] for row in rows}  # _reviews' topics
    filled = tmp_path / "filled.csv"
    with filled.open("w", newline="") as file:
        writer = csv.DictWriter(file, rows[0].keys())
        writer.writeheader()
        writer.writerows({**row, "label": truth[row["item_id"]]} for row in reversed(rows))
    answers = read_answers(filled, classes, None, "me")
    assert [(a.item_id, a.label, a.problem) for a in answers] == [
        (row["item_id"], classes.index(truth[row["item_id"]]), None) for row in reversed(rows)
    ]


def test_rows_ingested_later_are_featurised_as_the_same_text_was_at_first(text_campaign, tmp_path):
    settings, frame = text_campaign
    first = frame.iloc[[0, 1, 59]]  # two labelled rows and the pool's HTML one
    later = first.assign(id=["n0", "n1", "n2"], topic=["sport", "food", "sport"])
    later.to_csv(tmp_path / "later.csv", index=False)
    report = ingest(settings, tmp_path / "later.csv", campaign="reviews")
    assert (report.n_pool, report.n_labeled, report.n_appended) == (3, 3, 3)

    features = open_feature_store(feature_store_dir(settings))
    old, new = features.row_of(["r00", "r01", "r59"]), features.row_of(["later/n0", "later/n1", "later/n2"])
    np.testing.assert_array_equal(features.features[new], features.features[old])  # bit for bit
    assert [features.texts[int(r)] for r in new] == first.body.tolist()
    features.verify()
