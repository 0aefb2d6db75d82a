from ..._registry import register_method
from .config import MemControlConfig
from .model import MemControlModel


__all__ = ["MemControlConfig", "MemControlModel"]


# A MemControl adapter applies one of the base methods, so it is none itself (method=None).
register_method(peft_name="mc_memcontrol", method=None, config_cls=MemControlConfig, model_cls=MemControlModel)
