"""Queue export and import through the real CLI: CSV and Label Studio round trips, row-by-row reports, bad files."""

import csv
import io
import json
import shutil

from data.store import LabelStore
from flows.queue_io import EXPORT_COLUMNS

CAMPAIGN = "digits8"


def _pending(workspace):
    return [q for q in LabelStore.for_workspace(workspace).queued(CAMPAIGN) if q.status == "pending"]


def _new_labels(workspace, before):
    return {
        i: label for i, label in LabelStore.for_workspace(workspace).current_labels(CAMPAIGN).items() if i not in before
    }


def _exported_csv(workspace, beliefloop, tmp_path):
    """``beliefloop queue export --format csv``: the pending items, the labels before, the file and its rows."""
    pending = _pending(workspace)
    before = LabelStore.for_workspace(workspace).current_labels(CAMPAIGN)
    exported = tmp_path / "queue.csv"
    beliefloop("queue", "export", "--format", "csv", "--out", str(exported), "--workspace", str(workspace))
    return pending, before, exported, list(csv.DictReader(exported.open()))


def _write_rows(path, rows, **dialect) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, rows[0].keys(), **({"lineterminator": "\n"} | dialect))
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), newline="")


def test_csv_export_fill_in_import(queued_workspace, beliefloop, tmp_path):
    pending, before, exported, rows = _exported_csv(queued_workspace, beliefloop, tmp_path)
    common = ["--workspace", str(queued_workspace)]
    assert list(rows[0]) == list(EXPORT_COLUMNS)  # an image is not put in a cell (it is in JSON lines)
    assert [r["item_id"] for r in rows] == [q.item_id for q in pending]  # rank order, untrusted id included
    assert [r["predicted"] for r in rows] == [str(q.predicted) for q in pending]  # digits' classes are "0".."9"
    assert [float(r["score"]) for r in rows] == [q.score for q in pending]

    rows[0]["label"], rows[1]["label"], rows[1]["annotator"] = "7", "1", "bob"
    rows[2]["label"] = "cat"  # not a class
    rows.append({**rows[3], "item_id": "img-999", "label": "2"})  # not in the campaign
    _write_rows(exported, rows)
    result = beliefloop("queue", "import", str(exported), "--annotator", "ada", *common, check=False)
    assert result.returncode == 1
    out = result.stdout + result.stderr
    assert f"line 2 {pending[0].item_id}: accepted: 7 by ada" in out
    assert f"line 3 {pending[1].item_id}: accepted: 1 by bob" in out
    assert f"line 4 {pending[2].item_id}: rejected: unknown class 'cat'" in out
    assert f"line 5 {pending[3].item_id}: rejected: no label" in out
    assert "img-999: rejected: unknown item" in out and "2 accepted, 7 rejected" in out
    assert _new_labels(queued_workspace, before) == {pending[0].item_id: 7, pending[1].item_id: 1}


def test_an_export_saved_by_a_spreadsheet_with_semicolons_imports(queued_workspace, beliefloop, tmp_path):
    """Spreadsheets save CSV with ';' (and CRLF line ends) where the comma is the decimal mark."""
    pending, before, exported, rows = _exported_csv(queued_workspace, beliefloop, tmp_path)
    rows[0]["label"], rows[1]["label"] = "3", "5"
    _write_rows(exported, rows[:2], delimiter=";", lineterminator="\r\n")
    result = beliefloop("queue", "import", str(exported), "--annotator", "ada", "--workspace", str(queued_workspace))
    assert "2 accepted, 0 rejected" in result.stdout + result.stderr
    assert _new_labels(queued_workspace, before) == {pending[0].item_id: 3, pending[1].item_id: 5}


