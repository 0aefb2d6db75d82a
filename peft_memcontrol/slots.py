"""Slots and masks: the units that a MemControl mask switches on and off.

A *slot* is found from the module tree, never from hard-coded indices. At the default ``"slot"`` granularity it is
an attention container: a module with a ``transformer_blocks`` list (``Transformer2DModel`` in every
``UNet2DConditionModel``, SD-1.x/2.x and SDXL alike), or, when the model itself is a transformer (DiT, PixArt, SD3,
FLUX), each block of each of its lists of transformer blocks (`peft_memcontrol.model_parts.block_lists`: FLUX's 19
joint and 38 single-stream blocks alike). Stable Diffusion v1.5 has 16 slots. ``"block"`` granularity
groups slots by U-Net block (``down_blocks.N``, ``mid_block``, ``up_blocks.N``); ``"layer"`` granularity makes every
targeted module its own unit.

Bit order (the search's genome) is the order in which data flows through the network: down blocks, mid block, up
blocks, and within each by index. It does not depend on the order in which a model class registers its children.

Two mask semantics decide what a 0 bit means:

* ``"paper"`` (default) reproduces the reference code: a 0 bit freezes only the method's parameters inside that
  slot's ``transformer_blocks``; everything else the method trains stays trainable. An all-ones mask is the plain
  method.
* ``"strict"``: nothing outside the selected units is adapted.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from torch import nn

from .model_parts import block_lists, is_attention


GRANULARITIES = ("slot", "block", "layer")
SEMANTICS = ("paper", "strict")


@dataclass(frozen=True)
class SlotContainer:
    """One attention container and the part of it that ``"paper"`` semantics masks."""

    name: str
    maskable_prefix: str

    def contains(self, path: str) -> bool:
        """Whether ``path`` lies inside this container."""
        return path.startswith(self.name + ".")

    def maskable(self, path: str) -> bool:
        """Whether ``path`` lies in the part that ``"paper"`` semantics masks (the transformer blocks)."""
        return path.startswith(self.maskable_prefix)


def _data_flow_rank(model: nn.Module) -> dict[str, int]:
    """Rank of each top-level child: registration order, except that ``mid_block`` comes before ``up_blocks``."""
    names = [name for name, _ in model.named_children()]
    if "mid_block" in names and "up_blocks" in names:
        names.remove("mid_block")
        names.insert(names.index("up_blocks"), "mid_block")
    return {name: rank for rank, name in enumerate(names)}


def data_flow_order(model: nn.Module) -> dict[str, int]:
    """Map every module path of ``model`` to its position in data-flow order (see the module docstring)."""
    ranks = _data_flow_rank(model)
    paths = [name for name, _ in model.named_modules() if name]
    keyed = sorted(enumerate(paths), key=lambda item: (ranks.get(item[1].split(".")[0], len(ranks)), item[0]))
    return {path: position for position, (_, path) in enumerate(keyed)}


def find_slot_containers(model: nn.Module, required: bool = True) -> list[SlotContainer]:
    """Find the attention containers of ``model`` in data-flow order (none, if not ``required``).

    Raises:
        ValueError: if ``required`` and the model has no attention container at all.
    """
    root_lists = block_lists(model)
    if root_lists:
        return [
            SlotContainer(f"{name}.{index}", f"{name}.{index}.")
            for name in root_lists
            for index in range(len(getattr(model, name)))
        ]

    containers: list[SlotContainer] = []
    for name, module in model.named_modules():
        if not name or any(container.contains(name) for container in containers):
            continue
        blocks = getattr(module, "transformer_blocks", None)
        if isinstance(blocks, nn.ModuleList):
            containers.append(SlotContainer(name, f"{name}.transformer_blocks."))
    if not containers:
        # Attention modules without a transformer wrapper (e.g. UNet2DModel's AttnDownBlock2D).
        for name, module in model.named_modules():
            if is_attention(module) and not any(container.contains(name) for container in containers):
                containers.append(SlotContainer(name, f"{name}."))
    if not containers and required:
        raise ValueError(
            f"{type(model).__name__} has no slots: MemControl masks switch attention containers (modules with a "
            "`transformer_blocks` list, such as diffusers' Transformer2DModel, or `Attention` modules), and this "
            "model has none. SVDiff and DiffFit apply to it without a mask (every layer they target is trained; "
            "masked attention tuning needs slots), or pass the model's UNet or transformer."
        )
    order = data_flow_order(model)
    return sorted(containers, key=lambda container: order[container.name])


def _find_blocks(model: nn.Module, containers: Sequence[SlotContainer]) -> list[str]:
    """The U-Net blocks that hold slots, and their siblings (``down_blocks.3`` has no attention, but is a block)."""
    blocks: list[str] = []
    for child_name, child in model.named_children():
        if not any(container.name.startswith(child_name + ".") for container in containers):
            continue
        if isinstance(child, nn.ModuleList):
            blocks.extend(f"{child_name}.{index}" for index in range(len(child)))
        else:
            blocks.append(child_name)
    order = data_flow_order(model)
    return sorted(blocks, key=order.__getitem__)


@dataclass
class AdapterPlan:
    """Which components of a method are adapted in which module, resolved from a mask.

    Attributes:
        modules: module path -> the method's components that are adapted there (e.g. ``{"gamma", "bias"}``).
        units: the mask's unit names (slots, blocks or layers) in bit order.
        mask: the complete mask (unit -> bool) that produced the plan.
    """

    modules: dict[str, frozenset[str]]
    units: list[str]
    mask: dict[str, bool]


# A method's candidates: module path -> {component: whether "paper" semantics lets the mask switch it}.
Candidates = Mapping[str, Mapping[str, bool]]


def resolve_plan(
    model: nn.Module,
    candidates: Candidates,
    mask: Mapping[str, bool] | None,
    granularity: str = "slot",
    semantics: str = "paper",
) -> AdapterPlan:
    """Resolve a mask into the set of adapted (module, component) pairs.

    Args:
        model: the model the method is applied to (a meta-device model works).
        candidates: everything the method would adapt without a mask (see ``Candidates``).
        mask: unit name -> bool; ``None`` switches every unit on. Must name every unit, and nothing else.
        granularity: ``"slot"``, ``"block"`` or ``"layer"``.
        semantics: ``"paper"`` or ``"strict"``.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"Unknown granularity {granularity!r}; choose one of {GRANULARITIES}.")
    if semantics not in SEMANTICS:
        raise ValueError(f"Unknown mask semantics {semantics!r}; choose one of {SEMANTICS}.")
    containers = find_slot_containers(model, required=mask is not None)  # without a mask every unit is on anyway
    blocks = _find_blocks(model, containers) if granularity == "block" else []

    def container_of(path: str) -> SlotContainer | None:
        return next((container for container in containers if container.contains(path)), None)

    def unit_of(path: str) -> str | None:
        if granularity == "layer":
            return path
        if granularity == "block":
            return next((block for block in blocks if path.startswith(block + ".")), None)
        container = container_of(path)
        return container.name if container is not None else None

    def governed(path: str, maskable_in_paper: bool) -> bool:
        if semantics == "strict":
            return True
        container = container_of(path)
        return maskable_in_paper and container is not None and container.maskable(path)

    order = data_flow_order(model)
    unit_set = {
        unit_of(path)
        for path, components in candidates.items()
        for maskable in components.values()
        if governed(path, maskable)
    }
    units = sorted((unit for unit in unit_set if unit is not None), key=order.__getitem__)
    full_mask = validate_mask(mask, units)

    modules: dict[str, frozenset[str]] = {}
    for path, components in candidates.items():
        adapted = frozenset(
            component
            for component, maskable in components.items()
            if not governed(path, maskable) or full_mask.get(unit_of(path), False)
        )
        if adapted:
            modules[path] = adapted
    return AdapterPlan(modules=modules, units=units, mask=full_mask)


