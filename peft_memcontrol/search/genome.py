"""The search's genome: one gene per mask unit (a bit, or a per-unit method choice) plus a log learning-rate gene.

The unit genes follow the mask's stable bit order (`peft_memcontrol.slots`); a `SlotLayout` can hold units at a fixed
value (the reference code's 13-bit SD-1.5 layout keeps ``up_blocks.N.attentions.2`` on). The learning-rate gene is
``log10(lr)``, rounded to a fixed number of decimals so that genomes compare exactly, key the evaluation cache, and
survive a JSON round trip unchanged.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._registry import method_of
from ..counting import slot_units
from ..slots import LAYOUTS, Mask, SlotLayout
from ..tuners import METHODS


OFF = "off"
METHOD_CHOICES = (OFF, *METHODS)
"""The per-unit method choices of `GenomeSpace(choices=...)`: off, or one of the base methods (`METHODS`)."""

Genome = list[float]
"""Unit genes (0/1 bits, or indices into ``choices``) followed by the ``log10`` learning-rate gene, if any."""


@dataclass(frozen=True)
class Candidate:
    """A decoded genome: what one evaluation trains and scores.

    Attributes:
        key: the genome's cache key (`GenomeSpace.key`).
        genome: the raw genes.
        masks: method -> complete mask (fixed units included). One entry (``method``) for a bit genome; one per
            method for a per-unit method-choice genome.
        learning_rate: the searched learning rate, or ``None`` when the space has no learning-rate gene.
        units: the genome's units, in bit order.
    """

    key: str
    genome: tuple[float, ...]
    masks: dict[str, dict[str, bool]]
    learning_rate: float | None
    units: tuple[str, ...]

    @property
    def mask(self) -> Mask:
        """The mask of a single-method genome (raises for a genome that mixes methods)."""
        if len(self.masks) != 1:
            raise ValueError(f"This candidate mixes methods {sorted(self.masks)}: use `candidate.masks`.")
        return Mask(next(iter(self.masks.values())))

    @property
    def bits(self) -> list[int]:
        """The unit genes as integers (bits, or method indices)."""
        return [int(gene) for gene in self.genome[: len(self.units)]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "genome": list(self.genome),
            "masks": self.masks,
            "learning_rate": self.learning_rate,
            "units": list(self.units),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Candidate:
        return cls(
            key=data["key"],
            genome=tuple(data["genome"]),
            masks={method: dict(mask) for method, mask in data["masks"].items()},
            learning_rate=data["learning_rate"],
            units=tuple(data["units"]),
        )


#: The reference code's learning-rate gene, set for SD-1.5-size UNets (320-1280 channels).
REFERENCE_LEARNING_RATE_BOUNDS = (1e-5, 1e-3)
#: The gene for small UNets such as the embedded tiny pipeline (32-64 channels), whose few parameters move measurably
#: only at larger rates (the demo's fine-tunes use 1e-3 for full fine-tuning, 1e-2 for SVDiff and DiffFit).
SMALL_MODEL_LEARNING_RATE_BOUNDS = (1e-3, 3e-2)
#: UNets whose widest block has at most this many channels get `SMALL_MODEL_LEARNING_RATE_BOUNDS`.
SMALL_MODEL_MAX_CHANNELS = 256


def default_learning_rate_bounds(unet_config: Mapping[str, Any]) -> tuple[tuple[float, float], str]:
    """The learning-rate gene's range for a UNet config, and a sentence that says which range and why.

    At SD-1.5 size the reference's 1e-5..1e-3; for small UNets (widest block <= `SMALL_MODEL_MAX_CHANNELS`) 1e-3..3e-2:
    at 1e-4 the tiny pipeline's candidates barely move in K steps, and every mask scores alike.
    """
    channels = max(unet_config.get("block_out_channels") or [SMALL_MODEL_MAX_CHANNELS + 1])
    if channels <= SMALL_MODEL_MAX_CHANNELS:
        low, high = SMALL_MODEL_LEARNING_RATE_BOUNDS
        return (low, high), f"learning-rate gene {low:g}..{high:g} (a small UNet: widest block {channels} channels)"
    low, high = REFERENCE_LEARNING_RATE_BOUNDS
    return (low, high), f"learning-rate gene {low:g}..{high:g} (the reference's SD-1.5 range; widest block {channels})"


@dataclass(frozen=True)
class GenomeSpace:
    """The genes a search varies: which units, what each unit gene means, and the learning-rate range.

    Args:
        units: the genome's units in bit order (e.g. ``slot_units(model, config)`` or a layout's ``genome``).
        method: the base method a bit genome switches (``"svdiff"``, ``"difffit"`` or ``"masked_attention"``).
        fixed: units held at a fixed value, outside the genome (a `SlotLayout`'s ``fixed``).
        choices: ``None`` for one bit per unit; or a per-unit method choice from `METHOD_CHOICES` (``"off"`` first),
            which the reference code does not have.
        learning_rate_bounds: ``(low, high)`` of the log-uniform learning-rate gene; ``None`` for no such gene.
        learning_rate_decimals: decimals kept of ``log10(lr)`` (3: steps of 0.23%).
        name: a label recorded with results (e.g. the layout's name).
    """

    units: tuple[str, ...]
    method: str = "svdiff"
    fixed: Mapping[str, bool] = field(default_factory=dict)
    choices: tuple[str, ...] | None = None
    learning_rate_bounds: tuple[float, float] | None = REFERENCE_LEARNING_RATE_BOUNDS
    learning_rate_decimals: int = 3
    name: str = "custom"

    def __post_init__(self) -> None:
        object.__setattr__(self, "units", tuple(self.units))
        if not self.units:
            raise ValueError("A genome space needs at least one unit.")
        if len(set(self.units)) != len(self.units):
            raise ValueError("Genome units must be distinct.")
        overlap = sorted(set(self.fixed) & set(self.units))
        if overlap:
            raise ValueError(f"Units {overlap} are both in the genome and fixed.")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
            unknown = sorted(set(self.choices) - set(METHOD_CHOICES))
            if unknown or len(self.choices) < 2 or self.choices[0] != OFF:
                raise ValueError(
                    f"choices must start with 'off' and name methods from {METHOD_CHOICES}; got {self.choices}."
                )
            if self.fixed:
                raise ValueError("A per-unit method-choice genome takes no fixed units.")
        if self.learning_rate_bounds is not None:
            low, high = self.learning_rate_bounds
            if not 0 < low < high:
                raise ValueError(f"learning_rate_bounds must satisfy 0 < low < high, got {self.learning_rate_bounds}.")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_layout(cls, layout: SlotLayout | str, method: str = "svdiff", **kwargs: Any) -> GenomeSpace:
        """A bit genome over a named or given `SlotLayout` (e.g. ``"sd15-reference-13"``)."""
        layout = LAYOUTS[layout] if isinstance(layout, str) else layout
        return cls(units=layout.genome, method=method, fixed=dict(layout.fixed), name=layout.name, **kwargs)

    @classmethod
    def for_model(cls, model: Any, config: Any, **kwargs: Any) -> GenomeSpace:
        """A bit genome over the units of ``config``'s method on ``model`` (`peft_memcontrol.counting.slot_units`).

        ``config`` is a method config (`SVDiffConfig`, ...) or a `MemControlConfig`; its granularity and mask
        semantics decide the units. Models whose units are exactly SD-1.5's 16 slots get the reference code's
        layout (13 bits for SVDiff and DiffFit, 16 for masked attention tuning) unless ``layout=False`` is passed.
        """
        use_layout = kwargs.pop("layout", True)
        method = getattr(config, "method", None) or method_of(config).method
        units = slot_units(model, config)
        if use_layout and set(units) == set(LAYOUTS["sd15-reference-16"].genome) and kwargs.get("choices") is None:
            name = "sd15-reference-16" if method == "masked_attention" else "sd15-reference-13"
            return cls.from_layout(name, method=method, **kwargs)
        return cls(units=tuple(units), method=method, name=type(model).__name__, **kwargs)

    # ------------------------------------------------------------------ genes
    @property
    def num_unit_genes(self) -> int:
        return len(self.units)

    @property
    def has_learning_rate(self) -> bool:
        return self.learning_rate_bounds is not None

    @property
    def num_genes(self) -> int:
        return len(self.units) + int(self.has_learning_rate)

    @property
    def unit_gene_max(self) -> int:
        """The largest value of a unit gene (1 for bits)."""
        return 1 if self.choices is None else len(self.choices) - 1

    @property
    def log_learning_rate_bounds(self) -> tuple[float, float]:
        low, high = self.learning_rate_bounds or (1.0, 1.0)
        return math.log10(low), math.log10(high)

    def round_learning_rate_gene(self, value: float) -> float:
        """Clip to the bounds and round to ``learning_rate_decimals``: the one canonical form of the gene."""
        low, high = self.log_learning_rate_bounds
        return round(min(max(float(value), low), high), self.learning_rate_decimals)

    def canonical(self, genome: Sequence[float]) -> Genome:
        """Unit genes as ints in range, the learning-rate gene clipped and rounded."""
        if len(genome) != self.num_genes:
            raise ValueError(f"Expected {self.num_genes} genes, got {len(genome)}.")
        genes: Genome = [min(max(int(round(gene)), 0), self.unit_gene_max) for gene in genome[: self.num_unit_genes]]
        if self.has_learning_rate:
            genes.append(self.round_learning_rate_gene(genome[-1]))
        return genes

    def key(self, genome: Sequence[float]) -> str:
        """The cache key of a genome: its canonical genes as compact JSON."""
        return json.dumps(self.canonical(genome), separators=(",", ":"))

    def random_genome(self, rng: random.Random) -> Genome:
        """A uniformly random genome (unit genes uniform, learning rate log-uniform)."""
        genes: Genome = [rng.randint(0, self.unit_gene_max) for _ in self.units]
        if self.has_learning_rate:
            genes.append(rng.uniform(*self.log_learning_rate_bounds))
        return self.canonical(genes)

    def default_learning_rate_gene(self) -> float:
        """The log-midpoint of the learning-rate range (used by the seeded masks)."""
        low, high = self.log_learning_rate_bounds
        return self.round_learning_rate_gene((low + high) / 2)

    def genome_from_bits(self, bits: Sequence[int], log_learning_rate: float | None = None) -> Genome:
        """A genome from unit genes and an optional ``log10`` learning rate (default: the range's log-midpoint)."""
        genes: Genome = [int(bit) for bit in bits]
        if self.has_learning_rate:
            genes.append(self.default_learning_rate_gene() if log_learning_rate is None else log_learning_rate)
        return self.canonical(genes)

    def cheapest(self, cost: Callable[[Candidate], float]) -> Genome:
        """The genome that minimizes a cost that adds up over units (e.g. a trainable share), at the default learning
        rate: each unit gene set to the value that costs least when it alone differs from all-off (zeros).

        ``cost`` is called ``1 + num_unit_genes * unit_gene_max`` times, so it may be exact and slow-ish.
        """
        zeros = [0] * self.num_unit_genes
        base = cost(self.decode(self.genome_from_bits(zeros)))
        genes = []
        for index in range(self.num_unit_genes):
            extra = [0.0]
            for value in range(1, self.unit_gene_max + 1):
                single = list(zeros)
                single[index] = value
                extra.append(cost(self.decode(self.genome_from_bits(single))) - base)
            genes.append(min(range(len(extra)), key=extra.__getitem__))
        return self.genome_from_bits(genes)

    # ------------------------------------------------------------------ decoding
    def decode(self, genome: Sequence[float]) -> Candidate:
        """Genome -> `Candidate` (masks per method, learning rate)."""
        genes = self.canonical(genome)
        unit_genes = genes[: self.num_unit_genes]
        if self.choices is None:
            values = {unit: bool(bit) for unit, bit in zip(self.units, unit_genes)}
            values.update(self.fixed)
            masks = {self.method: values}
        else:
            masks = {
                method: {unit: self.choices[gene] == method for unit, gene in zip(self.units, unit_genes)}
                for method in self.choices[1:]
                if any(self.choices[gene] == method for gene in unit_genes)
            }
        learning_rate = 10 ** genes[-1] if self.has_learning_rate else None
        return Candidate(
            key=self.key(genes),
            genome=tuple(genes),
            masks=masks,
            learning_rate=learning_rate,
            units=self.units,
        )

    def encode(self, mask: Mapping[str, bool], learning_rate: float | None = None) -> Genome:
        """A bit genome from a mask (fixed units must agree) and a learning rate."""
        if self.choices is not None:
            raise ValueError("encode() builds bit genomes; this space has per-unit method choices.")
        bits = SlotLayout(self.name, self.units, dict(self.fixed)).encode(mask)
        log_lr = math.log10(learning_rate) if learning_rate is not None else None
        return self.genome_from_bits(bits, log_lr)

    # ------------------------------------------------------------------ the first population's seeds
    def seed_genomes(self) -> list[Genome]:
        """Genomes every first population holds: all on, all off, and reference-style masks.

        For bit genomes: all units on (the plain method), all off, then the down, mid and up parts of the network
        alone (for U-Nets), or the first and second halves of the units (for other models). For method-choice
        genomes: every unit on each method, and all off. All at the learning rate's log-midpoint.
        """
        n = self.num_unit_genes
        if self.choices is not None:
            return [self.genome_from_bits([index] * n) for index in range(len(self.choices) - 1, -1, -1)]
        seeds = [[1] * n, [0] * n]
        groups = [
            [int(unit.startswith(prefix)) for unit in self.units]
            for prefix in ("down_blocks.", "mid_block.", "up_blocks.")
        ]
        groups = [bits for bits in groups if 0 < sum(bits) < n]
        if not groups and n > 1:
            groups = [[int(i < n // 2) for i in range(n)], [int(i >= n // 2) for i in range(n)]]
        seeds.extend(groups)
        unique: dict[str, Genome] = {}
        for bits in seeds:
            genome = self.genome_from_bits(bits)
            unique.setdefault(self.key(genome), genome)
        return list(unique.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "units": list(self.units),
            "method": self.method,
            "fixed": dict(self.fixed),
            "choices": list(self.choices) if self.choices is not None else None,
            "learning_rate_bounds": list(self.learning_rate_bounds) if self.learning_rate_bounds else None,
            "learning_rate_decimals": self.learning_rate_decimals,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenomeSpace:
        data = dict(data)
        bounds = data.pop("learning_rate_bounds", None)
        choices = data.pop("choices", None)
        return cls(
            **data,
            learning_rate_bounds=tuple(bounds) if bounds else None,
            choices=tuple(choices) if choices else None,
        )


class GenomeIndex:
    """Genomes seen so far, to tell whether another one is new.

    Two genomes are the same candidate when their unit genes are equal and their learning rates are within a relative
    ``learning_rate_tolerance`` of each other (``|lr / lr' - 1| <= tolerance``, compared on the ``log10`` gene): a
    fine-tuning at 1.02e-4 tells nothing that the one at 1e-4 did not.
    """

    def __init__(self, space: GenomeSpace, learning_rate_tolerance: float = 0.0) -> None:
        self.space = space
        self._log_tolerance = math.log10(1.0 + learning_rate_tolerance) + 1e-9  # + the float error of rounded genes
        self._learning_rates: dict[tuple[int, ...], list[float]] = {}

    def _split(self, genome: Sequence[float]) -> tuple[tuple[int, ...], float | None]:
        genes = self.space.canonical(genome)
        units = tuple(int(gene) for gene in genes[: self.space.num_unit_genes])
        return units, genes[-1] if self.space.has_learning_rate else None

    def __contains__(self, genome: Sequence[float]) -> bool:
        units, learning_rate = self._split(genome)
        seen = self._learning_rates.get(units)
        if seen is None:
            return False
        return learning_rate is None or any(abs(learning_rate - other) <= self._log_tolerance for other in seen)

    def add(self, genome: Sequence[float]) -> None:
        units, learning_rate = self._split(genome)
        self._learning_rates.setdefault(units, []).append(0.0 if learning_rate is None else learning_rate)
