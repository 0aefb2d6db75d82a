from __future__ import annotations

from dataclasses import dataclass, field

from ..base import MaskedTunerConfig


@dataclass
class SVDiffConfig(MaskedTunerConfig):
    """SVDiff (Han et al. 2023): spectral shifts of the UNet's weights, optionally masked by slot.

    Every ``Linear`` and ``Conv2d`` weight ``W = U diag(s) V^T`` (a conv kernel reshaped to ``out x in*kh*kw``) gets a
    trainable shift ``d``, one value per singular value: ``W' = U diag(relu(s + d)) V^T``. With ``train_norms`` every
    ``GroupNorm``/``LayerNorm`` scale, seen as a ``1 x C`` matrix, gets one scalar shift, trained at
    ``norm_learning_rate`` as in the reference code (`adapter_param_groups` builds the optimizer groups). The SVD
    is computed once, in float32, and never saved; its singular vectors are stored in float32, or in the base weight's
    half precision for float16/bfloat16 bases (`SVDiffLayer.factor_dtype`: a runtime choice, not part of the config).

    Args:
        train_norms: also shift the norm layers' scales.
        norm_learning_rate: learning rate of the norm shifts (the reference uses 1e-6).
    """

    train_norms: bool = field(default=True, metadata={"help": "Also shift GroupNorm/LayerNorm scales."})
    norm_learning_rate: float = field(default=1e-6, metadata={"help": "Learning rate of the norm shifts."})
