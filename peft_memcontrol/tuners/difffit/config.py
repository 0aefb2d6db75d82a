from __future__ import annotations

from dataclasses import dataclass

from ..base import MaskedTunerConfig


@dataclass
class DiffFitConfig(MaskedTunerConfig):
    """DiffFit (Xie et al. 2023) as the MemControl reference code ports it to the Stable Diffusion UNet.

    In every transformer block: scale vectors gamma (init 1) on the outputs of ``to_q``, ``to_k``, ``to_v`` and
    ``to_out`` of both attentions, and on the three residual branches (self-attention, cross-attention,
    feed-forward): 11 x dim values per block. In addition every bias and every norm scale and shift of the model
    is trained, as deltas kept in the adapter (so disabling, unmerging, deleting and several adapters work, unlike
    training the base parameters in place). Under ``"paper"`` semantics the mask switches only the gammas.
    """
