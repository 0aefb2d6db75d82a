"""What the masked methods share: the config fields, the layer protocol and the tuner.

Every layer of this package adapts a wrapped ``Linear``, ``Conv2d``, ``GroupNorm`` or ``LayerNorm`` by computing
*adapted parameters* (weight, bias) from the base ones and running the base layer's own operation with them. That one
design gives every method exact merging (write the adapted parameters into the base layer), exact unmerging that
composes with other adapters merged into the same weights (take back only our change; the originals come back
bit-exactly when nothing else merged), several adapters (applied in turn), adapter weights for diffusers'
``set_adapters`` (each method scales its change) and float32 adapter math on fp16/bf16 models.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, _ExcludedModule, check_adapters_to_merge
from peft.utils import AuxiliaryTrainingWrapper
from torch import nn

from .._registry import method_of
from ..model_parts import is_attention
from ..slots import GRANULARITIES, SEMANTICS, AdapterPlan, Candidates, Mask, find_slot_containers, resolve_plan
from .checkpoint import check_adapter_state_dict
from .model_card import ModelFacts, search_provenance, write_model_card
from .targets import SUPPORTED_LAYERS


@dataclass
class MaskedTunerConfig(PeftConfig):
    """Fields shared by the masked methods (`SVDiffConfig`, `DiffFitConfig`, `MaskedAttentionConfig`).

    Args:
        mask: unit name -> bool (a `Mask` or a plain dict); ``None`` switches every unit on, which is the plain
            method. Units are slots, blocks or layers depending on ``granularity``; `slot_units` lists them.
        granularity: ``"slot"`` (each attention container, 16 on SD-1.5), ``"block"`` or ``"layer"``.
        mask_semantics: ``"paper"`` (a 0 bit freezes only the method's parameters inside that slot's
            transformer blocks, as the reference code does) or ``"strict"`` (nothing outside the selected units is
            adapted).
        target_modules: optional further restriction: module names or a regex; only modules that the method and
            the mask select AND that match are adapted.
        exclude_modules: module names or a regex never to adapt.
        init_weights: ``True`` starts at the identity (the adapted model equals the base model). ``False`` draws a
            small random change, for tests.
    """

    mask: dict[str, bool] | None = field(default=None, metadata={"help": "Unit name -> bool; None = all on."})
    granularity: str = field(default="slot", metadata={"help": "'slot', 'block' or 'layer'."})
    mask_semantics: str = field(default="paper", metadata={"help": "'paper' or 'strict'."})
    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Optional further restriction (names or regex)."}
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module names or regex never to adapt."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained fully and saved beside the adapter (e.g. ['conv_out'])."}
    )
    init_weights: bool = field(default=True, metadata={"help": "False: random non-identity init, for tests."})
    trainable_parameters: int | None = field(
        default=None, metadata={"help": "Set when the adapter is created: parameters it trains."}
    )
    trainable_share: float | None = field(
        default=None, metadata={"help": "Set when the adapter is created: trainable_parameters / base parameters."}
    )

    def __post_init__(self):
        super().__post_init__()
        self._check_booleans()
        self.peft_type = method_of(self).peft_type
        if self.mask is not None:
            self.mask = Mask(self.mask).to_dict()  # refuses a value that is not a bool or 1/0, such as "false"
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"Unknown granularity {self.granularity!r}; choose one of {GRANULARITIES}.")
        if self.mask_semantics not in SEMANTICS:
            raise ValueError(f"Unknown mask_semantics {self.mask_semantics!r}; choose one of {SEMANTICS}.")
        self._check_module_patterns()
        if isinstance(self.target_modules, set):
            self.target_modules = sorted(self.target_modules)

    def _check_booleans(self) -> None:
        """Refuse a field typed ``bool`` that holds anything else.

        A hand-edited ``adapter_config.json`` with ``"train_norms": "false"`` would otherwise be read as on
        (``bool("false")`` is true), and ``0``/``1`` or ``null`` would pass unnoticed.
        """
        for config_field in fields(self):
            if config_field.type not in ("bool", bool):
                continue
            value = getattr(self, config_field.name)
            if not isinstance(value, bool):
                raise ValueError(
                    f"{type(self).__name__}.{config_field.name} must be a bool, got {value!r} "
                    f"({type(value).__name__}); write true or false (JSON) or True or False (Python)."
                )

    def _check_module_patterns(self) -> None:
        """Refuse ``target_modules``/``exclude_modules`` that are not None, a regex string or a list of names (a
        hand-edited ``adapter_config.json`` would otherwise fail deep inside the matching), and LoRA's
        ``"all-linear"`` shortcut, which would silently match nothing as a regex."""
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            names = isinstance(value, (list, tuple, set)) and all(isinstance(entry, str) for entry in value)
            if value is not None and not isinstance(value, str) and not names:
                raise ValueError(
                    f"{type(self).__name__}.{name} must be None, a regex string or a list of module names, got "
                    f'{value!r} ({type(value).__name__}); e.g. ["to_q", "to_k"] or ".*attn2.*".'
                )
        if isinstance(self.target_modules, str) and self.target_modules.lower() == "all-linear":
            raise ValueError(
                f'{type(self).__name__}(target_modules="all-linear"): "all-linear" is a LoRA shortcut that '
                "peft_memcontrol's methods do not take, since each method chooses the layers it adapts. Leave "
                'target_modules unset to adapt all of them, or restrict them with module names (["to_q", "to_k"]) '
                'or a regex over module paths (".*attn2.*").'
            )

    def save_pretrained(self, save_directory: str, **kwargs: Any) -> None:
        """Save ``adapter_config.json`` and the adapter's model card (README.md, `write_model_card`): what the adapter
        is, how to load it and, for a searched mask, the search's provenance. Every way of saving an adapter
        (``PeftModel.save_pretrained``, `push_adapter_to_hub`) saves the config, so every saved adapter has the card."""
        super().save_pretrained(save_directory, **kwargs)
        write_model_card(
            save_directory, ModelFacts.from_method(self, "adapter"), search=search_provenance(self.to_dict())
        )


def iter_base_modules(model: nn.Module):
    """Yield ``(path, module)`` for the model's own modules, seeing through adapter layers and ``modules_to_save``
    wrappers already injected."""
    skip: list[str] = []
    for path, module in model.named_modules():
        if any(path.startswith(prefix) for prefix in skip):
            continue
        if isinstance(module, BaseTunerLayer):
            skip.append(path + ".")
            yield path, module.get_base_layer()
        elif isinstance(module, AuxiliaryTrainingWrapper):
            skip.append(path + ".")
            yield path, module.original_module
        else:
            yield path, module


def _trained_whole(model: nn.Module, config: MaskedTunerConfig) -> list[str]:
    """Paths of the modules trained whole, where the method adapts nothing: ``config``'s `_saved_modules` and those
    that an earlier adapter's ``modules_to_save`` already wraps."""
    wrapped = [path for path, module in model.named_modules() if isinstance(module, AuxiliaryTrainingWrapper)]
    return wrapped + _saved_modules(model, config)


