"""Block-wise adapter weights, ``set_adapters(name, {"down": ..., "mid": ..., "up": ...})`` (issue 12).

SVDiff, DiffFit and MemControl adapt ``conv_in``, ``time_embedding.*`` and ``conv_out``, whose paths diffusers'
block-wise weights cannot place: the call raised a bare ``IndexError`` on the UNet and on the pipeline (a LoRA on
``conv_in`` too). The reference is a hand-scaled copy: the same adapter with its parameters' change scaled by the weight
each module's block gets, by the rule diffusers documents for LoRA, written out here (`_expected_weight`); modules
outside the blocks keep weight 1.0, as every module a block-wise dict does not name.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from peft import LoraConfig
from torch import nn

from peft_memcontrol import DiffFitConfig, MaskedAttentionConfig, MemControlConfig, SVDiffConfig
from peft_memcontrol.tuners import DiffFitLayer, MaskedAttentionLayer, MaskedTunerLayer, SVDiffLayer

from helpers.models import build_random_pipeline, build_sd15_unet, run, sd15_inputs


CONFIGS = {
    "svdiff": SVDiffConfig,
    "difffit": DiffFitConfig,
    "masked_attention": MaskedAttentionConfig,
    "memcontrol": MemControlConfig,
}
#: The brief's example, and one weight per transformer layer (lists) to tell every layer and block apart.
BLOCK_WEIGHTS = {
    "down_off": {"down": 0.0, "mid": 1.0, "up": 1.0},
    "per_layer": {
        "down": {"block_0": 0.1, "block_1": [0.2, 0.3], "block_2": 0.4},
        "mid": 0.5,
        "up": {"block_1": [0.6, 0.7, 0.8], "block_2": 0.9, "block_3": [0.15, 0.25, 0.35]},
    },
}
#: Transformer layers of the tiny SD-1.5 UNet: (side, block) -> number of ``attentions`` (down: 2, up: 3).
TRANSFORMER_LAYERS = {("down", 0): 2, ("down", 1): 2, ("down", 2): 2, ("up", 1): 3, ("up", 2): 3, ("up", 3): 3}


def _layer_weights(weights: dict) -> dict[str, float]:
    """``"down_blocks.1.attentions.0"`` -> weight, from a block-wise dict (a number for all, a dict per block, a list
    per transformer layer)."""
    expanded = {"mid_block.attentions.0": weights["mid"]}
    for (side, block), count in TRANSFORMER_LAYERS.items():
        value = weights[side]
        value = value[f"block_{block}"] if isinstance(value, dict) else value
        values = value if isinstance(value, list) else [value] * count
        expanded.update({f"{side}_blocks.{block}.attentions.{index}": values[index] for index in range(count)})
    return expanded


def _expected_weight(path: str, weights: dict) -> float:
    """The weight of the adapter layer at ``path``: its transformer layer's; for a resnet or sampler beside
    transformer layers, that of the transformer layer with its index; 1.0 for everything else."""
    layers = _layer_weights(weights)
    beside = re.match(r"((?:down|up)_blocks\.\d+)\.(?:resnets|downsamplers|upsamplers)\.(\d+)\.", path)
    if beside:
        return layers.get(f"{beside[1]}.attentions.{beside[2]}", 1.0)
    return next((weight for layer, weight in layers.items() if path.startswith(layer + ".")), 1.0)


def _our_layers(model: nn.Module) -> dict[str, MaskedTunerLayer]:
    return {path: module for path, module in model.named_modules() if isinstance(module, MaskedTunerLayer)}


def _singular_values(layer: SVDiffLayer) -> torch.Tensor:
    """The base weight's singular values in float64, as SVDiff sees the weight (a norm's scale vector as one row)."""
    weight = layer.get_base_layer().weight.detach().double()
    rows = 1 if layer.is_norm else weight.shape[0]
    return torch.linalg.svdvals(weight.reshape(rows, -1)).float()


@torch.no_grad()
def _scale_change(layer: MaskedTunerLayer, adapter: str, weight: float) -> None:
    """Edit ``adapter``'s parameters on ``layer`` so that at weight 1 they make ``weight`` times their change."""
    if isinstance(layer, SVDiffLayer):
        container = layer.mc_svdiff_norm_shift if layer.is_norm else layer.mc_svdiff_spectral_shift
        s = _singular_values(layer)
        # relu(s + d') - s = d' for d' = w (relu(s + d) - s), since s + d' = (1 - w) s + w relu(s + d) >= 0
        container[adapter].copy_(weight * (torch.relu(s + container[adapter]) - s))
    elif isinstance(layer, DiffFitLayer):
        for container in (layer.mc_difffit_gamma, layer.mc_difffit_residual_gamma):
            if adapter in container:
                container[adapter].copy_(1.0 + weight * (container[adapter] - 1.0))
        for container in (layer.mc_difffit_bias, layer.mc_difffit_norm_weight):
            if adapter in container:
                container[adapter].mul_(weight)
    else:
        assert isinstance(layer, MaskedAttentionLayer)
        for container in (layer.mc_masked_attention_weight_delta, layer.mc_masked_attention_bias_delta):
            if adapter in container:
                container[adapter].mul_(weight)


