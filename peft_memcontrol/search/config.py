"""`SearchConfig`: the settings of the outer loop (population, variation rates, fidelities, seed)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SearchConfig:
    """Settings of the outer loop.

    Args:
        population_size: individuals kept each generation (the reference ran 50).
        generations: generations of offspring after the first population (total full-budget evaluations are at
            most ``population_size + generations * num_offspring``).
        num_offspring: offspring per generation (default: ``population_size``).
        crossover_probability: probability that a pair of parents is crossed over.
        mutation_probability: probability that an offspring is mutated.
        gene_mutation_probability: per-gene mutation probability (default: 1 / number of genes).
        crossover_eta: distribution index of SBX crossover on the learning-rate gene.
        mutation_eta: distribution index of polynomial mutation on the learning-rate gene.
        fidelities: increasing budget fractions ending at 1.0; ``(1.0,)`` is plain NSGA-II, ``(0.25, 1.0)`` trains
            every offspring on a quarter of the budget and promotes the best to the full one.
        promote_fraction: share of the candidates promoted from one fidelity to the next.
        seed: seeds the search's private random generator (DEAP's operators draw from it).
        reference_point: hypervolume reference point; default: the worst value of each objective in the first
            population plus 10% of its range, fixed for the rest of the search.
    """

    population_size: int = 20
    generations: int = 10
    num_offspring: int | None = None
    crossover_probability: float = 0.9
    mutation_probability: float = 1.0
    gene_mutation_probability: float | None = None
    crossover_eta: float = 15.0
    mutation_eta: float = 20.0
    fidelities: tuple[float, ...] = (1.0,)
    promote_fraction: float = 0.5
    seed: int = 0
    reference_point: list[float] | None = None

    def __post_init__(self) -> None:
        self.fidelities = tuple(float(f) for f in self.fidelities)
        if self.population_size < 2:
            raise ValueError(f"population_size must be at least 2, got {self.population_size}.")
        if self.generations < 0:
            raise ValueError(f"generations must be >= 0, got {self.generations}.")
        if not self.fidelities or self.fidelities[-1] != 1.0 or list(self.fidelities) != sorted(set(self.fidelities)):
            raise ValueError(f"fidelities must increase strictly and end at 1.0, got {self.fidelities}.")
        if self.fidelities[0] <= 0:
            raise ValueError("fidelities must be positive.")
        if not 0 < self.promote_fraction <= 1:
            raise ValueError(f"promote_fraction must be in (0, 1], got {self.promote_fraction}.")

    @property
    def offspring(self) -> int:
        """Offspring per generation: ``num_offspring``, or ``population_size`` when unset."""
        return self.num_offspring or self.population_size
