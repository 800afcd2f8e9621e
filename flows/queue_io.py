"""The queue in the files annotators' tools read and write: CSV, JSON lines and Label Studio tasks.

An export lists queue entries with the model's predicted class, the acquisition score and the item people label
(its text, its features as ``name=value``, an image as a PNG data URL: :func:`_item_content`); Label Studio tasks carry
the item in ``data`` and the prediction in ``predictions``, so Label Studio shows it as a pre-annotation.
An import reads answers back (a CSV of ``item_id,label[,annotator]``, other columns ignored, or a Label Studio JSON
export), matched by item id, never by position.
"""

from __future__ import annotations

import base64
import csv
import difflib
import io
import json
from dataclasses import dataclass
from pathlib import Path

from data import FeatureStore
from data.csv_dialect import csv_separator
from data.store import LabelAnswer, LabelStore, QueuedItem
from flows.item_views import feature_table, image_png, item_text

EXPORT_FORMATS = ("csv", "jsonl", "label-studio")
QUEUE_COLUMNS = (
    "item_id",
    "predicted",
    "probability",
    "score",
    "epistemic",
    "aleatoric",
    "acquisition",
    "round",
    "rank",
    "status",
)
EXPORT_COLUMNS = ("item_id", "label", "annotator", *QUEUE_COLUMNS[1:])
"""A CSV export leaves ``label`` and ``annotator`` blank for people to fill in."""
CONTENT_COLUMNS = ("text", "features")
"""What people label from, after a CSV export's queue columns when the campaign's items have them: the item's text
and its features as ``name=value`` (in the imported file's units). An image is in JSON lines and Label Studio
exports (a PNG data URL) and on the labeling page, not in a CSV cell."""


class ImportFileError(ValueError):
    """A file that cannot be read as answers at all (not a row of it); the message names the file."""


@dataclass(frozen=True)
class ImportRow:
    """One answer of a file, or why it was not taken: ``where`` is the CSV line or Label Studio task."""

    where: str
    item_id: str
    label: int | None
    annotator: str
    problem: str | None = None


@dataclass(frozen=True)
class RowOutcome:
    where: str
    item_id: str
    accepted: bool
    detail: str


def queue_rows(entries: list[QueuedItem], classes: list[str]) -> list[dict]:
    """Queue entries as plain rows, the predicted class by name."""
    return [
        {
            "item_id": q.item_id,
            "predicted": classes[q.predicted] if q.predicted is not None else None,
            "probability": q.probability,
            "score": q.score,
            "epistemic": q.epistemic,
            "aleatoric": q.aleatoric,
            "acquisition": q.acquisition,
            "round": q.round,
            "rank": q.rank,
            "status": q.status,
        }
        for q in entries
    ]


def rows_csv(rows: list[dict], columns: tuple[str, ...]) -> str:
    """Rows as CSV with a header of ``columns``; columns a row lacks are left blank, keys not in them left out."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def export_queue(entries: list[QueuedItem], classes: list[str], features: FeatureStore, fmt: str) -> str:
    """The entries as text in ``fmt``, one of ``EXPORT_FORMATS``, each with its item as ``features`` shows it."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {list(EXPORT_FORMATS)}")
    rows = queue_rows(entries, classes)
    if fmt == "label-studio":
        return json.dumps([_label_studio_task(row, features) for row in rows], indent=1) + "\n"
    rows = [row | _item_content(features, row["item_id"]) for row in rows]
    if fmt == "jsonl":
        return "".join(json.dumps(row) + "\n" for row in rows)
    return rows_csv(rows, (*EXPORT_COLUMNS, *(c for c in CONTENT_COLUMNS if any(c in row for row in rows))))


def _item_content(features: FeatureStore, item_id: str) -> dict[str, str]:
    """The item as people read it: ``image`` (a PNG data URL), or ``text`` and / or ``features`` (``name=value``)."""
    index = int(features.row_of(item_id))
    if features.meta["is_image"]:
        return {"image": "data:image/png;base64," + base64.b64encode(image_png(features.features[index])).decode()}
    content = {}
    if (text := item_text(features, index)) is not None:
        content["text"] = text
    if table := feature_table(features, index):
        content["features"] = ", ".join(f"{name}={value}" for name, value in table)
    return content


def _label_studio_task(row: dict, features: FeatureStore) -> dict:
    """A task: the item in ``data`` (``$image``, or ``$text`` and / or ``$features`` for the labeling config) with its
    acquisition score and that score's epistemic / aleatoric parts, and the model's choice with its probability."""
    data = {"item_id": row["item_id"], "round": row["round"], "rank": row["rank"]}
    data |= {key: row[key] for key in ("score", "epistemic", "aleatoric") if row[key] is not None}
    task = {"data": data | _item_content(features, row["item_id"])}
    if row["predicted"] is not None:
        choice = {"from_name": "label", "to_name": "item", "type": "choices", "value": {"choices": [row["predicted"]]}}
        # Label Studio sorts and filters tasks by a prediction's score as the model's confidence: the predicted
        # class's probability (the acquisition score, with its parts, is in ``data``).
        version = f"round {row['round']} {row['acquisition']}"
        task["predictions"] = [{"model_version": version, "score": row["probability"], "result": [choice]}]
    return task


