from ..._registry import register_method
from .config import MaskedAttentionConfig
from .layer import MaskedAttentionLayer
from .model import MaskedAttentionModel


__all__ = ["MaskedAttentionConfig", "MaskedAttentionLayer", "MaskedAttentionModel"]


register_method(
    peft_name="mc_masked_attention",
    method="masked_attention",
    config_cls=MaskedAttentionConfig,
    model_cls=MaskedAttentionModel,
)
