"""Free text as model features: a stateless scikit-learn pipeline, so rows that arrive later map identically.

A text column becomes ``dim`` dense numbers per row by

1. ``HashingVectorizer`` — word unigrams and bigrams, hashed (MurmurHash3) into ``n_hash`` buckets, counts not
   signed (``alternate_sign=False``), each row scaled to unit L2 norm; it learns nothing from the data;
2. ``SparseRandomProjection`` — a seeded Achlioptas matrix ``[n_hash, dim]`` drawn from ``seed`` alone, never from
   the rows, of density ``hits / dim``: each hash bucket reaches about ``hits`` (4) of the ``dim`` outputs.
   scikit-learn's default density ``1/sqrt(n_hash)`` (1/512) would leave ~60% of the buckets, and so of a short
   text's words, reaching no output at all at ``dim = 256``.

Nothing is fitted on the data, so no vectoriser is saved: a row's features depend only on its own text and on
``(dim, n_hash, seed)``, which the feature store records. The matrix is drawn by scikit-learn's generator, which
a future version could change; :attr:`TextFeatures.fingerprint` (a SHA-256 of the matrix) is recorded beside the
settings, and rows appended later are refused when the installed version would draw another matrix.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

TEXT_DIM = 256
"""Default number of features a text column becomes (``dataset.text_dim``)."""
N_HASH = 2**18
"""Hash buckets of the word uni- and bigrams (scikit-learn's default ``n_features``)."""
HITS = 4
"""Outputs each hash bucket reaches on average: a word misses every output with probability ``exp(-4)`` ≈ 2%."""


@dataclass(frozen=True)
class TextFeatures:
    """How one text column becomes ``dim`` float features (see the module docstring).

    Attributes
    ----------
    column : str
        The table's text column.
    dim : int
        Number of features (the random projection's ``n_components``).
    n_hash, seed : int
        Hash buckets and the projection's seed.
    hits : int
        Expected number of outputs each hash bucket reaches (the projection's density is ``hits / dim``).
    """

    column: str
    dim: int = TEXT_DIM
    n_hash: int = N_HASH
    seed: int = 0
    hits: int = HITS

    def __post_init__(self) -> None:
        if not 1 <= self.dim <= self.n_hash:
            raise ValueError(f"text column {self.column!r}: dim must be in 1..{self.n_hash}, got {self.dim}")
        if self.hits < 1:
            raise ValueError(f"text column {self.column!r}: hits must be >= 1, got {self.hits}")

    def transform(self, texts: Sequence[str] | np.ndarray) -> np.ndarray:
        """``[N, dim]`` float64 features of ``texts``; each row depends on its own text only."""
        from sklearn.feature_extraction.text import HashingVectorizer

        hashed = HashingVectorizer(
            ngram_range=(1, 2), alternate_sign=False, norm="l2", n_features=self.n_hash
        ).transform(list(texts))
        return np.asarray(
            (hashed @ _projection(self.n_hash, self.dim, self.seed, self.hits).T).toarray(), dtype=np.float64
        )

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the projection matrix this scikit-learn draws: equal fingerprints, equal features."""
        return _fingerprint(self.n_hash, self.dim, self.seed, self.hits)

    def feature_names(self) -> list[str]:
        """``<column>:rp<j>``: the names of the projected features."""
        return [f"{self.column}:rp{j}" for j in range(self.dim)]

    def to_json(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "dim": self.dim,
            "n_hash": self.n_hash,
            "seed": self.seed,
            "hits": self.hits,
            "ngram_range": [1, 2],
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> TextFeatures:
        """The settings recorded by :meth:`to_json` (the fingerprint is checked by the caller)."""
        return cls(
            str(value["column"]), int(value["dim"]), int(value["n_hash"]), int(value["seed"]), int(value["hits"])
        )


@functools.lru_cache(maxsize=4)
def _projection(n_hash: int, dim: int, seed: int, hits: int):
    """The seeded sparse random matrix ``[dim, n_hash]`` (scipy CSR); drawn from the seed only."""
    import scipy.sparse
    from sklearn.random_projection import SparseRandomProjection

    density = min(1.0, hits / dim)
    projection = SparseRandomProjection(n_components=dim, density=density, dense_output=True, random_state=seed)
    projection.fit(scipy.sparse.csr_matrix((1, n_hash)))  # fit reads only the width: the data is not used
    return projection.components_.tocsr()


@functools.lru_cache(maxsize=4)
def _fingerprint(n_hash: int, dim: int, seed: int, hits: int) -> str:
    matrix = _projection(n_hash, dim, seed, hits)
    digest = hashlib.sha256()
    for array in (matrix.indptr, matrix.indices, np.sign(matrix.data)):
        digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    digest.update(np.float64(np.abs(matrix.data).max(initial=0.0)).tobytes())
    return f"sha256:{digest.hexdigest()}"
