"""Turn a dataset into a campaign: feature store in the workspace, items and initial labels in the label store."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from data import (
    Dataset,
    DatasetError,
    FeatureStore,
    balanced_seed_rows,
    load_dataset,
    open_feature_store,
    write_feature_store,
)
from data.feature_store import append_rows, extend_classes, recover_store
from data.store import LabelAnswer, LabelStore, StoreError, sqlite_file
from flows.settings import Settings


def open_label_store(settings: Settings) -> LabelStore:
    """The campaign's label store, with the settings' lock waiting (``store.busy_timeout``, ``store.attempts``)."""
    return LabelStore(settings.store_url, busy_timeout=settings.store.busy_timeout, attempts=settings.store.attempts)


def feature_store_dir(settings: Settings, dataset: str | None = None) -> Path:
    """Folder of the imported feature store of ``dataset`` (a campaign's, see ``LabelStore.dataset_of``), by
    default of the settings' dataset."""
    return settings.datasets_dir / Path(dataset or settings.dataset.name).stem


def ensure_feature_store(
    settings: Settings, *, simulate: bool = False, progress: Callable[[int, int], None] | None = None
) -> FeatureStore:
    """Import the dataset into ``workspace/datasets/<name>/`` once; later calls open the stored copy.

    The file is read and checked before anything is written (for a ``simulate`` campaign: every training row
    labelled), so a dataset that cannot be used leaves no workspace behind. Declared classes
    (``dataset.classes``) that extend the stored ones are added to the store; stored classes that extend the
    declared ones (admitted later: ``beliefloop label --new-class``) are kept; any other difference is refused.
    ``progress(done, total)`` is told the images decoded while a folder of images is imported.
    """
    directory = feature_store_dir(settings)
    recover_store(directory)  # a store whose rewrite was killed is rolled back, not imported afresh
    if not (directory / "meta.json").exists():
        dataset = load_dataset(
            settings.dataset.name,
            label_column=settings.dataset.label_column,
            id_column=settings.dataset.id_column,
            text_column=settings.dataset.text_column,
            text_dim=settings.dataset.text_dim,
            test_fraction=settings.dataset.test_fraction,
            allow_empty_test=settings.dataset.test_fraction == 0,
            classes=settings.dataset.classes,
            image_size=settings.dataset.image_size,
            progress=progress,
        )
        if simulate:
            _check_simulatable(settings, dataset.y_train)
        write_feature_store(dataset, directory)
    features = open_feature_store(directory)
    declared, stored = settings.dataset.classes, list(features.classes)
    if declared is not None and declared[: len(stored)] != stored[: len(declared)]:
        raise DatasetError(
            f"declared classes {declared} differ from the classes {stored} of the imported "
            f"{settings.dataset.name!r} ({directory}); classes can only be added, last"
        )
    if declared is not None and len(declared) > len(stored):
        extend_classes(directory, declared[len(stored) :])
        features = open_feature_store(directory)
    if simulate:
        _check_simulatable(settings, np.asarray(features.targets[np.asarray(features.rows_train)]))
    return features


def _check_simulatable(settings: Settings, train_targets: np.ndarray) -> None:
    """A simulated campaign's oracle answers from the training labels: every one must be known."""
    unknown = int((np.asarray(train_targets) < 0).sum())
    if unknown:
        raise DatasetError(
            f"dataset {settings.dataset.name!r} has {unknown} unlabeled training rows; a simulated campaign needs "
            "every training label for its oracle (beliefloop round runs a live campaign)"
        )


def model_feature_store(settings: Settings, *, simulate: bool = False) -> FeatureStore:
    """The features the models are trained on and score: the imported store, or its pool-fitted representation.

    ``representation: spectral`` fits the embedding once on the import's train rows (the pool, labels unused),
    maps the test rows and rows ingested later by its Nyström extension, and keeps the result as a feature
    store beside the imported one (same rows, ids, targets and classes), so everything downstream is unchanged.
    """
    raw = ensure_feature_store(settings, simulate=simulate)
    r = settings.representation
    if representation_name(settings, raw) == "none":
        return raw
    from representation import SpectralConfig, SpectralEmbedding

    config = SpectralConfig(dim=r.dim, neighbors=r.neighbors, pca_dim=r.pca_dim)
    tag = f"spectral-d{config.dim}-k{config.neighbors}-p{config.pca_dim}"
    imported = feature_store_dir(settings)
    directory = imported.with_name(f"{imported.name}.{tag}")
    state_file = directory.with_name(f"{directory.name}.npz")
    embedding = SpectralEmbedding(config)
    if not (directory / "meta.json").exists():
        train, test = np.asarray(raw.rows_train), np.asarray(raw.rows_test)
        embedding.fit(raw.features[train])
        save_arrays(state_file, embedding.state_dict())
        dataset = Dataset(
            raw.meta["name"],
            f"{raw.meta['source']} ({tag})",
            embedding.embedding(),
            np.asarray(raw.targets[train]),
            embedding.transform(raw.features[test]) if len(test) else np.zeros((0, config.dim), np.float32),
            np.asarray(raw.targets[test]),
            np.asarray(raw.ids[train]),
            np.asarray(raw.ids[test]),
            raw.classes,
        )
        write_feature_store(dataset, directory)
    derived = open_feature_store(directory)
    if derived.classes != raw.classes:
        extend_classes(directory, raw.classes[len(derived.classes) :])
    if len(derived.ids) < len(raw.ids):  # rows ingested since: map them with the fitted embedding
        with np.load(state_file) as arrays:
            embedding.load_state_dict(arrays)
        new = np.arange(len(derived.ids), len(raw.ids))
        append_rows(directory, embedding.transform(raw.features[new]), raw.targets[new], raw.ids[new])
    return open_feature_store(directory)


def representation_name(settings: Settings, raw: FeatureStore) -> str:
    """``auto`` resolved: ``spectral`` for images with a pool of ``auto_min_pool`` items or more, else ``none``."""
    r = settings.representation
    if r.name != "auto":
        return r.name
    return "spectral" if raw.meta["is_image"] and raw.n_train >= r.auto_min_pool else "none"


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` to a file of its own renamed over ``path``: a crash leaves the old file or the new one."""
    tmp = path.with_name(f"{path.stem}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def prepare_campaign(settings: Settings, store: LabelStore, *, simulate: bool) -> FeatureStore:
    """Register the campaign, its items and initial labels; idempotent, so a crash part-way is re-run safely.

    A simulated campaign labels a class-balanced seed set from the held-back training labels (annotator
    ``seed``); the rest of the training rows form the pool the oracle answers from. A live campaign imports
    the training labels that came with the data (annotator ``import``); unknown ones (-1) form the pool.
    """
    features = ensure_feature_store(settings, simulate=simulate)  # refuses before the campaign is registered
    campaign = settings.campaign_name
    train_rows = np.asarray(features.rows_train, dtype=np.int64)
    test_rows = np.asarray(features.rows_test, dtype=np.int64)  # may be empty (dataset.test_fraction: 0)
    train_targets = np.asarray(features.targets[train_rows])
    _follow_extended_classes(store, campaign, features.classes)
    store.create_campaign(campaign, settings.dataset.name, features.classes)
    splits = np.full(len(train_rows), "pool", dtype=object)
    if simulate:
        seed_rows = balanced_seed_rows(
            train_targets, settings.campaign.initial, len(features.classes), settings.campaign.seed
        )
        splits[seed_rows] = "seed"
        labeled = seed_rows
    else:
        labeled = np.flatnonzero(train_targets >= 0)
    ids = features.ids
    store.add_items(
        campaign,
        [str(i) for i in ids[train_rows]] + [str(i) for i in ids[test_rows]],
        list(splits) + ["test"] * len(test_rows),
        [int(r) for r in train_rows] + [int(r) for r in test_rows],
    )
    already = store.current_labels(campaign)
    answers = [
        LabelAnswer(str(ids[train_rows[i]]), int(train_targets[i]))
        for i in labeled
        if str(ids[train_rows[i]]) not in already
    ]
    store.record_labels(campaign, answers, annotator="seed" if simulate else "import", require_queued=False)
    return features


def _follow_extended_classes(store: LabelStore, campaign: str, classes: tuple[str, ...]) -> None:
    """Give an existing campaign the classes that an ingest (``flows.ingest``) added to its shared feature store.

    New classes only ever go last, so the campaign's labels keep their meaning; any other difference is left for
    ``create_campaign`` to refuse.
    """
    try:
        known = store.classes(campaign)
    except StoreError:
        return
    if len(known) < len(classes) and list(classes[: len(known)]) == known:
        store.extend_classes(campaign, classes)


def campaign_test_rows(settings: Settings, features: FeatureStore) -> np.ndarray:
    """Feature-store rows (int64, ascending) of the campaign's ``test`` items, ingested ones included.

    Without such a campaign (``beliefloop select`` on a bare dataset) the original import's test split; a
    workspace without a label store is not given one.
    """
    url = settings.store_url
    if (path := sqlite_file(url)) is not None and not path.exists():
        return np.asarray(features.rows_test, dtype=np.int64)
    store = open_label_store(settings)
    try:
        rows = store.item_rows(settings.campaign_name, "test")
    finally:
        store.close()
    if not rows:
        return np.asarray(features.rows_test, dtype=np.int64)
    return np.sort(np.fromiter(rows.values(), dtype=np.int64, count=len(rows)))


def admit_classes(settings: Settings, store: LabelStore, campaign: str, names: Sequence[str]) -> list[str]:
    """Add class ``names`` to a campaign between rounds and return all its classes.

    New classes go last, so stored labels keep their meaning: in the campaign's feature store (whose models then
    get one output per class) and in the label store. A saved posterior (the starting point of ``update: belief``)
    has no output for a new class, so the campaign's saved candidates are set aside and the next round retrains.
    """
    unfinished = store.unfinished_rounds(campaign)
    if unfinished:
        raise StoreError(
            f"campaign {campaign!r}: round {unfinished[0]} is unfinished (running now, or crashed: `beliefloop "
            "round` resumes it); add classes between rounds"
        )
    all_classes = extend_classes(feature_store_dir(settings, store.dataset_of(campaign)), names)
    _retire_candidates(settings, campaign)
    return store.extend_classes(campaign, all_classes)


def _retire_candidates(settings: Settings, campaign: str) -> None:
    """Move the campaign's saved candidates (belief-update starting points) aside: the next round starts afresh."""
    directory = settings.models_dir / campaign / "candidates"  # as flows.rounds._candidates_dir
    if directory.is_dir():
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        directory.rename(directory.with_name(f"candidates-before-new-classes-{stamp}"))