def _unet_with(method: str) -> nn.Module:
    unet = build_sd15_unet()
    torch.manual_seed(5)
    unet.add_adapter(CONFIGS[method](init_weights=False), adapter_name="ours")
    return unet


@pytest.mark.parametrize("weights_name", sorted(BLOCK_WEIGHTS))
@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_block_wise_weights_equal_a_hand_scaled_adapter(method, weights_name):
    weights = BLOCK_WEIGHTS[weights_name]
    unet = _unet_with(method)
    hand_scaled = copy.deepcopy(unet)
    paths = set(_our_layers(unet))
    assert {"conv_in", "time_embedding.linear_1", "conv_out"} <= paths or method == "masked_attention"

    unet.set_adapters("ours", weights)

    for path, layer in _our_layers(hand_scaled).items():
        _scale_change(layer, "ours", _expected_weight(path, weights))
    inputs = sd15_inputs()
    torch.testing.assert_close(run(unet, inputs), run(hand_scaled, inputs), atol=2e-5, rtol=1e-4)
    # the test can fail: the weights change the output
    assert (run(unet, inputs) - run(_unet_with(method), inputs)).abs().max() > 1e-3


def test_pipeline_set_adapters_gives_each_layer_its_block_weight():
    weights = BLOCK_WEIGHTS["per_layer"]
    pipeline = build_random_pipeline()
    pipeline.unet.add_adapter(SVDiffConfig(init_weights=False), adapter_name="ours")

    pipeline.set_adapters("ours", adapter_weights={"unet": weights})

    scales = {path: layer.mc_scale["ours"] for path, layer in _our_layers(pipeline.unet).items()}
    assert scales == {path: pytest.approx(_expected_weight(path, weights)) for path in scales}
    assert scales["conv_in"] == scales["time_embedding.linear_1"] == scales["conv_out"] == 1.0


def test_our_layers_get_the_weight_a_lora_gets_on_the_same_module():
    """As for LoRA: on every module both adapt, our scale equals LoRA's (``lora_alpha == r``, so scaling == weight).
    A LoRA on ``conv_in`` and ``time_embedding`` failed with the same IndexError before."""
    weights = BLOCK_WEIGHTS["per_layer"]
    ours = _unet_with("svdiff")
    lora = build_sd15_unet()
    lora.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=4,
            target_modules=["conv_in", "conv1", "conv2", "conv", "to_q", "proj_in", "linear_1", "conv_out"],
        )
    )

    ours.set_adapters("ours", weights)
    lora.set_adapters("default", weights)

    lora_scales = {
        path: module.scaling["default"] for path, module in lora.named_modules() if hasattr(module, "scaling")
    }
    our_scales = {path: layer.mc_scale["ours"] for path, layer in _our_layers(ours).items()}
    shared = sorted(set(lora_scales) & set(our_scales))
    assert len(shared) > 50 and {"conv_in", "time_embedding.linear_1"} <= set(shared)
    assert {path: our_scales[path] for path in shared} == {path: pytest.approx(lora_scales[path]) for path in shared}
