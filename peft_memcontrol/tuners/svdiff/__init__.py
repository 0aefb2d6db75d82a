from .config import SVDiffConfig
from .layer import SVDiffLayer
from .model import SVDiffModel


__all__ = ["SVDiffConfig", "SVDiffLayer", "SVDiffModel"]
