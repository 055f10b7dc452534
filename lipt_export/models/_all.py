"""Imports every model family so each registers its ModelSpec."""
from lipt_export.models import agileir, esrt, lipt, smsr  # noqa: F401
