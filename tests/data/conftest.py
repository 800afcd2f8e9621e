"""The label store's tests run on each database it supports."""

import pytest


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A new, empty database of each kind the store supports: SQLite in a workspace, a PostgreSQL database on the
    session's throwaway cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'labels.db'}"
    return request.getfixturevalue("postgres_database")()
