from .config import DiffFitConfig
from .layer import DiffFitLayer
from .model import DiffFitModel


__all__ = ["DiffFitConfig", "DiffFitLayer", "DiffFitModel"]
