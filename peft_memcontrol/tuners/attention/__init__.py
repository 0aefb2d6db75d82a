from .config import MaskedAttentionConfig
from .layer import MaskedAttentionLayer
from .model import MaskedAttentionModel


__all__ = ["MaskedAttentionConfig", "MaskedAttentionLayer", "MaskedAttentionModel"]