def mask_value(unit: str, value: object) -> bool:
    """``value`` as the mask bit of ``unit``: a bool, or 1/0. Anything else is refused, never converted: ``bool("false")``
    is ``True``, and a mask that silently trains a slot the user switched off does the opposite of its purpose."""
    if isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise ValueError(
        f"Mask value for {unit!r} must be true or false (JSON booleans; 1 or 0 also work), got {value!r}."
    )


def validate_mask(mask: Mapping[str, bool] | None, units: Sequence[str]) -> dict[str, bool]:
    """Check that ``mask`` names exactly ``units`` and return it as a plain dict (``None`` = all on)."""
    if mask is None:
        return dict.fromkeys(units, True)
    unknown = [name for name in mask if name not in units]
    if unknown:
        raise ValueError(
            f"Unknown slot name(s) in mask: {unknown}. The mask has values for {len(mask)} units and this model has "
            f"{len(units)}: was it made for another model? A mask fits one architecture, granularity and semantics. "
            f"This model's units are (in bit order): {list(units)}."
        )
    missing = [name for name in units if name not in mask]
    if missing:
        raise ValueError(
            f"The mask has values for {len(mask)} units and this model has {len(units)}; it gives no value for "
            f"{missing}. Give every unit a value (valid units, in bit order: {list(units)}), e.g. with "
            "`Mask.from_bits(bits, units)` or `Mask.all_on(units)`."
        )
    return {name: mask_value(name, mask[name]) for name in units}


