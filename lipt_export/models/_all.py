"""Imports every model family so each registers its ModelSpec."""
import importlib

for _name in ("lipt", "smsr", "esrt", "agileir"):
    try:
        importlib.import_module(f"lipt_export.models.{_name}")
    except ModuleNotFoundError as exc:  # a family still being written must not break the others
        if exc.name != f"lipt_export.models.{_name}":
            raise