def test_label_studio_round_trip_gives_the_labels_of_the_cli_path(queued_workspace, beliefloop, tmp_path):
    pending = _pending(queued_workspace)
    before = LabelStore.for_workspace(queued_workspace).current_labels(CAMPAIGN)
    by_cli = shutil.copytree(queued_workspace, tmp_path / "by-cli")
    exported = tmp_path / "tasks.json"
    beliefloop(
        "queue", "export", "--format", "label-studio", "--out", str(exported), "--workspace", str(queued_workspace)
    )
    tasks = json.loads(exported.read_text())
    assert [t["data"]["item_id"] for t in tasks] == [q.item_id for q in pending]
    assert tasks[0]["data"]["image"].startswith("data:image/png;base64,")
    prediction = tasks[0]["predictions"][0]
    assert prediction["result"][0]["value"]["choices"] == [str(pending[0].predicted)]
    assert prediction["score"] == pending[0].probability  # the model's confidence, what Label Studio sorts by
    assert tasks[0]["data"]["score"] == pending[0].score and tasks[0]["data"]["epistemic"] == pending[0].epistemic

    def annotation(choices, cancelled=False):
        result = [{"from_name": "label", "to_name": "item", "type": "choices", "value": {"choices": choices}}]
        return {"completed_by": {"id": 3, "email": "ann@example.org"}, "was_cancelled": cancelled, "result": result}

    chosen = {0: "4", 2: "8", 5: "0"}
    for index, task in enumerate(tasks):  # what Label Studio's JSON export holds after people answered
        task["id"] = 100 + index
        task["annotations"] = [annotation([chosen[index]])] if index in chosen else []
    tasks[1]["annotations"] = [annotation(["3"], cancelled=True)]
    tasks[3]["annotations"] = [{"completed_by": 3, "was_cancelled": False, "result": []}]
    tasks.reverse()  # matched by item id, never by position
    exported.write_text(json.dumps(tasks))
    result = beliefloop("queue", "import", str(exported), "--workspace", str(queued_workspace), check=False)
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "3 accepted, 2 rejected" in out
    assert f"task 100 {pending[0].item_id}: accepted: 4 by label-studio/ann@example.org" in out
    assert f"task 101 {pending[1].item_id}: rejected: annotation was cancelled" in out
    assert f"task 103 {pending[3].item_id}: rejected: no label" in out

    for index, label in chosen.items():
        beliefloop("label", "--item", pending[index].item_id, "--label", label, "--workspace", str(by_cli))
    assert (
        _new_labels(queued_workspace, before)
        == _new_labels(by_cli, before)
        == {pending[i].item_id: int(label) for i, label in chosen.items()}
    )


def test_a_broken_file_is_refused_by_name_and_changes_nothing(queued_workspace, beliefloop, tmp_path):
    before = LabelStore.for_workspace(queued_workspace).current_labels(CAMPAIGN)
    truncated = tmp_path / "cut.json"
    truncated.write_text('[{"data": {"item_id": "img-031"}, "annotations": [{"result": [')
    result = beliefloop("queue", "import", str(truncated), "--workspace", str(queued_workspace), check=False)
    assert result.returncode == 2 and "cut.json: not valid JSON" in result.stderr
    no_label = tmp_path / "ids.csv"
    no_label.write_text("item_id,answer\nimg-031,3\n")
    result = beliefloop("queue", "import", str(no_label), "--workspace", str(queued_workspace), check=False)
    assert result.returncode == 2 and "needs columns item_id and label" in result.stderr
    assert LabelStore.for_workspace(queued_workspace).current_labels(CAMPAIGN) == before


def test_jsonl_export_names_classes(queued_workspace, beliefloop):
    out = beliefloop("queue", "export", "--format", "jsonl", "--workspace", str(queued_workspace)).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["item_id"] for line in lines] == [q.item_id for q in _pending(queued_workspace)]
    assert {line["status"] for line in lines} == {"pending"} and all(line["acquisition"] == "bald" for line in lines)
    assert all(line["image"].startswith("data:image/png;base64,") for line in lines)  # the item people label