def _not_a_mapping(values: object) -> str:
    """Why ``values`` is not a mask, and how to make one from it (a bit list, a path)."""
    if isinstance(values, (str, os.PathLike)):
        return (
            f"A mask maps unit names to true/false; got the string {os.fspath(values)!r}. If it is a file, read it "
            "with `Mask.load(path)` and pass the result."
        )
    if isinstance(values, Sequence):
        return (
            f"A mask maps unit names to true/false; got a {type(values).__name__} of {len(values)} values. Build it "
            "from bits with `Mask.from_bits(bits, slot_units(model, config))`, which names the unit of each bit."
        )
    return f"A mask maps unit names to true/false; got {type(values).__name__} {values!r}."


class Mask(Mapping[str, bool]):
    """A mask: slot (or block, or layer) name -> bool, with conversions to bits and JSON.

    ``Mask`` is a read-only mapping, so it can be passed wherever a config expects ``mask=``.
    """

    def __init__(self, values: Mapping[str, bool]):
        if not isinstance(values, Mapping):
            raise TypeError(_not_a_mapping(values))
        self._values = {str(name): mask_value(str(name), value) for name, value in values.items()}

    def __getitem__(self, name: str) -> bool:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Mask({self.selected()} on of {len(self)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._values) == dict(other)

    __hash__ = None  # a mapping, compared by value

    @classmethod
    def all_on(cls, units: Iterable[str]) -> Mask:
        """Every unit on: the plain method."""
        return cls(dict.fromkeys(units, True))

    @classmethod
    def all_off(cls, units: Iterable[str]) -> Mask:
        """Every unit off."""
        return cls(dict.fromkeys(units, False))

    @classmethod
    def from_bits(cls, bits: Sequence[int | bool], units: Sequence[str]) -> Mask:
        """Build a mask from a bit list in the order of ``units`` (the order `SlotLayout` and `slot_units` give)."""
        if len(bits) != len(units):
            raise ValueError(
                f"Got {len(bits)} bits for {len(units)} units; the mask needs one bit per unit, in this order: "
                f"{list(units)}."
            )
        return cls(dict(zip(units, bits)))

    def to_bits(self, units: Sequence[str]) -> list[int]:
        """The mask as a 0/1 list in the order of ``units``."""
        missing = [unit for unit in units if unit not in self._values]
        if missing:
            raise ValueError(f"The mask has no value for {missing}.")
        return [int(self._values[unit]) for unit in units]

    def selected(self) -> list[str]:
        """Names of the units that are on."""
        return [name for name, value in self._values.items() if value]

    def to_dict(self) -> dict[str, bool]:
        """The mask as a plain dict (what configs store)."""
        return dict(self._values)

    def to_json(self) -> str:
        """The mask as a JSON object (unit -> true/false)."""
        return json.dumps(self._values, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Mask:
        """Read a mask from JSON: a unit -> bool object, or any object with a ``"mask"`` entry (an adapter config)."""
        data = json.loads(text)
        if isinstance(data, dict) and "mask" in data:
            data = data["mask"]  # a search result or an adapter_config.json
        if not isinstance(data, dict):
            raise ValueError(
                'A mask in JSON is an object mapping unit names to true/false (or a file whose "mask" entry is one, '
                f"such as an adapter_config.json), got {type(data).__name__}."
            )
        return cls(data)

    def save(self, path: str | os.PathLike) -> None:
        """Write the mask as JSON."""
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Mask:
        """Read a mask written by `save` (or an adapter_config.json); an error names the file."""
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        try:
            return cls.from_json(text)
        except ValueError as error:  # json.JSONDecodeError is one
            raise ValueError(f"{os.fspath(path)} does not hold a valid mask: {error}") from error


@dataclass(frozen=True)
class SlotLayout:
    """A genome layout: which units the bits stand for, in which order, and units held at a fixed value.

    The reference code's 13-bit layout for SVDiff and DiffFit on SD-1.5 leaves ``up_blocks.N.attentions.2``
    unmasked (always on); `SlotLayout` expresses that with ``fixed``.
    """

    name: str
    genome: tuple[str, ...]
    fixed: Mapping[str, bool] = field(default_factory=dict)

    @property
    def num_bits(self) -> int:
        return len(self.genome)

    def decode(self, bits: Sequence[int | bool]) -> Mask:
        """Bits (in genome order) -> a complete mask, fixed units included."""
        values = dict(Mask.from_bits(bits, self.genome))
        values.update(self.fixed)
        return Mask(values)

    def encode(self, mask: Mapping[str, bool]) -> list[int]:
        """A mask -> bits in genome order; the mask must agree with the layout's fixed units."""
        mask = Mask(mask)
        for unit, value in self.fixed.items():
            if unit in mask and mask[unit] != value:
                raise ValueError(
                    f"Layout {self.name!r} holds {unit!r} at {value}, but the mask sets it to {mask[unit]}."
                )
        return mask.to_bits(self.genome)


_SD15_SLOTS = (
    *(f"down_blocks.{block}.attentions.{index}" for block in range(3) for index in range(2)),
    "mid_block.attentions.0",
    *(f"up_blocks.{block}.attentions.{index}" for block in (1, 2, 3) for index in range(3)),
)

LAYOUTS: dict[str, SlotLayout] = {
    "sd15-reference-13": SlotLayout(
        name="sd15-reference-13",
        genome=tuple(
            slot for slot in _SD15_SLOTS if not (slot.startswith("up_blocks") and slot.endswith("attentions.2"))
        ),
        fixed={f"up_blocks.{block}.attentions.2": True for block in (1, 2, 3)},
    ),
    "sd15-reference-16": SlotLayout(name="sd15-reference-16", genome=_SD15_SLOTS),
}
"""Named layouts. ``sd15-reference-13``: the reference code's SVDiff/DiffFit genome on SD-1.5 (6 down slots, the
mid slot, attentions 0-1 of up blocks 1-3; attentions 2 of the up blocks always on). ``sd15-reference-16``: its
attention-tuning genome (all 16 slots)."""


def get_layout(name: str) -> SlotLayout:
    """A named layout from `LAYOUTS`."""
    if name not in LAYOUTS:
        raise ValueError(f"Unknown layout {name!r}; known layouts: {sorted(LAYOUTS)}.")
    return LAYOUTS[name]
