"""Data: dataset import and the on-disk feature store (the label store lives in ``data.store``)."""

from data.datasets import Dataset, DatasetError, balanced_seed_rows, load_dataset
from data.feature_store import FeatureStore, FeatureStoreError, open_feature_store, write_feature_store

__all__ = [
    "Dataset",
    "DatasetError",
    "FeatureStore",
    "FeatureStoreError",
    "balanced_seed_rows",
    "load_dataset",
    "open_feature_store",
    "write_feature_store",
]
