"""Model families, their reparameterizable blocks, checkpoint loading and the registry."""
from lipt_export.models.registry import ModelSpec, available_models, build_model, get_spec  # noqa: F401
from lipt_export.models.reparam import reparameterize_model  # noqa: F401
