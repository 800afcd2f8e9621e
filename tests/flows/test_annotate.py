"""The labeling page over HTTP against a real campaign: rendering, answers stored at once, undo, tokens, escaping."""

import base64
import html
import json
import re
import struct

import httpx
import pytest
from fastapi.testclient import TestClient

from data import open_feature_store
from data.store import LabelStore
from flows.annotate import create_app, letter_keys

CAMPAIGN = "digits8"


def _app(workspace, **kwargs):
    store = LabelStore.for_workspace(workspace)
    return create_app(store, CAMPAIGN, open_feature_store(workspace / "datasets" / "digits8"), **kwargs)


@pytest.fixture()
def client(queued_workspace):
    with TestClient(_app(queued_workspace), base_url="http://127.0.0.1") as c:
        yield c


def _pending(workspace):
    return [q for q in LabelStore.for_workspace(workspace).queued(CAMPAIGN) if q.status == "pending"]


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_page_shows_the_first_pending_item_with_prediction_score_image_and_progress(client, queued_workspace):
    first = _pending(queued_workspace)[0]
    assert first.acquisition == "bald" and first.predicted is not None
    assert 0.1 <= first.probability <= 1 and first.aleatoric >= 0
    assert first.epistemic == pytest.approx(first.score, abs=1e-9)  # BALD's score is the epistemic part
    page = client.get("/")
    assert page.status_code == 200
    assert f'data-item-id="{html.escape(first.item_id)}"' in page.text
    assert f"{first.score:.4f}" in page.text and "0 of 8</strong> this round (round 1)" in page.text
    assert f'class="probability">{first.probability:.3f}<' in page.text
    assert f'class="epistemic">{first.epistemic:.4f}<' in page.text
    assert f'class="aleatoric">{first.aleatoric:.4f}<' in page.text
    # the score is the acquisition's; the predictive entropy is what the two parts add up to (shown as such)
    assert f'class="entropy">{first.epistemic + first.aleatoric:.4f}</span> nats' in page.text
    predicted = re.search(r'class="predicted">([^<]+)<', page.text).group(1)
    assert predicted == LabelStore.for_workspace(queued_workspace).classes(CAMPAIGN)[first.predicted]
    assert page.text.count("data-label=") == 10 and 'data-action="skip"' in page.text
    png = re.search(r'src="data:image/png;base64,([^"]+)"', page.text).group(1)
    assert _png_size(base64.b64decode(png)) == (224, 224)  # 8×8 pixels, each a 28×28 square


def test_answers_skips_and_undos_are_stored_at_once(client, queued_workspace):
    first, second = _pending(queued_workspace)[:2]
    store = LabelStore.for_workspace(queued_workspace)  # another connection sees each write at once
    n_imported = len(store.current_labels(CAMPAIGN))
    answer = client.post("/api/labels", json={"item_id": first.item_id, "label": 3, "annotator": "ada"})
    assert answer.status_code == 200 and answer.json()["label"] == "3"
    assert store.current_labels(CAMPAIGN)[first.item_id] == 3
    assert client.post("/api/skip", json={"item_id": second.item_id}).status_code == 200
    assert second.item_id not in {q.item_id for q in _pending(queued_workspace)}
    assert "2 of 8</strong> this round" in client.get("/item").text

    undo = client.post("/api/undo", json={"item_id": first.item_id, "action": "label", "annotator": "ada"})
    assert undo.status_code == 200 and undo.json()["withdrawn"] == "3"
    assert first.item_id not in store.current_labels(CAMPAIGN) and len(store.current_labels(CAMPAIGN)) == n_imported
    assert store.label_history(CAMPAIGN, first.item_id) == [(3, "ada", 1)]  # withdrawn, not erased
    assert client.post("/api/undo", json={"item_id": second.item_id, "action": "skip", "annotator": "ada"}).is_success
    assert [q.item_id for q in _pending(queued_workspace)][:2] == [first.item_id, second.item_id]


def test_bad_answers_are_refused_with_the_item_and_the_reason(client, queued_workspace):
    first = _pending(queued_workspace)[0]
    bad_class = client.post("/api/labels", json={"item_id": first.item_id, "label": 10, "annotator": "ada"})
    assert bad_class.status_code == 422 and first.item_id in bad_class.json()["detail"]
    assert "unknown class 10" in bad_class.json()["detail"]
    unknown = client.post("/api/labels", json={"item_id": "nope", "label": 1, "annotator": "ada"})
    assert unknown.status_code == 422 and "'nope'" in unknown.json()["detail"]
    no_name = client.post("/api/labels", json={"item_id": first.item_id, "label": 1, "annotator": ""})
    assert no_name.status_code == 422
    assert client.post("/api/skip", json={"item_id": "img-000"}).status_code == 409  # a seed item, never queued
    assert client.post("/api/skip", json={"item_id": first.item_id}).is_success
    skipped = client.post("/api/labels", json={"item_id": first.item_id, "label": 1, "annotator": "ada"})
    assert skipped.status_code == 422 and f"item {first.item_id!r}: item was skipped" in skipped.json()["detail"]
    assert first.item_id not in [q["item_id"] for q in client.get("/api/queue").json()["pending"]]
    assert client.post("/api/undo", json={"item_id": first.item_id, "action": "skip", "annotator": "ada"}).is_success
    nothing = client.post("/api/undo", json={"item_id": first.item_id, "action": "label", "annotator": "bob"})
    assert nothing.status_code == 409 and "no answer by 'bob'" in nothing.json()["detail"]
    assert len(_pending(queued_workspace)) == 8


