"""The parts of a diffusers denoiser that slots and methods are found from, discovered by type, never by name.

Attention modules are diffusers' ``Attention`` (UNets, DiT, PixArt, SD3) or any module with its
``AttentionModuleMixin`` (FLUX's ``FluxAttention`` and newer models), whatever they are called in their block
(``attn1``/``attn2`` in a ``BasicTransformerBlock``, ``attn`` in SD3's and FLUX's blocks). A *transformer block* is a
module with an attention module among its direct children; a *block list* is a ``ModuleList`` of transformer blocks
(``transformer_blocks`` of DiT, PixArt and SD3; ``transformer_blocks`` and ``single_transformer_blocks`` of FLUX).
"""

from __future__ import annotations

from collections.abc import Mapping

from diffusers.models.attention import Attention, AttentionModuleMixin, FeedForward
from torch import nn


ATTENTION_TYPES = (Attention, AttentionModuleMixin)
"""The classes of diffusers' attention modules."""

ATTENTION_OUTPUTS = ("to_out.0", "to_add_out")
"""An attention module's output projections, relative to it: of the image stream and (joint attention) the text
stream. Each ends a residual branch of its block."""


def is_attention(module: nn.Module) -> bool:
    """Whether ``module`` is a diffusers attention module."""
    return isinstance(module, ATTENTION_TYPES)


def is_transformer_block(module: nn.Module) -> bool:
    """Whether ``module`` is a transformer block: an attention module is one of its direct children."""
    return not isinstance(module, nn.ModuleList) and any(is_attention(child) for child in module.children())


def block_lists(model: nn.Module) -> list[str]:
    """Names of ``model``'s direct children that are non-empty lists of transformer blocks, in registration order
    (the order data flows through a DiT-style transformer: FLUX's joint blocks before its single-stream blocks)."""
    return [
        name
        for name, child in model.named_children()
        if isinstance(child, nn.ModuleList) and len(child) > 0 and all(is_transformer_block(b) for b in child)
    ]


def attention_projections(modules: Mapping[str, nn.Module]) -> dict[str, bool]:
    """Every projection of every attention module: path -> whether it is an output projection (`ATTENTION_OUTPUTS`).

    A projection is a ``Linear`` inside an attention module (``to_q``, ``to_k``, ``to_v``, ``to_out.0``; the text
    stream's ``add_q_proj``, ``add_k_proj``, ``add_v_proj``, ``to_add_out`` in joint attention), outside its attention
    processor (an IP-Adapter processor holds weights of its own).

    Args:
        modules: path -> module of the whole model (``dict(model.named_modules())``, or the base modules).
    """
    attentions = {path for path, module in modules.items() if is_attention(module)}
    projections: dict[str, bool] = {}
    for path, module in modules.items():
        if not isinstance(module, nn.Linear):
            continue
        parts = path.split(".")
        owner = next(
            (".".join(parts[:end]) for end in range(len(parts) - 1, 0, -1) if ".".join(parts[:end]) in attentions),
            None,
        )
        if owner is None:
            continue
        relative = path[len(owner) + 1 :]
        if not relative.startswith("processor."):
            projections[path] = relative in ATTENTION_OUTPUTS
    return projections


def residual_outputs(modules: Mapping[str, nn.Module]) -> list[str]:
    """The ``Linear`` layers that end a residual branch of a transformer block, in module order.

    They are an attention module's output projections, the last ``Linear`` of every diffusers ``FeedForward`` (``ff``,
    SD3's and FLUX's ``ff_context``), and, for a block whose attention has no output projection of its own (FLUX's
    single-stream blocks, where attention and MLP outputs meet), the block's ``proj_out``.
    """
    outputs = [path for path, is_output in attention_projections(modules).items() if is_output]
    for path, module in modules.items():
        if isinstance(module, FeedForward):
            linears = [
                inner
                for inner, child in modules.items()
                if inner.startswith(path + ".") and isinstance(child, nn.Linear)
            ]
            outputs.extend(linears[-1:])
        elif is_transformer_block(module) and isinstance(modules.get(f"{path}.proj_out"), nn.Linear):
            attentions = [name for name, child in module.named_children() if is_attention(child)]
            if not any(f"{path}.{name}.{output}" in modules for name in attentions for output in ATTENTION_OUTPUTS):
                outputs.append(f"{path}.proj_out")
    order = {path: index for index, path in enumerate(modules)}
    return sorted(set(outputs), key=order.__getitem__)