def count_model_parameters(model: nn.Module) -> int:
    """Parameters of the base model (adapter parameters excluded)."""
    return sum(
        parameter.numel() for _, module in iter_base_modules(model) for parameter in module.parameters(recurse=False)
    )


def _matches(patterns: list[str] | str | None, path: str) -> bool:
    if patterns is None:
        return False
    if isinstance(patterns, str):
        return re.fullmatch(patterns, path) is not None
    return any(path == pattern or path.endswith("." + pattern) for pattern in patterns)


def _target_entries(patterns: list[str] | str) -> list[list[str] | str]:
    """Each entry of ``target_modules`` as a pattern of its own: the regex string, or each name as a one-name list."""
    return [patterns] if isinstance(patterns, str) else [[name] for name in patterns]


def _refuse_unmatched_targets(model: nn.Module, config: MaskedTunerConfig, candidates: Candidates) -> None:
    """Raise if an entry of ``config.target_modules`` matches none of the modules the method adapts on ``model``
    (a typo would otherwise silently train less), naming the entry and what it matches instead."""
    if config.target_modules is None:
        return
    problems = []
    for entry in _target_entries(config.target_modules):
        if any(_matches(entry, path) for path in candidates):
            continue
        elsewhere = [path for path, _ in iter_base_modules(model) if path and _matches(entry, path)]
        shown = entry if isinstance(entry, str) else entry[0]
        problems.append(
            f"{shown!r} matches {elsewhere[:3]}{' ...' if len(elsewhere) > 3 else ''}, which it does not adapt"
            if elsewhere
            else f"{shown!r} matches no module of {type(model).__name__}"
        )
    if problems:
        raise ValueError(
            f"target_modules of {type(config).__name__}: " + "; ".join(problems) + ". A name matches a module "
            'path or its end ("to_q", "attn2.to_k"); a string is a regex over whole paths. Leave target_modules '
            "unset to adapt everything the method adapts."
        )


