"""Model families, their reparameterizable blocks, checkpoint loading and the registry.

Importing this package imports every family, and each registers its ModelSpec (see ``registry``)."""
from lipt_export.models import agileir, esrt, lipt, smsr  # noqa: F401  (registers the families)
from lipt_export.models.registry import ModelSpec, available_models, build_model, get_spec  # noqa: F401
from lipt_export.models.reparam import reparameterize_model  # noqa: F401
