from .config import METHOD_NAMES, MemControlConfig
from .model import MemControlModel


__all__ = ["METHOD_NAMES", "MemControlConfig", "MemControlModel"]