def test_queue_list_for_scripts_keeps_whole_ids(queued_workspace, beliefloop, script_id):
    common = ["queue", "list", "--status", "pending", "--workspace", str(queued_workspace)]
    listed = json.loads(beliefloop(*common, "--format", "json").stdout)
    pending = _pending(queued_workspace)
    assert [row["item_id"] for row in listed] == [q.item_id for q in pending] and script_id in [
        r["item_id"] for r in listed
    ]
    assert listed[0] == {
        "item_id": pending[0].item_id,
        "predicted": str(pending[0].predicted),
        "probability": pending[0].probability,
        "score": pending[0].score,
        "epistemic": pending[0].epistemic,
        "aleatoric": pending[0].aleatoric,
        "acquisition": "bald",
        "round": 1,
        "rank": pending[0].rank,
        "status": "pending",
    }
    rows = list(csv.DictReader(io.StringIO(beliefloop(*common, "--format", "csv").stdout)))
    assert [{k: r[k] for k in ("item_id", "round", "rank")} for r in rows] == [
        {"item_id": q.item_id, "round": "1", "rank": str(q.rank)} for q in pending
    ]
    bad = beliefloop(*common, "--format", "yaml", check=False)
    assert bad.returncode == 2 and "unknown format 'yaml'" in bad.stderr


def test_malformed_label_studio_tasks_are_rows_with_a_problem_not_a_crash(tmp_path):
    """Shapes the fuzzer (benchmarks/fuzz.py) found crashing the import: each becomes a refused row, the good row
    next to them is kept."""
    from flows.queue_io import read_answers

    good = {"type": "choices", "value": {"choices": ["dog"]}}
    tasks = [
        {"id": 1, "data": True, "annotations": []},
        {"id": 2, "data": {"item_id": "a"}, "annotations": [{"result": [None]}]},
        {"id": 3, "data": {"item_id": "a"}, "annotations": [{"result": True}]},
        {
            "id": 4,
            "data": {"item_id": "a"},
            "annotations": [{"result": [{"type": "choices", "value": {"choices": 1}}]}],
        },
        {"id": 5, "data": {"item_id": "a"}, "annotations": 7},
        {"id": 6, "data": {"item_id": "b"}, "annotations": [{"completed_by": 3, "result": [good]}]},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    rows = read_answers(path, ["cat", "dog"], None, "me")
    assert [(r.where, r.problem) for r in rows[:-1]] == [
        ("task 1", "malformed task: expected data.item_id, a string"),
        ("task 2", "malformed annotation result"),
        ("task 3", "malformed annotation result"),
        ("task 4", "malformed annotation result"),
        ("task 5", "malformed task: annotations"),
    ]
    assert (rows[-1].item_id, rows[-1].label, rows[-1].annotator, rows[-1].problem) == ("b", 1, "label-studio/3", None)


def test_a_label_of_non_ascii_digits_is_an_unknown_class_not_a_crash(tmp_path):
    """'¹' passes str.isdigit() but not int(): the fuzzer's CSV that crashed the import."""
    from flows.queue_io import read_answers

    path = tmp_path / "answers.csv"
    path.write_text("item_id,label\na,\u00b9\nb,1\n")
    rows = read_answers(path, ["cat", "dog"], None, "me")
    assert [(r.item_id, r.label, r.problem) for r in rows] == [
        ("a", None, "unknown class '\u00b9'; expected one of ['cat', 'dog'] or an index"),
        ("b", 1, None),
    ]


def test_an_unknown_class_names_the_class_a_typo_or_the_case_likely_meant(tmp_path):
    """Typed answers: a different case or a typo names the class it resembles; anything else lists the classes."""
    from flows.queue_io import read_answers

    path = tmp_path / "answers.csv"
    path.write_text("item_id,label\na,Barolo\nb,barbara\nc,cat\nd,barolo\n")
    rows = read_answers(path, ["barbera", "barolo", "grignolino"], None, "me")
    expected = "; expected one of ['barbera', 'barolo', 'grignolino'] or an index"
    assert [(r.item_id, r.label, r.problem) for r in rows] == [
        ("a", None, "unknown class 'Barolo' (did you mean 'barolo'?)" + expected),
        ("b", None, "unknown class 'barbara' (did you mean 'barbera'?)" + expected),
        ("c", None, "unknown class 'cat'" + expected),
        ("d", 1, None),
    ]
