from ..._registry import register_method
from .config import DiffFitConfig
from .layer import DiffFitLayer
from .model import DiffFitModel


__all__ = ["DiffFitConfig", "DiffFitLayer", "DiffFitModel"]


register_method(peft_name="mc_difffit", method="difffit", config_cls=DiffFitConfig, model_cls=DiffFitModel)
