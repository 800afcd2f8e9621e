"""The error of a dataset that cannot be used: its own module, so that every importer (tables, image folders, the
feature store) raises it without importing the others."""


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the source, the place and the problem."""