def _refuse_slots_without_attention(model: nn.Module, config: MaskedTunerConfig) -> None:
    """Raise if a slot of ``model`` holds no attention module that the method could adapt: its bit would switch
    less than it claims, and the method would silently train less than on a diffusers model."""
    attentions = [path for path, module in iter_base_modules(model) if is_attention(module)]
    empty = [
        container.name
        for container in find_slot_containers(model, required=False)
        if not any(path == container.name or container.contains(path) for path in attentions)
    ]
    if empty:
        method = type(config).__name__.removesuffix("Config")
        raise ValueError(
            f"{method} finds no attention module in {len(empty)} slot(s) of {type(model).__name__} ({empty[:3]}...): it "
            "adapts the projections of attention modules, found by type (diffusers' `Attention` or "
            "`AttentionModuleMixin`), and a custom attention class is neither, so these slots' bits would switch "
            "nothing it trains there. Build the model from diffusers' attention classes, or use SVDiffConfig, "
            "which adapts every linear layer."
        )


def _saved_modules(model: nn.Module, config: MaskedTunerConfig) -> list[str]:
    """Paths of the modules ``config.modules_to_save`` names, matched as PEFT's ``ModulesToSaveWrapper`` matches them
    (a path ending with an entry). They are trained and saved whole, so the method adapts nothing inside them.

    Raises:
        ValueError: naming an entry that matches no module (it would silently train nothing).
    """
    if not config.modules_to_save:
        return []
    paths = [path for path, _ in iter_base_modules(model) if path]
    unmatched = [entry for entry in config.modules_to_save if not any(path.endswith(entry) for path in paths)]
    if unmatched:
        raise ValueError(
            f"modules_to_save of {type(config).__name__}: {unmatched} match no module of {type(model).__name__}; "
            'name modules by their path or its end, e.g. ["conv_out"].'
        )
    return [path for path in paths if path.endswith(tuple(config.modules_to_save))]


def _adapter_names(layer: BaseTunerLayer) -> list[str]:
    """The adapters a PEFT layer holds (the keys of its adapter containers)."""
    names: set[str] = set()
    for container_name in layer.adapter_layer_names:
        container = getattr(layer, container_name, None)
        if isinstance(container, (nn.ModuleDict, nn.ParameterDict, dict)):
            names.update(container.keys())
    return sorted(names)


