from ..._registry import register_method
from .config import MaskedAttentionConfig
from .layer import MaskedAttentionLayer
from .model import MaskedAttentionModel


__all__ = ["MaskedAttentionConfig", "MaskedAttentionLayer", "MaskedAttentionModel"]


# "attention" is the user-facing name of attention tuning (MemControlConfig(method="attention"), --method attention).
register_method(
    peft_name="mc_masked_attention",
    method="attention",
    config_cls=MaskedAttentionConfig,
    model_cls=MaskedAttentionModel,
)
