from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...svd import FACTOR_DTYPES, SpectralFactors, spectral_factors
from ..base import MaskedTunerConfig, MaskedTunerLayer
from ..targets import NORM_LAYERS
from .autograd import SpectralConv2d, SpectralLinear


class SVDiffLayer(MaskedTunerLayer):
    """Spectral shift of one ``Linear``/``Conv2d`` weight, or one scalar shift of a norm's scale vector.

    The layer owns the SVD of the weight it was created on (`spectral_factors`): every adapter on it shifts those
    singular values, whatever is merged into the base weight later, so that its change composes with other merges
    like a LoRA's does. The factors follow the layer's device through ``.to()`` (never its dtype); they are not part of
    the state dict (they are recomputed from the base weight on loading) and are freed with the layer.

    ``factor_dtype`` picks the dtype ``U`` and ``Vh`` are stored in when the weight is decomposed (``s`` stays
    float32; every route upcasts them to the dtype it computes in, float32 but for the autograd fallback): ``"auto"``
    (the default) stores them in the base weight's dtype where that is float16 or bfloat16 and in float32 otherwise;
    ``"float32"``, ``"float16"`` or ``"bfloat16"`` force one. Half-precision factors halve their memory; their rounding
    reaches the output only through the change, about 3e-4 (float16) or 2.3e-3 (bfloat16) of ``U diag(change) Vh``
    (``benchmarks/results/factor_dtype.md``, SD-1.5 shapes): at shifts of 0.1 s the adapted weight is off by 3e-5 or
    2.4e-4 of its norm, 7x under the 2e-4 or 1.6e-3 that rounding it to the base's own dtype costs. Rounded factors no
    longer rebuild ``W`` to float32 precision, so the factorized route's backward then takes ``W^T g`` from the weight
    (one more ``tokens x out x in`` product per step, which ``"auto"`` counts). It is a class attribute, not a config
    field, because the factors are never saved: an adapter loaded onto a float32 base gets float32 factors, the same
    adapter on a float16 base float16 ones. Set it before the adapter is created or loaded: factors already
    decomposed keep their dtype.

    The change ``U diag(relu(s + d) - s) Vh`` reaches the output by one of two exact routes (``formulation``):
    ``"rebuild"`` forms the adapted weight and runs the layer (a training step costs ``2 out x in x k`` to form and
    differentiate the weight, whatever the batch, plus the layer's ``3 tokens x out x in``); ``"factorized"`` runs the
    frozen layer and adds ``((x Vh^T) * change) U^T`` through `SpectralLinear` / `SpectralConv2d`, whose backward keeps
    only ``x Vh^T`` and skips the frozen weight (a step costs ``tokens x (out x in + 2 k x (in + out))``). ``"auto"``
    (the default) takes the cheaper one for each call from the layer's shape and the number of tokens (forward costs
    alone under ``torch.no_grad``): the factorized route where tokens are few (low-resolution blocks, cross-attention
    K/V, the time embedding), rebuilding where they are many.
    Both give the same outputs and gradients to float32 rounding; the factorized one computes in float32 whatever the
    input's dtype or autocast, and returns the dtype the base layer would.

    The factorized route needs the factors to describe the current weight and nothing but the shifts and inputs to
    need gradients. Where that is not known (the base layer's parameters are trainable; its weight was loaded,
    replaced or written in place after the decomposition; another adapter was merged into it) the route runs the base
    layer and adds the change through autograd instead (a step costs ``2 tokens x (out x in + k x (in + out))``),
    which is exact with whatever weight the layer holds.

    Forwards that need no gradient through the adapted weight (``torch.no_grad``, or neither the active shifts nor the
    base layer's parameters require one: generation, validation, the search's objectives) keep the adapted weight
    (``inference_cache``) and run the layer with it, as ``"rebuild"`` would, bit for bit; later such forwards cost
    what the base layer's do. It costs one extra weight per layer (in the base weight's dtype) while held: it is
    rebuilt when the active adapters, their shift parameters (their tensor and version counter: an optimizer step or a
    ``load_state_dict`` moves it), their scales or the base weight change; dropped by `merge`/`unmerge`, ``.to()``,
    `delete_adapter` and by the next forward that needs gradients; never held under ``torch.compile``. Writes through
    ``.data`` leave version counters alone and are not seen: set ``inference_cache = False`` (on the class or a
    layer) to turn it off. The weight is rebuilt in float32 whatever autocast is on, and cast to the base dtype.
    """

    adapter_layer_names = ("mc_svdiff_spectral_shift", "mc_svdiff_norm_shift")
    formulation: str = "auto"
    #: ``"auto"``, ``"float32"``, ``"float16"`` or ``"bfloat16"``: how ``U`` and ``Vh`` are stored (class docstring).
    factor_dtype: str = "auto"
    #: Keep the adapted weight between forwards that need no gradient (see the class docstring).
    inference_cache: bool = True
    #: ``(key, weight, bias)``: the adapted parameters and what they were computed from (`_inference_cache_key`).
    _inference_cache: tuple[tuple, torch.Tensor, torch.Tensor | None] | None = None
    _spectral: SpectralFactors | None = None
    #: ``(data_ptr, version)`` of the base weight when the factors were computed from it, or ``None``.
    _decomposed_weight_state: tuple[int, int] | None = None
    #: Set when the base weight may have changed in a way its version counter does not show (a state dict loaded into
    #: it, another adapter merged into it); cleared when the factors are dropped.
    _weight_changed: bool = False

    @property
    def is_norm(self) -> bool:
        return isinstance(self.get_base_layer(), NORM_LAYERS)

    @property
    def spectral_factors(self) -> SpectralFactors:
        """``(U, s, Vh)`` of the base weight this layer was created on, on the base weight's device; ``U`` and ``Vh``
        in the dtype ``factor_dtype`` picks, ``s`` in float32."""
        device = self.get_base_layer().weight.device
        if self._spectral is None:
            weight = self._originals[0] if self._originals is not None else self.get_base_layer().weight
            self._spectral = spectral_factors(weight, as_row=self.is_norm, dtype=self._factor_storage_dtype(weight))
            self._decomposed_weight_state = self._weight_state()
        elif self._spectral.device != device:
            self._spectral = self._spectral.to(device)
        return self._spectral

    def _factor_storage_dtype(self, weight: torch.Tensor) -> torch.dtype:
        """The dtype ``factor_dtype`` stores ``U`` and ``Vh`` of ``weight`` in."""
        if self.factor_dtype == "auto":
            return weight.dtype if weight.dtype in FACTOR_DTYPES else torch.float32
        names = {str(dtype).removeprefix("torch."): dtype for dtype in FACTOR_DTYPES}
        if self.factor_dtype not in names:
            raise ValueError(
                f"Unknown SVDiff factor_dtype {self.factor_dtype!r}; use 'auto' or one of {sorted(names)}."
            )
        return names[self.factor_dtype]

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> nn.Module:
        # `.to()`, `.cuda()` and `.half()` reach modules through `_apply`; the factors follow the device only.
        matched = self._factors_match_weight()
        self._inference_cache = None
        super()._apply(fn, recurse)
        if self._spectral is not None:
            self._spectral = self._spectral.to(self.get_base_layer().weight.device)
            self._decomposed_weight_state = self._weight_state() if matched else None
        return self

    def _weight_state(self) -> tuple[int, int]:
        weight = self.get_base_layer().weight
        return weight.data_ptr(), weight._version

    def _factors_match_weight(self) -> bool:
        """Whether the factors still describe the base weight, as far as can be known without reading it.

        Writes through ``weight.data`` leave the version counter alone; the ones this package and PEFT make (merges)
        pass through `merge`, and state dicts through `_load_from_state_dict`, which set ``_weight_changed``. Under
        ``torch.compile`` the version counter cannot be read (Dynamo treats it as data), so only those flags count.
        """
        if self._spectral is None or self._weight_changed or self._decomposed_weight_state is None:
            return False
        return torch.compiler.is_compiling() or self._decomposed_weight_state == self._weight_state()

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        # PEFT and diffusers call every tuner layer's merge; names not ours mean another adapter (a LoRA wrapping this
        # layer) is about to write its change into our base weight, which our factors then no longer describe.
        requested = self.active_adapters if adapter_names is None else adapter_names
        if any(name not in self.mc_components for name in requested):
            self._weight_changed = True
        self._inference_cache = None
        super().merge(safe_merge=safe_merge, adapter_names=adapter_names)

    def unmerge(self) -> None:
        self._inference_cache = None  # the base weight is written through ``.data``, which its version does not show
        super().unmerge()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        if any(key.startswith(prefix + "base_layer.") for key in state_dict):
            self._weight_changed = True
        self._inference_cache = None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def create_components(self, adapter_name: str, config: MaskedTunerConfig, components: frozenset) -> None:
        base = self.get_base_layer()
        if self.is_norm:
            container, size = "mc_svdiff_norm_shift", 1
        else:
            container, size = "mc_svdiff_spectral_shift", min(base.weight.shape[0], base.weight[0].numel())
        shift = torch.zeros(size)
        if base.weight.device.type != "meta":
            singular_values = self.spectral_factors.s  # decompose now: set-up cost and errors show up at injection
            if not config.init_weights:
                shift = 0.2 * singular_values.cpu() * torch.randn(size)
        self._new_parameter(container, adapter_name, shift)

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self._inference_cache = None
        if not self.mc_components:
            self._spectral = None
            self._decomposed_weight_state, self._weight_changed = None, False

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters or self.merged:
            return super().forward(x, *args, **kwargs)
        active = [name for name in self.active_adapters if name in self.mc_components]
        if active and not torch.compiler.is_compiling():
            if self._inference_cache_applies(active):
                return self._base_operation(x, *self._cached_parameters(active))
            self._inference_cache = None  # a forward that needs gradients: free the extra weight
        if self.is_norm or not active:
            return super().forward(x, *args, **kwargs)
        spectral_route = self._spectral_route_applies()
        if not self._takes_factorized_route(x, spectral_route):
            return super().forward(x, *args, **kwargs)
        if spectral_route:
            return self._spectral_forward(x, active)
        output = self.base_layer(x, *args, **kwargs)
        return output + self._factorized_change(x, active).to(output.dtype)

    @property
    def _shift_container(self) -> nn.ParameterDict:
        return self.mc_svdiff_norm_shift if self.is_norm else self.mc_svdiff_spectral_shift

    def _inference_cache_applies(self, active: list[str]) -> bool:
        """Whether this forward may run with the cached adapted weight: the cache is on and no gradient flows
        through the weight (gradients to the input need none)."""
        if not self.inference_cache:
            return False
        if not torch.is_grad_enabled():
            return True
        trained = [self._shift_container[name] for name in active] + list(self.get_base_layer().parameters())
        return not any(parameter.requires_grad for parameter in trained)

    def _inference_cache_key(self, active: list[str]) -> tuple:
        """What the adapted parameters are computed from, as cheap values: the active adapters in order, each one's
        shift tensor, version counter and scale, and the base weight's and bias's tensor, version, dtype and
        device."""
        shifts = tuple(
            (name, self._shift_container[name].data_ptr(), self._shift_container[name]._version, self.mc_scale[name])
            for name in active
        )
        base = self.get_base_layer()
        parameters = tuple(
            None
            if parameter is None
            else (parameter.data_ptr(), parameter._version, parameter.dtype, parameter.device)
            for parameter in (base.weight, base.bias)
        )
        return shifts, parameters

    def _cached_parameters(self, active: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The adapted ``(weight, bias)`` of ``active``, computed as the ``"rebuild"`` route does and kept until what
        they were computed from changes."""
        key = self._inference_cache_key(active)
        if self._inference_cache is None or self._inference_cache[0] != key:
            with torch.no_grad():
                weight, bias = self.adapted_parameters(active)
            self._inference_cache = (key, weight, bias)
        return self._inference_cache[1], self._inference_cache[2]

    def _spectral_route_applies(self) -> bool:
        """Whether `SpectralLinear`/`SpectralConv2d` compute this layer exactly with every gradient it needs: the
        factors describe the base weight and none of the base layer's parameters is trained."""
        base = self.get_base_layer()
        return not any(parameter.requires_grad for parameter in base.parameters()) and self._factors_match_weight()

    def _spectral_forward(self, x: torch.Tensor, active: list[str]) -> torch.Tensor:
        """The adapted output ``W x + bias + U diag(sum of the active adapters' scaled changes) Vh x``, in float32."""
        u, s, vh = self.spectral_factors
        change = sum(self._singular_value_change(self.mc_svdiff_spectral_shift, name, s) for name in active)
        base = self.get_base_layer()
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        # the weight as stored: the functions upcast it per product rather than keep a float32 copy for backward
        weight, bias = base.weight, None if base.bias is None else base.bias.float()
        with torch.autocast(device, enabled=False):
            if isinstance(base, nn.Linear):
                output = SpectralLinear.apply(x.float(), weight, bias, u, s, change, vh)
            else:
                kernel = vh.reshape(s.shape[0], *base.weight.shape[1:])
                geometry = (base.stride, base.padding, base.dilation)
                output = SpectralConv2d.apply(x.float(), weight, bias, u, s, change, kernel, *geometry)
        return output.to(dtype)

    def _takes_factorized_route(self, x: torch.Tensor, spectral_route: bool | None = None) -> bool:
        """Whether ``formulation`` (or, for ``"auto"``, the costs in the class docstring) picks the factorized route
        for input ``x``; ``spectral_route`` is `_spectral_route_applies` (found here when not given). Grouped or
        non-zero-padded convolutions always rebuild."""
        if self.formulation not in ("auto", "rebuild", "factorized"):
            raise ValueError(
                f"Unknown SVDiff formulation {self.formulation!r}; use 'auto', 'rebuild' or 'factorized'."
            )
        base = self.get_base_layer()
        if isinstance(base, nn.Conv2d) and (base.groups != 1 or base.padding_mode != "zeros"):
            return False
        if self.formulation != "auto":
            return self.formulation == "factorized"
        rows, columns = base.weight.shape[0], base.weight[0].numel()
        rank = min(rows, columns)
        if isinstance(base, nn.Linear):
            tokens = x.numel() // max(x.shape[-1], 1)
        else:
            tokens = x.shape[0] * x.shape[-2] * x.shape[-1] // (base.stride[0] * base.stride[1])
        passes = 2 if torch.is_grad_enabled() else 1  # forward, and backward to the inputs and the shifts
        # the frozen layer runs in the forward; the backward skips it with `SpectralLinear`, not through autograd,
        # unless the factors are rounded to half precision (then they no longer stand for the weight there)
        if spectral_route is None:
            spectral_route = self._spectral_route_applies()
        frozen_layer = 1 if spectral_route and self._spectral.u.dtype == torch.float32 else passes
        factorized = passes * tokens * rank * (rows + columns) + frozen_layer * tokens * rows * columns
        rebuild = passes * rows * columns * rank + (2 * passes - 1) * tokens * rows * columns
        return factorized < rebuild

    def _factorized_change(self, x: torch.Tensor, active: list[str]) -> torch.Tensor:
        """``x`` through ``U diag(sum of the active adapters' scaled shifts) Vh`` (their changes add)."""
        u, s, vh = self.spectral_factors
        shift = sum(self._singular_value_change(self.mc_svdiff_spectral_shift, name, s) for name in active)
        base = self.get_base_layer()
        dtype = x.dtype if x.is_floating_point() else torch.float32
        u, vh, shift = u.to(dtype), vh.to(dtype), shift.to(dtype)
        if isinstance(base, nn.Linear):
            return F.linear(F.linear(x.to(dtype), vh) * shift, u)
        rank = s.shape[0]
        projected = F.conv2d(
            x.to(dtype), vh.reshape(rank, *base.weight.shape[1:]), None, base.stride, base.padding, base.dilation
        )
        return F.conv2d(projected * shift[:, None, None], u[:, :, None, None])

    def _singular_value_change(
        self, container: nn.ParameterDict, adapter_name: str, s: torch.Tensor, scale: float | None = None
    ) -> torch.Tensor:
        """``scale * (relu(s + d) - s)``: what ``adapter_name`` adds to each singular value (``scale`` defaults to the
        adapter's own)."""
        scale = self.mc_scale[adapter_name] if scale is None else scale
        return scale * (torch.relu(s + container[adapter_name]) - s)

    def apply_adapter(
        self, adapter_name: str, weight: torch.Tensor, bias: torch.Tensor | None, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        u, s, vh = self.spectral_factors
        # in float32, whatever the factors are stored in: under bf16/fp16 autocast too, and with shifts cast to float64
        # by ``.to()``
        change = self._singular_value_change(self._shift_container, adapter_name, s, scale).float()
        with torch.autocast(u.device.type, enabled=False):
            delta = (u.float() * change) @ vh.float()
        return weight + delta.reshape(weight.shape), bias


def spectral_factor_bytes(model: nn.Module) -> int:
    """Bytes of the SVD factors the SVDiff layers of ``model`` hold (each distinct set counted once).

    They are not parameters or buffers (never saved, never cast with the model), so ``state_dict`` and parameter
    counts do not show them; counted in the dtypes they are stored in (`SVDiffLayer.factor_dtype`). On SD-1.5 float32
    factors are larger than the UNet's float16 weights.
    """
    held = {
        id(module._spectral): module._spectral
        for module in model.modules()
        if isinstance(module, SVDiffLayer) and module._spectral is not None
    }
    return sum(factors.nbytes for factors in held.values())