def _restore(original: torch.Tensor, current: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
    """``original + (current - merged)``, computed in float32 and returned in ``original``'s dtype.

    Where nothing changed the merged value (``current == merged``) the original comes back bit-exactly (signed zeros
    included); elsewhere it comes back with whatever other adapters merged after ours.
    """
    composed = (original.float() + (current.detach().float() - merged.float())).to(original.dtype)
    return torch.where(current == merged, original, composed)


class MaskedTunerLayer(nn.Module, BaseTunerLayer):
    """Base class of the layers: adapted parameters in float32, merge/unmerge, scaling.

    Subclasses set ``adapter_layer_names`` (``nn.ParameterDict`` attributes keyed by adapter name) and implement
    `create_components` and `apply_adapter`.
    """

    other_param_names = ("mc_scale", "mc_components")

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: MaskedTunerConfig, components: frozenset):
        super().__init__()
        if not isinstance(base_layer, SUPPORTED_LAYERS):
            raise TypeError(f"{type(self).__name__} adapts {SUPPORTED_LAYERS}, got {type(base_layer).__name__}.")
        self.base_layer = base_layer
        for name in self.adapter_layer_names:
            setattr(self, name, nn.ParameterDict())
        self.mc_scale: dict[str, float] = {}
        self.mc_components: dict[str, frozenset] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._active_adapter = adapter_name
        self._originals: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.update_layer(adapter_name, config, components)

    # -- adapters -------------------------------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, config: MaskedTunerConfig, components: frozenset) -> None:
        """Create ``adapter_name``'s parameters for ``components`` (float32, on the base layer's device)."""
        if adapter_name in self.mc_components:
            raise ValueError(f"Adapter {adapter_name!r} already exists on this layer.")
        self.mc_components[adapter_name] = frozenset(components)
        self.mc_scale[adapter_name] = 1.0
        self.create_components(adapter_name, config, components)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def create_components(self, adapter_name: str, config: MaskedTunerConfig, components: frozenset) -> None:
        raise NotImplementedError

    def apply_adapter(
        self, adapter_name: str, weight: torch.Tensor, bias: torch.Tensor | None, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the parameters after ``adapter_name`` (float32 in, float32 out); ``scale`` scales its change."""
        raise NotImplementedError

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: torch.device | None = None) -> None:
        # PEFT's version also casts the adapter to the base layer's dtype and relies on the tuner's
        # `_cast_adapter_dtype` to bring float16/bfloat16 adapters back to float32. PeftModel calls that, but diffusers'
        # `add_adapter` (and `load_adapter`, which uses it) never does, so on a half-precision UNet the adapter would
        # train in half precision. Moving only the device keeps adapter parameters float32 on every path.
        target = device if device is not None else self.get_base_layer().weight.device
        if target.type == "meta":
            return
        for name in self.adapter_layer_names:
            parameters = getattr(self, name)
            if adapter_name in parameters and parameters[adapter_name].device != target:
                if parameters[adapter_name].device.type == "meta":
                    continue
                parameters[adapter_name] = parameters[adapter_name].to(target)

    def _new_parameter(self, container: str, adapter_name: str, value: torch.Tensor) -> None:
        device = self.get_base_layer().weight.device
        getattr(self, container)[adapter_name] = nn.Parameter(value.to(device=device, dtype=torch.float32))

    def set_scale(self, adapter: str, scale: float) -> None:
        """Scale ``adapter``'s change (diffusers' ``set_adapters(names, weights)`` calls this)."""
        if adapter in self.mc_scale:
            self.mc_scale[adapter] = float(scale)

    def scale_layer(self, scale: float) -> None:
        for adapter in self.active_adapters:
            if adapter in self.mc_scale:
                self.mc_scale[adapter] *= scale

    def unscale_layer(self, scale: float | None = None) -> None:
        for adapter in self.active_adapters:
            if adapter in self.mc_scale:
                self.mc_scale[adapter] = 1.0 if scale is None else self.mc_scale[adapter] / scale

    # -- computation ----------------------------------------------------------------------------------------------
    def adapted_parameters(self, adapter_names: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The base parameters after applying ``adapter_names`` in order, in the base layer's dtype."""
        base = self.get_base_layer()
        weight, bias = self._originals if self._originals is not None else (base.weight, base.bias)
        dtype = weight.dtype
        weight = weight.float()
        bias = bias.float() if bias is not None else None
        for name in adapter_names:
            weight, bias = self.apply_adapter(name, weight, bias, self.mc_scale[name])
        return weight.to(dtype), (bias.to(dtype) if bias is not None else None)

    def _base_operation(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        base = self.get_base_layer()
        if isinstance(base, nn.Linear):
            return F.linear(x, weight, bias)
        if isinstance(base, nn.Conv2d):
            return base._conv_forward(x, weight, bias)
        if isinstance(base, nn.GroupNorm):
            # torch 2.13's CPU group_norm backward segfaults on a channels-last input that needs no gradient when
            # the affine parameters do (the first adapted norm of a frozen model); a plain layout avoids it.
            return F.group_norm(x.contiguous(), base.num_groups, weight, bias, base.eps)
        return F.layer_norm(x, base.normalized_shape, weight, bias, base.eps)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        active = [name for name in self.active_adapters if name in self.mc_components]
        if not active:
            return self.base_layer(x, *args, **kwargs)
        weight, bias = self.adapted_parameters(active)
        return self._base_operation(x, weight, bias)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The change ``adapter_name`` alone makes to the base weight (float32)."""
        base = self.get_base_layer()
        weight, _ = self.apply_adapter(
            adapter_name, base.weight.float(), None if base.bias is None else base.bias.float(), 1.0
        )
        return weight - base.weight.float()

    # -- merging --------------------------------------------------------------------------------------------------
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Write the adapted parameters into the base layer, computed from its current parameters.

        The current parameters are kept (as the originals) so that `unmerge` can give them back. They may already hold
        another adapter's merged change (a LoRA merged before ours); ours is then applied on top of it, so that merges
        compose in any order. Merging more of our adapters later first takes back the ones merged so far.
        """
        adapter_names = check_adapters_to_merge(self, adapter_names)
        adapter_names = [name for name in adapter_names if name in self.mc_components]
        if not adapter_names:
            return
        base = self.get_base_layer()
        merged_before = list(self.merged_adapters)
        if merged_before:
            self.unmerge()
        self._originals = (
            base.weight.detach().clone(),
            None if base.bias is None else base.bias.detach().clone(),
        )
        with torch.no_grad():
            weight, bias = self.adapted_parameters(merged_before + adapter_names)
            if safe_merge and not (torch.isfinite(weight).all() and (bias is None or torch.isfinite(bias).all())):
                self._originals = None
                if merged_before:
                    self.merge(adapter_names=merged_before)  # leave the layer as it was
                raise ValueError(f"NaNs or infs found while merging adapters {adapter_names} into {base}.")
            if bias is not None and base.bias is None:
                base.bias = nn.Parameter(torch.zeros_like(bias), requires_grad=False)
            base.weight.data.copy_(weight)
            if bias is not None:
                base.bias.data.copy_(bias)
        self.merged_adapters = merged_before + adapter_names

    def unmerge(self) -> None:
        """Take our merged change back out of the base layer, keeping what other adapters merged meanwhile.

        The merged parameters ``P_m`` are recomputed from the saved originals ``P_o`` exactly as `merge` computed them
        (same inputs, same operations), and the base layer is set to ``P_o + (P - P_m)``. If nothing else changed the
        parameters, ``P - P_m`` is exactly zero and the originals come back bit-exactly; if another adapter (a LoRA)
        merged its change after ours, that change stays. No copy of the merged parameters is kept for this.
        The adapters' values and scales must not change while merged (as for LoRA, whose unmerge subtracts its
        current delta).
        """
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        base = self.get_base_layer()
        original_weight, original_bias = self._originals
        with torch.no_grad():
            merged_weight, merged_bias = self.adapted_parameters(self.merged_adapters)
            base.weight.data.copy_(_restore(original_weight, base.weight, merged_weight))
            if original_bias is None:
                base.bias = None
            else:
                base.bias.data.copy_(_restore(original_bias, base.bias, merged_bias))
        self._originals = None
        self.merged_adapters = []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(adapters={sorted(self.mc_components)}, base={self.base_layer!r})"


class MaskedTuner(BaseTuner):
    """Base tuner: resolves the config's mask into a plan and wraps exactly the planned modules."""

    prefix: str = "mc_"
    tuner_layer_cls = MaskedTunerLayer
    target_module_mapping: dict = {}

    def __init__(
        self,
        model: nn.Module,
        peft_config: PeftConfig | dict[str, PeftConfig],
        adapter_name: str,
        **kwargs: Any,
    ) -> None:
        # The plans of the configs injected so far, keyed by the config's id. `_prepare_model` resolves a config's
        # mask into its plan once per injection; PEFT's later hooks (`_check_target_module_exists`,
        # `_create_and_replace`) receive the config but not the model, and read the plan from here. It must exist
        # before `BaseTuner.__init__`, which injects the first adapter.
        self._plans: dict[int, AdapterPlan] = {}
        super().__init__(model, peft_config, adapter_name, **kwargs)

    # -- method hooks ---------------------------------------------------------------------------------------------
    @classmethod
    def candidates(cls, model: nn.Module, config: MaskedTunerConfig) -> Candidates:
        """Everything the method adapts without a mask: path -> {component: maskable under "paper" semantics}."""
        raise NotImplementedError

    @classmethod
    def component_numel(cls, module: nn.Module, component: str, config: MaskedTunerConfig) -> int:
        """Number of trainable values ``component`` adds to ``module`` (works on the meta device)."""
        raise NotImplementedError

    @classmethod
    def layer_class(cls, config: MaskedTunerConfig) -> type[MaskedTunerLayer]:
        raise NotImplementedError

    @classmethod
    def adapts_attention(cls, config: MaskedTunerConfig) -> bool:
        """Whether the method's maskable parameters sit on attention projections (then every slot must hold an
        attention module it recognizes)."""
        return False

    # -- planning -------------------------------------------------------------------------------------------------
    @classmethod
    def count(cls, model: nn.Module, config: MaskedTunerConfig, plan: AdapterPlan | None = None) -> int:
        """Parameters that ``config`` trains on ``model`` (from the plan; no weights needed): the method's, and
        those of the ``modules_to_save``, trained whole."""
        plan = plan if plan is not None else cls.plan(model, config)
        modules = dict(iter_base_modules(model))
        saved = {
            id(parameter): parameter.numel()
            for path in _saved_modules(model, config)
            for parameter in modules[path].parameters()
        }
        return sum(saved.values()) + sum(
            cls.component_numel(modules[path], component, config)
            for path, components in plan.modules.items()
            for component in components
        )

    @classmethod
    def plan(cls, model: nn.Module, config: MaskedTunerConfig) -> AdapterPlan:
        """Resolve ``config``'s mask on ``model`` into the modules and components to adapt."""
        candidates = cls.candidates(model, config)
        if cls.adapts_attention(config):
            _refuse_slots_without_attention(model, config)
        _refuse_unmatched_targets(model, config, candidates)
        trained_whole = _trained_whole(model, config)
        candidates = {
            path: components
            for path, components in candidates.items()
            if not _matches(config.exclude_modules, path)
            and (config.target_modules is None or _matches(config.target_modules, path))
            and not any(path == module or path.startswith(module + ".") for module in trained_whole)
        }
        return resolve_plan(model, candidates, config.mask, config.granularity, config.mask_semantics)

    def _prepare_adapter_config(self, peft_config: PeftConfig, model_config: dict) -> PeftConfig:
        return peft_config  # targets come from the plan, not from a per-architecture mapping

    def _prepare_model(self, peft_config: MaskedTunerConfig, model: nn.Module) -> None:
        plan = self.plan(model, peft_config)
        if not plan.modules:
            raise ValueError(
                f"The mask selects nothing to adapt ({peft_config.mask_semantics!r} semantics, every unit off or "
                "filtered out by target_modules/exclude_modules). Switch at least one unit on."
            )
        base_parameters = count_model_parameters(model)
        if not peft_config.base_model_name_or_path:
            # diffusers models keep their origin in config._name_or_path, where PEFT does not look
            peft_config.base_model_name_or_path = (
                getattr(getattr(model, "config", None), "_name_or_path", None) or None
            )
        self._refuse_other_methods_layers(model, peft_config, plan)
        peft_config.trainable_parameters = self.count(model, peft_config, plan)
        peft_config.trainable_share = peft_config.trainable_parameters / max(base_parameters, 1)
        self._plans[id(peft_config)] = plan

    def _refuse_other_methods_layers(self, model: nn.Module, config: MaskedTunerConfig, plan: AdapterPlan) -> None:
        """Raise, before anything is injected, if a planned module already holds another method's adapter layer.

        Our layers compute adapted parameters from the base layer they wrap, so they must wrap it directly: a LoRA
        added after our adapter wraps our layer and composes, but our adapter cannot wrap a LoRA's layer; and one
        module holds adapters of one of our methods only.
        """
        layer_class = self.layer_class(config)
        modules = dict(model.named_modules())
        taken = {
            path: modules[path]
            for path in plan.modules
            if isinstance(modules.get(path), BaseTunerLayer) and not isinstance(modules[path], layer_class)
        }
        if not taken:
            return
        method = type(config).__name__.removesuffix("Config")
        path, layer = next(iter(taken.items()))
        where = f"{path}{f' (and {len(taken) - 1} more modules)' if len(taken) > 1 else ''}"
        holder = f"a {type(layer).__module__}.{type(layer).__name__} layer with adapter(s) {_adapter_names(layer)}"
        if isinstance(layer, MaskedTunerLayer):
            raise ValueError(
                f"{where} already holds {holder}; one module cannot hold adapters of two of peft_memcontrol's "
                f"methods. Unload or delete that adapter before adding the {method} adapter."
            )
        raise ValueError(
            f"{where} already holds {holder}, added before this {method} adapter. {method} layers must wrap the base "
            f"layer itself: add every {method} adapter first and the LoRA (or other PEFT adapter) after it, which "
            "then wraps ours and composes with it; or delete the other adapter first (unet.delete_adapters(name), "
            "or unload_lora_weights() on a pipeline)."
        )

    def add_weighted_adapter(self, *args: Any, **kwargs: Any) -> None:
        """Refused: PEFT's ``add_weighted_adapter`` combines LoRA factors, which these methods do not have."""
        method = type(self).__name__.removesuffix("Model")
        raise NotImplementedError(
            f"add_weighted_adapter is not implemented for {method} adapters: it combines LoRA's low-rank factors, "
            f"and a weighted sum of {method} parameters is not the weighted sum of their changes. Use the adapters "
            "together instead: activate them with set_adapters([...], weights=[...]) (each is applied in turn, its "
            "change scaled by its weight), or merge them one after another with merge_adapter."
        )

    def _check_target_module_exists(self, peft_config: PeftConfig, key: str) -> bool | _ExcludedModule:
        if _matches(peft_config.exclude_modules, key):
            return _ExcludedModule()  # PEFT warns "no modules were excluded" unless it sees the exclusions
        return key in self._plans[id(peft_config)].modules

    def _create_and_replace(
        self,
        peft_config: MaskedTunerConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs: Any,
    ) -> None:
        components = self._plans[id(peft_config)].modules[current_key]
        if isinstance(target, MaskedTunerLayer):  # of this method: `_refuse_other_methods_layers` checked
            target.update_layer(adapter_name, peft_config, components)
            return
        new_module = self.layer_class(peft_config)(target, adapter_name, peft_config, components)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    @classmethod
    def _remove_adapter_name_from_key(cls, key: str, adapter_name: str) -> str:
        """The checkpoint key of a model key: PEFT's (adapter name removed), and without the ``.base_layer``
        segments that another method's layer adds when it wraps ours (a LoRA added after our adapter on the same
        modules). The checkpoint then holds the keys a fresh model has; PEFT builds the inverse mapping for loading
        from this same function, so such a checkpoint also loads into a model where a LoRA wraps our layers."""
        key = super()._remove_adapter_name_from_key(key, adapter_name)
        path, separator, parameter = key.partition(f".{cls.prefix}")
        if not separator:
            return key
        return path.replace(".base_layer", "") + separator + parameter

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: PeftConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Map checkpoint keys to the model, refusing anything that would load a silently wrong model."""
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        check_adapter_state_dict(model, adapter_name, remapped)
        return remapped

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """Adapter parameters are created in float32 and, by default, stay there (PEFT's ``autocast_adapter_dtype``
        default, which lifts half-precision adapters to float32). ``autocast_adapter_dtype=False`` asks for adapters
        in the base layer's dtype, as for LoRA: each layer's parameters of ``adapter_name`` are cast to it."""
        if autocast_adapter_dtype:
            return
        for module in self.model.modules():
            if not isinstance(module, MaskedTunerLayer):
                continue
            dtype = module.get_base_layer().weight.dtype
            for container_name in module.adapter_layer_names:
                container = getattr(module, container_name)
                if adapter_name in container and container[adapter_name].dtype != dtype:
                    parameter = container[adapter_name]
                    container[adapter_name] = nn.Parameter(parameter.detach().to(dtype), parameter.requires_grad)
