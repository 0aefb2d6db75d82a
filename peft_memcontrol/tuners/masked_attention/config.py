from __future__ import annotations

from dataclasses import dataclass, field

from ..base import MaskedTunerConfig


@dataclass
class MaskedAttentionConfig(MaskedTunerConfig):
    """Masked attention tuning: train the attention projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0`` of ``attn1``
    and ``attn2``) of the selected slots, as full-size weight (and bias) deltas that merge exactly.

    Args:
        attention_only: train only the projections. ``False`` (the reference code's setting) also trains the rest
            of every slot (feed-forward, norms, ``proj_in``/``proj_out``), which the mask never switches under
            ``"paper"`` semantics.
    """

    attention_only: bool = field(default=False, metadata={"help": "Train only the attention projections."})
