"""The search's variation and selection operators, registered on a DEAP `Toolbox` that the searcher owns.

`make_toolbox` registers, as DEAP's own NSGA-II example (``examples/ga/nsga2.py``) does:

* ``select``: ``tools.selNSGA2``, survivor selection by non-dominated rank, then crowding distance (it also assigns
  the crowding distances that the parent tournaments read);
* ``select_parents``: `crowded_tournament`, binary tournaments on (rank, crowding distance);
* ``mate``: `mate_genomes`, uniform crossover of the unit genes and simulated binary crossover of the learning-rate
  gene;
* ``mutate``: `mutate_genome`, bit flips (uniform integer resets for method choices) of the unit genes and polynomial
  mutation of the learning-rate gene;
* ``mutate_group``: `mutate_group`, which sets every unit of one group (`unit_groups`: units that share a name prefix,
  such as ``down_blocks.1``) to one value. Bit flips change one unit at a time, so they cannot cross a valley that
  only a whole block's change leaves (a block of attention layers that helps only when all of it trains); the
  searcher dispatches a share of each generation's offspring from this move (`SearchConfig.group_move_share`).

Swap one by registering another under the same name on ``MaskSearcher.toolbox``, e.g.
``searcher.toolbox.register("mutate", tools.mutFlipBit, indpb=0.2)`` for a bit genome without a learning-rate gene.
Operators have DEAP's signatures and work on `Individual` objects (genomes with a DEAP fitness). DEAP's operators draw
from the global ``random``; the searcher runs every toolbox call inside `private_random`, so that they draw from the
search's own seeded generator instead.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from deap import base, tools

from .config import SearchConfig
from .genome import Genome, GenomeSpace


class Individual(list):
    """A genome with a DEAP fitness (what DEAP's selection and variation operators work on)."""

    fitness: base.Fitness


def fitness_class(num_objectives: int) -> type[base.Fitness]:
    """A DEAP fitness with ``num_objectives`` minimized objectives (built without DEAP's global ``creator``)."""
    return type(f"MinimizedFitness{num_objectives}", (base.Fitness,), {"weights": (-1.0,) * num_objectives})


def as_individuals(
    genomes: Sequence[Genome], values: Sequence[Sequence[float]], fitness: type[base.Fitness]
) -> list[Individual]:
    """Each genome as an `Individual` whose fitness holds its objective values."""
    individuals = []
    for genome, genome_values in zip(genomes, values):
        individual = Individual(genome)
        individual.fitness = fitness(tuple(genome_values))
        individuals.append(individual)
    return individuals


@contextmanager
def private_random(rng: random.Random) -> Iterator[None]:
    """Run DEAP's operators (which draw from the global ``random``) on the search's private generator."""
    saved = random.getstate()
    random.setstate(rng.getstate())
    try:
        yield
    finally:
        rng.setstate(random.getstate())
        random.setstate(saved)


def crowded_tournament(individuals: list[Individual], k: int) -> list[Individual]:
    """``k`` binary tournaments on (non-dominated rank, crowding distance), as in NSGA-II.

    Reads the crowding distances that ``selNSGA2`` assigns: select the population with it first.
    """
    rank = {}
    for level, front in enumerate(tools.sortNondominated(individuals, len(individuals))):
        for individual in front:
            rank[id(individual)] = level
    chosen = []
    for _ in range(k):
        a, b = random.sample(individuals, 2)
        key_a = (rank[id(a)], -a.fitness.crowding_dist)
        key_b = (rank[id(b)], -b.fitness.crowding_dist)
        chosen.append(a if key_a <= key_b else b)
    return chosen


def mate_genomes(
    first: Individual, second: Individual, space: GenomeSpace, eta: float
) -> tuple[Individual, Individual]:
    """Cross two genomes in place: uniform crossover of the unit genes, SBX (index ``eta``) of the learning rate."""
    n = space.num_unit_genes
    units_a, units_b = first[:n], second[:n]
    tools.cxUniform(units_a, units_b, 0.5)
    first[:n], second[:n] = units_a, units_b
    if space.has_learning_rate:
        low, high = space.log_learning_rate_bounds
        lr_a, lr_b = [first[n]], [second[n]]
        tools.cxSimulatedBinaryBounded(lr_a, lr_b, eta, low, high)
        first[n], second[n] = lr_a[0], lr_b[0]
    return first, second


def mutate_genome(individual: Individual, space: GenomeSpace, eta: float, indpb: float) -> tuple[Individual]:
    """Mutate a genome in place, each gene with probability ``indpb``: unit genes flipped (bits) or reset uniformly
    (method choices), the learning rate by polynomial mutation (index ``eta``)."""
    n = space.num_unit_genes
    units = individual[:n]
    if space.choices is None:
        tools.mutFlipBit(units, indpb)
    else:
        tools.mutUniformInt(units, 0, space.unit_gene_max, indpb)
    individual[:n] = units
    if space.has_learning_rate:
        low, high = space.log_learning_rate_bounds
        lr = [individual[n]]
        tools.mutPolynomialBounded(lr, eta, low, high, indpb)
        individual[n] = lr[0]
    return (individual,)


def unit_groups(units: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """The groups of units that share a dotted name prefix: prefix -> indices of its units, for every prefix of a
    unit's name (whole dotted parts, the name itself excluded) that holds at least 2 units and not all of them.

    Prefixes that hold the same units name one group, under the shortest. For SD-1.5's 16 attention slots
    (``down_blocks.0.attentions.0``, ...): ``down_blocks`` (6 units), ``down_blocks.0`` ... ``down_blocks.2`` (2
    each), ``up_blocks`` (9) and ``up_blocks.1`` ... ``up_blocks.3`` (3 each). Units named without structure
    (``unit.0``, ``unit.1``, ...) have no groups. Groups are listed in the order their first unit and then their
    prefix length appear, so the same units always give the same groups.
    """
    members: dict[str, list[int]] = {}
    for index, unit in enumerate(units):
        parts = unit.split(".")
        for length in range(1, len(parts)):
            members.setdefault(".".join(parts[:length]), []).append(index)
    groups: dict[str, tuple[int, ...]] = {}
    named = set()
    for prefix, indices in members.items():
        if 2 <= len(indices) < len(units) and tuple(indices) not in named:
            named.add(tuple(indices))
            groups[prefix] = tuple(indices)
    return groups


def mutate_group(individual: Individual, space: GenomeSpace, groups: Sequence[Sequence[int]]) -> tuple[Individual]:
    """Mutate a genome in place: every unit gene of one group (drawn uniformly from ``groups``, lists of unit-gene
    indices, e.g. `unit_groups`' values) set to one value drawn uniformly (0 or 1 for bits, a method index for
    method choices). The learning-rate gene is left as it is."""
    group = random.choice(groups)
    value = random.randint(0, space.unit_gene_max)
    for index in group:
        individual[index] = value
    return (individual,)


def make_toolbox(space: GenomeSpace, config: SearchConfig) -> base.Toolbox:
    """The search's operators for ``space`` with ``config``'s rates (see the module docstring); ``mutate_group`` only
    when the space's units have groups (`unit_groups`)."""
    toolbox = base.Toolbox()
    toolbox.register("select", tools.selNSGA2)
    toolbox.register("select_parents", crowded_tournament)
    toolbox.register("mate", mate_genomes, space=space, eta=config.crossover_eta)
    indpb = config.gene_mutation_probability or 1.0 / space.num_genes
    toolbox.register("mutate", mutate_genome, space=space, eta=config.mutation_eta, indpb=indpb)
    groups = list(unit_groups(space.units).values())
    if groups:
        toolbox.register("mutate_group", mutate_group, space=space, groups=groups)
    return toolbox