def read_answers(path: Path, classes: list[str], annotator: str | None, default_annotator: str) -> list[ImportRow]:
    """Answers of a CSV (``item_id,label[,annotator]``, other columns ignored) or a Label Studio JSON export.

    Labels are class names or indices. ``annotator`` overrides the file's; without either a CSV row is
    ``default_annotator``'s and a Label Studio annotation ``label-studio/<completed_by>``'s. Empty labels and
    cancelled or empty annotations come back with a ``problem``.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ImportFileError(f"cannot read {path}: {error}") from error
    if path.suffix.lower() == ".json":
        return _label_studio_answers(path, text, classes, annotator)
    return _csv_answers(path, text, classes, annotator or default_annotator)


def _class_index(value: str, classes: list[str]) -> int | None:
    if value in classes:
        return classes.index(value)
    # ASCII digits only: str.isdigit() also admits '¹' or '٣', which int() refuses (found by benchmarks/fuzz.py)
    return int(value) if value.isascii() and value.isdigit() and int(value) < len(classes) else None


def unknown_class_message(value: str, classes: list[str]) -> str:
    """Why ``value`` names no class of ``classes``, naming the class meant when the case or a typo is the likely cause
    ('Barolo', 'barbara' for 'barolo', 'barbera')."""
    meant = [name for name in classes if name.casefold() == value.strip().casefold()]
    meant = meant or difflib.get_close_matches(value, classes, n=2, cutoff=0.75)
    hint = f" (did you mean {' or '.join(map(repr, meant))}?)" if meant else ""
    return f"unknown class {value!r}{hint}; expected one of {classes} or an index"


def _answer(where: str, item_id: str, value: str, classes: list[str], annotator: str) -> ImportRow:
    if not item_id:
        return ImportRow(where, item_id, None, annotator, "no item id")
    if not value:
        return ImportRow(where, item_id, None, annotator, "no label (not answered)")
    index = _class_index(value, classes)
    problem = None if index is not None else unknown_class_message(value, classes)
    return ImportRow(where, item_id, index, annotator, problem)


def _csv_answers(path: Path, text: str, classes: list[str], annotator: str) -> list[ImportRow]:
    reader = csv.DictReader(io.StringIO(text), delimiter=csv_separator(text.split("\n", 1)[0]))
    missing = {"item_id", "label"} - set(reader.fieldnames or ())
    if missing:
        raise ImportFileError(f"{path}: needs columns item_id and label, found {reader.fieldnames}")
    rows = []
    for record in reader:
        where = f"line {reader.line_num}"
        if None in record or None in record.values():  # more or fewer cells than the header: e.g. a cut-off file
            rows.append(ImportRow(where, record.get("item_id") or "", None, annotator, "wrong number of cells"))
            continue
        who = (record.get("annotator") or "").strip() or annotator
        rows.append(_answer(where, record["item_id"].strip(), record["label"].strip(), classes, who))
    return rows


def _label_studio_answers(path: Path, text: str, classes: list[str], annotator: str | None) -> list[ImportRow]:
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as error:
        raise ImportFileError(f"{path}: not valid JSON ({error}); expected a Label Studio JSON export") from error
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise ImportFileError(f"{path}: expected a Label Studio JSON export (a list of tasks)")
    rows = []
    for number, task in enumerate(tasks, start=1):
        where = f"task {task.get('id', number)}"
        data, annotations = task.get("data"), task.get("annotations") or []
        item_id = data.get("item_id") if isinstance(data, dict) else None
        if not isinstance(item_id, str | int) or isinstance(item_id, bool):
            who = annotator or "label-studio"
            rows.append(ImportRow(where, "", None, who, "malformed task: expected data.item_id, a string"))
            continue
        item_id = str(item_id)
        if not isinstance(annotations, list):
            rows.append(ImportRow(where, item_id, None, annotator or "label-studio", "malformed task: annotations"))
            continue
        for annotation in annotations:
            if not isinstance(annotation, dict):
                rows.append(ImportRow(where, item_id, None, annotator or "label-studio", "malformed annotation"))
                continue
            who = annotator or f"label-studio/{_completed_by(annotation.get('completed_by'))}"
            choices = _choices(annotation.get("result") or [])
            if annotation.get("was_cancelled"):
                rows.append(ImportRow(where, item_id, None, who, "annotation was cancelled"))
            elif choices is None:
                rows.append(ImportRow(where, item_id, None, who, "malformed annotation result"))
            elif len(choices) > 1:
                rows.append(ImportRow(where, item_id, None, who, f"several choices {choices}; expected one"))
            else:
                rows.append(_answer(where, item_id, str(choices[0]) if choices else "", classes, who))
    return rows


def _choices(results: object) -> list | None:
    """The choices of an annotation's ``result`` list; ``None`` when it is not shaped as Label Studio writes it."""
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        return None
    choices = []
    for result in results:
        if result.get("type") != "choices":
            continue
        value = result.get("value") or {}
        picked = value.get("choices") if isinstance(value, dict) else None
        if not isinstance(picked, list | type(None)):
            return None
        choices += picked or []
    return choices


def _completed_by(value) -> str:
    """Label Studio names the annotator by user id, or by an object with an email."""
    return str(value.get("email") or value.get("id")) if isinstance(value, dict) else str(value)


def import_answers(store: LabelStore, campaign: str, rows: list[ImportRow]) -> list[RowOutcome]:
    """Record the rows without a problem (one transaction per annotator) and say, row by row, what happened."""
    refused: dict[str, str] = {}
    for who in dict.fromkeys(r.annotator for r in rows if r.problem is None):
        answers = [LabelAnswer(r.item_id, r.label) for r in rows if r.problem is None and r.annotator == who]
        refused |= dict(store.record_labels(campaign, answers, annotator=who).rejected)
    classes = store.classes(campaign)
    outcomes = []
    for r in rows:
        problem = r.problem or refused.get(r.item_id)
        detail = problem or f"{classes[r.label]} by {r.annotator}"
        outcomes.append(RowOutcome(r.where, r.item_id, problem is None, detail))
    return outcomes