def test_item_ids_are_escaped(client, queued_workspace, script_id):
    for q in _pending(queued_workspace):
        if q.item_id == script_id:
            break
        client.post("/api/skip", json={"item_id": q.item_id})
    for text in (client.get("/").text, client.get("/item").text):
        assert script_id not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_every_request_without_the_token_is_refused(queued_workspace):
    first = _pending(queued_workspace)[0]
    with TestClient(_app(queued_workspace, token="s3cret", host="0.0.0.0"), base_url="http://10.1.2.3") as c:
        answer = {"item_id": first.item_id, "label": 1, "annotator": "ada"}
        for response in (
            c.get("/"),
            c.get("/item"),
            c.get("/api/queue"),
            c.get("/?token=wrong"),
            c.post("/api/labels", json=answer),
            c.post("/api/skip", json={"item_id": first.item_id}, headers={"Authorization": "Bearer wrong"}),
        ):
            assert response.status_code == 401, response.request.url
        assert len(_pending(queued_workspace)) == 8
        assert c.get("/?token=s3cret").status_code == 200
        assert 'data-token="s3cret"' in c.get("/?token=s3cret").text  # the page's own requests carry it
        assert c.post("/api/labels", json=answer, headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_without_a_token_only_loopback_names_are_served(queued_workspace):
    with TestClient(_app(queued_workspace), base_url="http://attacker.example") as c:
        assert c.get("/").status_code == 400  # a rebound DNS name reaches 127.0.0.1 but is not served
    with TestClient(_app(queued_workspace), base_url="http://localhost") as c:
        assert c.get("/api/queue").json()["progress"] == {"round": 1, "done": 0, "total": 8}


def test_the_command_beyond_loopback_prints_a_token_and_refuses_requests_without_it(queued_workspace, serve_annotate):
    url, port = serve_annotate(queued_workspace, "--host", "0.0.0.0")
    token = re.search(r"\?token=(\S+)", url).group(1)
    assert len(token) >= 24
    assert httpx.get(f"http://127.0.0.1:{port}/").status_code == 401
    assert httpx.get(f"http://127.0.0.1:{port}/", params={"token": token}).status_code == 200


def test_arrows_page_through_the_pending_items_in_rank_order(client, queued_workspace):
    pending = [q.item_id for q in _pending(queued_workspace)]
    for offset, expected in ((1, 1), (7, 7), (99, 7), (-3, 0)):
        card = client.get("/item", params={"offset": offset}).text
        assert f'data-item-id="{html.escape(pending[expected])}"' in card and f'data-offset="{expected}"' in card
    assert f"{8} of 8</span>" in client.get("/item", params={"offset": 7}).text


def test_a_class_gets_its_first_letter_as_key_only_when_unambiguous(queued_workspace):
    LabelStore.for_workspace(queued_workspace).extend_classes(CAMPAIGN, ["noise"])
    with TestClient(_app(queued_workspace), base_url="http://127.0.0.1") as c:
        card = c.get("/item").text
    assert '<button type="button" data-label="10" data-key="n"><kbd>n</kbd> noise</button>' in card
    assert card.count("data-key=") == 1
    assert letter_keys(["cat", "dog", "Eel"]) == ["c", "d", "e"]
    # c is shared, s and u are skip and undo, a digit or sign is not a letter, é is not on every keyboard
    assert letter_keys(["cat", "cow", "sheep", "unicorn", "7up", "-", "élan", "Zebra"]) == [None] * 7 + ["z"]
    assert letter_keys([str(d) for d in range(10)]) == [None] * 10  # digits keep their 1–9


def test_a_tables_items_are_shown_with_its_column_names(tmp_path):
    """A CSV's feature columns name the values on the page and in the Label Studio export, in the file's units."""
    from data.store import QueueEntry
    from flows.campaign_setup import open_label_store, prepare_campaign
    from flows.queue_io import export_queue
    from flows.settings import load_settings

    path = tmp_path / "fruit.csv"
    rows = [f"f{i},{100 + i},{0.5 + i / 10:.1f},{'apple' if i % 2 else 'pear'}" for i in range(12)]
    path.write_text("id,weight_g,sugar <b>%</b>,fruit\n" + "\n".join(rows) + "\n")
    settings = load_settings(
        None,
        {
            "workspace": str(tmp_path / "w"),
            "campaign": {"name": "fruit"},
            "dataset": {"name": str(path), "label_column": "fruit", "id_column": "id"},
        },
    )
    store = open_label_store(settings)
    features = prepare_campaign(settings, store, simulate=False)
    pool_item = str(features.ids[0])
    store.enqueue("fruit", 1, [QueueEntry(pool_item, 1, 0.3, "bald", 0, 0.8, 0.1, 0.2)])
    with TestClient(create_app(store, "fruit", features), base_url="http://127.0.0.1") as client:
        page = client.get("/item").text
    value = int(pool_item[1:])
    assert f"<dt>weight_<wbr>g</dt><dd>{100 + value}</dd>" in page  # may break after the underscore
    assert f"<dt>sugar &lt;b&gt;%&lt;/b&gt;</dt><dd>{0.5 + value / 10:.4g}</dd>" in page  # column names escaped
    assert "<dt>x0</dt>" not in page
    task = json.loads(export_queue(store.queued("fruit"), store.classes("fruit"), features, "label-studio"))[0]
    assert task["data"]["features"] == f"weight_g={100 + value}, sugar <b>%</b>={0.5 + value / 10:.4g}"
