"""New data arriving: add the items of a file to a running campaign so that the next round updates on them.

``ingest(settings, path, campaign=...)`` (the ``beliefloop ingest PATH`` command) loads the file in the feature
space of the campaign's original import (its vectors standardised with the *original* train mean and std, never
the file's own), appends the rows to the campaign's feature store and registers them in the label store:

- train rows become ``pool`` items; those that carry a label get it recorded (annotator ``ingest``), the others
  wait to be scored and queued by the next round;
- test rows become ``test`` items, which every later round evaluates on;
- labels are matched to the campaign's classes by *name*; a class the campaign does not know is refused with the
  file and the class names in the message, unless ``allow_new_classes`` extends the campaign's classes (new
  classes go last, so stored labels keep their meaning; the models of later rounds get the larger class count).

Item ids are the file's ids under a prefix (default ``<file stem>/``), so they never collide with the ids of the
original import. Ingesting is idempotent and crash-safe: ids the campaign already holds are skipped, rows that
reached the feature store before a crash are reused (after checking that their features are the same), and a
label already recorded by an earlier ingest is not recorded twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data import DatasetError, FeatureStore, load_dataset, open_feature_store
from data.datasets import TABLE_SUFFIXES
from data.feature_store import append_rows
from data.store import LabelAnswer, LabelStore, StoreError
from flows.campaign_setup import admit_classes, feature_store_dir, open_label_store
from flows.settings import Settings

ANNOTATOR = "ingest"


@dataclass(frozen=True)
class IngestReport:
    """What one ingest added to a campaign.

    Attributes
    ----------
    n_pool, n_test : int
        New pool and test items of the campaign.
    n_labeled : int
        Labels recorded (annotator ``ingest``): new labeled pool items, and labels for pool items the campaign
        already held but that this file labels for the first time.
    new_classes : tuple of str
        Classes added to the campaign (only with ``allow_new_classes``).
    skipped_existing : int
        Rows whose item id the campaign already held (a repeated ingest skips every row).
    n_appended : int
        Rows appended to the feature store (fewer than the new items when a crashed ingest had appended them).
    """

    campaign: str
    source: str
    n_pool: int
    n_labeled: int
    n_test: int
    new_classes: tuple[str, ...]
    skipped_existing: int
    n_appended: int

    def summary(self) -> str:
        added = f"{self.n_pool} pool items ({self.n_labeled} labels recorded), {self.n_test} test items"
        classes = f"; new classes {list(self.new_classes)}" if self.new_classes else ""
        return f"ingested {self.source} into {self.campaign}: {added}{classes}; {self.skipped_existing} already there"


def ingest(
    settings: Settings,
    path: str | Path,
    *,
    campaign: str,
    allow_new_classes: bool = False,
    id_prefix: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
    text_column: str | None = None,
) -> IngestReport:
    """Add the items of ``path`` (``.npz``, CSV, Parquet or a folder of images, labeled or not) to ``campaign``.

    Parameters
    ----------
    settings : Settings
        Workspace and label store; ``dataset.label_column`` / ``id_column`` are the defaults for a table.
    path : str or Path
        The file or folder, in the format of :func:`data.load_dataset`. Rows of a ``split`` column's ``test`` (an
        ``.npz``'s ``x_test``, a folder's ``test/``) become test items; everything else, and a table without a
        ``split`` column, goes to the pool. Test rows must be labeled. A folder's images are resized to the
        campaign's images' size and made grey or RGB as they are.
    campaign : str
        A campaign created by ``prepare_campaign`` (``beliefloop round`` / ``simulate``).
    allow_new_classes : bool
        Extend the campaign's classes with class names it does not know instead of refusing the file.
    id_prefix : str, optional
        Put before the file's item ids; default ``"<file stem>/"`` (a folder's name). ``""`` addresses the
        campaign's own items (e.g. labels for pool items arriving from elsewhere).
    label_column, id_column : str, optional
        Tables only; default the settings' ``dataset.label_column`` / ``dataset.id_column``.
    text_column : str, optional
        Tables of a campaign whose dataset has a text column: the file's text column (default the campaign's).
        The texts are featurised as the campaign's were (the stateless pipeline and settings its feature store
        records), so a text gets the same features whenever it arrives.

    Raises
    ------
    DatasetError
        Unreadable file, features of another shape, classes the campaign does not know (naming them and the
        file), an item id the feature store holds with different features, a text column that the installed
        scikit-learn would featurise differently from the campaign's.
    StoreError
        Unknown campaign, an unfinished round, unlabeled rows for a simulated campaign.
    """
    store = open_label_store(settings)
    try:
        columns = (label_column, id_column, text_column)
        return _ingest(settings, store, Path(path), campaign, allow_new_classes, id_prefix, *columns)
    finally:
        store.close()


def _ingest(
    settings: Settings,
    store: LabelStore,
    path: Path,
    campaign: str,
    allow_new_classes: bool,
    id_prefix: str | None,
    label_column: str | None,
    id_column: str | None,
    text_column: str | None,
) -> IngestReport:
    classes = store.classes(campaign)
    unfinished = store.unfinished_rounds(campaign)
    if unfinished:
        raise StoreError(
            f"campaign {campaign!r}: round {unfinished[0]} is unfinished (running now, or crashed: "
            "`beliefloop round` resumes it); ingest between rounds"
        )
    dataset_name = store.dataset_of(campaign)
    directory = feature_store_dir(settings, dataset_name)
    features = open_feature_store(directory)
    if list(features.classes[: len(classes)]) != classes:
        raise StoreError(
            f"campaign {campaign!r} has classes {classes}, which do not begin its feature store's "
            f"{list(features.classes)} ({directory})"
        )

    table = path.suffix.lower() in TABLE_SUFFIXES
    text = features.text_features
    images = path.is_dir() and features.meta["is_image"]  # a folder's images take the campaign's size and channels
    data = load_dataset(
        path,
        label_column=label_column if label_column is not None or not table else settings.dataset.label_column,
        id_column=id_column if id_column is not None or not table else settings.dataset.id_column,
        text_column=None if text is None else text_column or text.column,
        text_dim=text.dim if text is not None else 1,
        test_fraction=0.0,
        allow_empty_test=True,
        standardization=_standardization(settings, dataset_name, features),
        encoding=features.table_encoding if table else None,
        image_size=tuple(features.feature_shape[1:]) if images else None,
        image_channels=features.feature_shape[0] if images else None,
    )
    if text is not None and (
        data.text.to_json() | {"column": text.column} != features.meta["text"]
    ):  # another projection: the installed scikit-learn draws another matrix from the recorded seed
        raise DatasetError(
            f"{data.source}: texts would be featurised differently from campaign {campaign!r}'s (its settings and "
            f"projection fingerprint are in {directory / 'meta.json'}, key text); install the scikit-learn version "
            "that imported the dataset to add rows to it"
        )
    if data.feature_shape != features.feature_shape:
        raise DatasetError(
            f"{data.source}: items have features of shape {data.feature_shape}, campaign {campaign!r} "
            f"has {features.feature_shape}"
        )
    n_train = len(data.x_train)
    prefix = f"{path.name if path.is_dir() else path.stem}/" if id_prefix is None else id_prefix
    ids = np.char.add(prefix, np.concatenate([data.ids_train, data.ids_test]).astype(str))
    x = np.concatenate([data.x_train, data.x_test])
    y_file = np.concatenate([data.y_train, data.y_test])
    splits = np.array(["pool"] * n_train + ["test"] * len(data.x_test), dtype=object)

    used = [data.classes[i] for i in np.unique(y_file[y_file >= 0])]
    new_classes = tuple(c for c in used if c not in classes)
    if new_classes and not allow_new_classes:
        raise DatasetError(
            f"{data.source}: {'classes' if len(new_classes) > 1 else 'class'} {list(new_classes)} "
            f"{'are' if len(new_classes) > 1 else 'is'} not among the classes of campaign {campaign!r}, {classes} "
            "(labels are matched by class name); pass allow_new_classes=True (--allow-new-classes) to add them"
        )

    in_campaign_rows = store.item_rows(campaign)
    in_campaign = np.array([item in in_campaign_rows for item in ids.tolist()], dtype=bool)
    unlabeled_new = ~in_campaign & (splits == "pool") & (y_file < 0)
    if unlabeled_new.any() and store.simulated(campaign):
        raise StoreError(
            f"campaign {campaign!r} is simulated (its oracle answers from held-back labels) and {data.source} has "
            f"{int(unlabeled_new.sum())} unlabeled rows, e.g. {str(ids[unlabeled_new][0])!r}; ingest labeled rows only"
        )

    if new_classes:
        classes = admit_classes(settings, store, campaign, new_classes)
        features = open_feature_store(directory)
    index = {name: i for i, name in enumerate(classes)}
    # file class index -> campaign class index; classes the file lists but no row uses map nowhere; y = -1 -> -1
    lookup = np.array([index.get(c, -1) for c in data.classes] + [-1], dtype=np.int64)
    targets = lookup[y_file]

    rows = features.lookup(ids)
    _check_same_items(features, ids, x, targets, splits, rows, data.source)
    missing = rows < 0
    if missing.any():
        texts = None if text is None else np.concatenate([data.texts_train, data.texts_test])[missing]
        rows[missing] = append_rows(directory, x[missing], targets[missing], ids[missing], texts)

    new = ~in_campaign
    store.add_items(campaign, ids[new].tolist(), splits[new].tolist(), rows[new].tolist())
    test_items = store.item_rows(campaign, "test")
    already = store.answers_by(campaign, ANNOTATOR)
    answers = [
        LabelAnswer(item, int(label))
        for item, label, split in zip(ids.tolist(), targets.tolist(), splits.tolist(), strict=True)
        if split == "pool" and label >= 0 and item not in test_items and (item, label) not in already
    ]
    report = store.record_labels(campaign, answers, annotator=ANNOTATOR, require_queued=False)
    if report.rejected:
        item, reason = report.rejected[0]
        raise StoreError(f"campaign {campaign!r}: label of {item!r} from {data.source} refused: {reason}")
    return IngestReport(
        campaign=campaign,
        source=data.source,
        n_pool=int((new & (splits == "pool")).sum()),
        n_labeled=len(report.accepted),
        n_test=int((new & (splits == "test")).sum()),
        new_classes=new_classes,
        skipped_existing=int(in_campaign.sum()),
        n_appended=int(missing.sum()),
    )


def _standardization(
    settings: Settings, dataset_name: str, features: FeatureStore
) -> tuple[np.ndarray, np.ndarray] | None:
    """The original import's ``(mean, std)`` (None for images).

    A store written before the statistics were recorded gets them by importing the original source again, which
    must reproduce the stored train rows (same file, columns and split settings).
    """
    if features.meta["is_image"]:
        return None
    stats = features.standardization
    if stats is not None:
        return stats
    where = f"feature store {features.directory} (written without its standardisation)"
    try:
        original = load_dataset(
            dataset_name,
            label_column=settings.dataset.label_column,
            id_column=settings.dataset.id_column,
            test_fraction=settings.dataset.test_fraction,
            allow_empty_test=settings.dataset.test_fraction == 0,
        )
    except DatasetError as error:
        raise DatasetError(f"{where}: cannot re-import {dataset_name} for its statistics: {error}") from error
    n = features.n_train
    same = np.array_equal(original.ids_train, np.asarray(features.ids[:n])) and np.allclose(
        original.x_train, np.asarray(features.features[:n], dtype=np.float32), atol=1e-3
    )
    if not same:
        raise DatasetError(f"{where}: re-importing {dataset_name} does not reproduce its train rows")
    return original.standardization


def _check_same_items(
    features: FeatureStore,
    ids: np.ndarray,
    x: np.ndarray,
    targets: np.ndarray,
    splits: np.ndarray,
    rows: np.ndarray,
    source: str,
) -> None:
    """Ids the feature store already holds (a repeated or crashed ingest) must be the same items."""
    present = np.flatnonzero(rows >= 0)
    if not present.size:
        return
    order = np.argsort(rows[present])
    stored = np.empty((len(present), *features.feature_shape), dtype=np.float64)
    stored[order] = features.features[rows[present][order]]
    with np.errstate(over="ignore"):
        given = x[present].astype(features.meta["dtype"]).astype(np.float64)
    close = np.isclose(stored, given, rtol=1e-4, atol=1e-5).reshape(len(present), -1).all(axis=1)
    if not close.all():
        item = str(ids[present][~close][0])
        raise DatasetError(
            f"{source}: item {item!r} is already in the feature store with different features; "
            "give these items another id prefix"
        )
    is_test = splits[present] == "test"
    stored_targets = np.asarray(features.targets[rows[present]])
    wrong = is_test & (stored_targets != targets[present])
    if wrong.any():
        item = str(ids[present][wrong][0])
        raise DatasetError(f"{source}: test item {item!r} is already in the feature store with another label")
