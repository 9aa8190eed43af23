"""Model registry, loading and execution."""

from .loading import Model, load_model
from .registry import DEFAULT_MODEL, REGISTRY

__all__ = ["Model", "load_model", "DEFAULT_MODEL", "REGISTRY"]
