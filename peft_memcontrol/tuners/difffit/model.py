from __future__ import annotations

from torch import nn

from ...slots import Candidates
from ..base import MaskedTuner, MaskedTunerLayer, iter_base_modules
from ..targets import ATTENTION_OUTPUT, ATTENTION_PROJECTIONS, BLOCK_ATTENTIONS, NORM_LAYERS
from .config import DiffFitConfig
from .layer import DiffFitLayer


def transformer_blocks(modules: dict[str, nn.Module]) -> list[str]:
    """Paths of the transformer blocks (modules with ``attn1`` and ``ff``, e.g. diffusers' BasicTransformerBlock)."""
    return [
        path
        for path, module in modules.items()
        if isinstance(getattr(module, "attn1", None), nn.Module) and isinstance(getattr(module, "ff", None), nn.Module)
    ]


def _last_linear(modules: dict[str, nn.Module], prefix: str) -> str | None:
    linears = [path for path, module in modules.items() if path.startswith(prefix) and isinstance(module, nn.Linear)]
    return linears[-1] if linears else None


class DiffFitModel(MaskedTuner):
    """Applies `DiffFitConfig` to a diffusers UNet or transformer (created by ``get_peft_model``)."""

    prefix: str = "mc_difffit_"
    tuner_layer_cls = DiffFitLayer

    @classmethod
    def candidates(cls, model: nn.Module, config: DiffFitConfig) -> Candidates:
        modules = dict(iter_base_modules(model))
        found: dict[str, dict[str, bool]] = {}
        for path, module in modules.items():
            if isinstance(module, NORM_LAYERS) and module.weight is not None:
                found[path] = {"norm": False}
            elif isinstance(module, (nn.Linear, nn.Conv2d)) and module.bias is not None:
                found[path] = {"bias": False}
        for block in transformer_blocks(modules):
            for attention in BLOCK_ATTENTIONS:
                for projection in ATTENTION_PROJECTIONS:
                    path = f"{block}.{attention}.{projection}"
                    if isinstance(modules.get(path), nn.Linear):
                        found.setdefault(path, {})["gamma"] = True
                        if projection == ATTENTION_OUTPUT:
                            found[path]["residual_gamma"] = True
            feed_forward_out = _last_linear(modules, f"{block}.ff.")
            if feed_forward_out is not None:
                found.setdefault(feed_forward_out, {})["residual_gamma"] = True
        return found

    @classmethod
    def component_numel(cls, module: nn.Module, component: str, config: DiffFitConfig) -> int:
        if component in ("gamma", "residual_gamma"):
            return module.weight.shape[0]
        if component == "bias":
            return module.bias.numel()
        return module.weight.numel() + (module.bias.numel() if module.bias is not None else 0)

    @classmethod
    def layer_class(cls, config: DiffFitConfig) -> type[MaskedTunerLayer]:
        return DiffFitLayer
