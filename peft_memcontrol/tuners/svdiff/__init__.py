from ..._registry import register_method
from .config import SVDiffConfig
from .layer import SVDiffLayer, spectral_factor_bytes
from .model import SVDiffModel


__all__ = ["SVDiffConfig", "SVDiffLayer", "SVDiffModel", "spectral_factor_bytes"]


register_method(peft_name="mc_svdiff", method="svdiff", config_cls=SVDiffConfig, model_cls=SVDiffModel)
