"""Training-data extraction attack in the style of Carlini et al. (2023), "Extracting Training Data from Diffusion
Models".

For each training prompt, generate N images. Two generations are linked when their tiled L2 distance is below a
threshold; a prompt is *flagged* when its largest group of mutually linked generations reaches ``min_group_size``
(the model keeps producing the same picture), and *extracted* when that group's representative is also within the
threshold of a training image (the picture it keeps producing is a training image).

Tiled L2 distance: both images are cut into a ``grid_size`` x ``grid_size`` grid of tiles; the distance is the
largest L2 distance between corresponding tiles, so a copy must match everywhere, not on average. By default each
tile's L2 distance is divided by the square root of its number of values (a root-mean-square difference of [0, 1]
pixels), so a threshold means the same at any resolution; ``normalize=False`` gives the reference code's plain L2
(its threshold 20 at 224 px and a 4 x 4 grid equals 20 / sqrt(3 * 56 * 56) = 0.206 normalised).

Groups: ``group_method="clique"`` (default) needs every pair in the group to be linked, Carlini's definition;
``"component"`` takes connected components, as the reference code does. Components chain: a slow drift of
distinct images a - b - c links a to c although they differ, so components over-count; cliques never do.

Maximum clique rule: the clique is found exactly by branch and bound with a greedy-colouring bound (Tomita and
Seki's MCQ, on bitsets), which settles 500 generations at link density 0.3 in well under a second. Dense random
link graphs are exponentially hard, so the search stops after ``clique_search_budget`` vertex colourings (default
5 million, about 3 s on one CPU core); it then keeps the largest clique found so far and warns that the group size
is a lower bound. A prompt flagged on a lower bound is truly flagged; one left unflagged may not be.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from tqdm.auto import tqdm

from .images import ImageInput, prepare_images


GroupMethod = Literal["clique", "component"]
Verification = Literal["own", "all"]

CLIQUE_SEARCH_BUDGET = 5_000_000


@dataclass
class ExtractionAttackConfig:
    """Options of the extraction attack.

    Attributes:
        threshold: link / match distance. Normalised (RMS per tile, [0, 1] pixels) by default; in plain L2 units
            with ``normalize=False``.
        normalize: divide each tile's L2 distance by sqrt(values per tile) (default) or not (reference parity).
        grid_size: tiles per side.
        min_group_size: group size k from which a prompt is flagged (reference 3; Carlini 10 of 500).
        group_method: ``"clique"`` (default) or ``"component"``.
        verify: compare the group's representative with the prompt's own training image (``"own"``, default) or
            with every training image (``"all"``).
        clique_search_budget: vertex colourings after which the maximum-clique search stops and keeps the largest
            clique found, a lower bound (see the module docstring).
    """

    threshold: float = 0.15
    normalize: bool = True
    grid_size: int = 4
    min_group_size: int = 3
    group_method: GroupMethod = "clique"
    verify: Verification = "own"
    clique_search_budget: int = CLIQUE_SEARCH_BUDGET

    def __post_init__(self) -> None:
        if self.group_method not in ("clique", "component"):
            raise ValueError(f"group_method must be 'clique' or 'component', got '{self.group_method}'.")
        if self.verify not in ("own", "all"):
            raise ValueError(f"verify must be 'own' or 'all', got '{self.verify}'.")
        if self.min_group_size < 2 or self.grid_size < 1 or self.threshold <= 0 or self.clique_search_budget < 1:
            raise ValueError("Need min_group_size >= 2, grid_size >= 1, threshold > 0 and clique_search_budget >= 1.")


@dataclass
class PromptExtractionRecord:
    """What the attack found for one prompt; indices of generations refer to that prompt's N generations."""

    prompt_index: int
    prompt: str | None
    group: list[int]
    flagged: bool
    representative: int
    training_index: int
    training_distance: float
    extracted: bool

    @property
    def group_size(self) -> int:
        """Size of the largest group of mutually near-identical generations."""
        return len(self.group)


@dataclass
class ExtractedPair:
    """A generation that reproduces a training image, kept to show side by side."""

    prompt_index: int
    training_index: int
    distance: float
    generated: torch.Tensor = field(repr=False)
    training: torch.Tensor = field(repr=False)


@dataclass
class ExtractionResult:
    """Counts of flagged and extracted prompts, one record per prompt and the extracted image pairs."""

    num_flagged: int
    num_extracted: int
    records: list[PromptExtractionRecord]
    matches: list[ExtractedPair]


def tiled_l2_distance(
    images_a: torch.Tensor,
    images_b: torch.Tensor,
    grid_size: int = 4,
    normalize: bool = True,
    chunk_size: int = 256,
) -> torch.Tensor:
    """Pairwise tiled L2 distance between two sets of equally sized (N, C, H, W) images: the maximum over the
    ``grid_size`` x ``grid_size`` tiles of the L2 distance between corresponding tiles (divided by sqrt(values per
    tile) when ``normalize``). Returns an (Na, Nb) matrix; ``images_b`` is processed ``chunk_size`` at a time.
    """
    if images_a.shape[1:] != images_b.shape[1:]:
        raise ValueError(
            f"Images must have the same shape, got {tuple(images_a.shape[1:])} and {tuple(images_b.shape[1:])}."
        )
    height, width = images_a.shape[-2:]
    if grid_size > min(height, width):
        raise ValueError(f"grid_size {grid_size} is larger than the image size {height} x {width}.")
    row_bounds = [rows.tolist() for rows in torch.arange(height).tensor_split(grid_size)]
    column_bounds = [columns.tolist() for columns in torch.arange(width).tensor_split(grid_size)]
    images_a = images_a.float()
    chunks = []
    for chunk in images_b.float().to(images_a.device).split(chunk_size):
        distance = torch.zeros(images_a.shape[0], chunk.shape[0], device=images_a.device)
        for rows, columns in itertools.product(row_bounds, column_bounds):
            tile = (slice(None), slice(None), slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1))
            tile_a, tile_b = images_a[tile].flatten(1), chunk[tile].flatten(1)
            tile_distance = torch.cdist(tile_a, tile_b, compute_mode="donot_use_mm_for_euclid_dist")
            if normalize:
                tile_distance = tile_distance / tile_a.shape[1] ** 0.5
            distance = torch.maximum(distance, tile_distance)
        chunks.append(distance)
    return torch.cat(chunks, dim=1)


def _largest_component(neighbours: list[set[int]]) -> list[int]:
    """The largest connected component (ties: the one with the lowest index)."""
    seen: set[int] = set()
    best: list[int] = []
    for start in range(len(neighbours)):
        if start in seen:
            continue
        component, frontier = {start}, [start]
        while frontier:
            for other in neighbours[frontier.pop()] - component:
                component.add(other)
                frontier.append(other)
        seen |= component
        if len(component) > len(best):
            best = sorted(component)
    return best


def _colour_classes(candidates: int, adjacency: list[int]) -> list[tuple[int, int]]:
    """Greedy colouring of the vertices in the bitset ``candidates``: (vertex, colour) pairs by increasing colour.

    Vertices of one colour are pairwise unlinked, so a clique holds at most one vertex per colour: a vertex's colour
    bounds the size of any clique among it and the vertices before it.
    """
    coloured, uncoloured, colour = [], candidates, 0
    while uncoloured:
        colour += 1
        available = uncoloured
        while available:
            lowest = available & -available
            vertex = lowest.bit_length() - 1
            available &= ~adjacency[vertex] & ~lowest
            uncoloured &= ~lowest
            coloured.append((vertex, colour))
    return coloured


def _maximum_clique(adjacency: list[int], budget: int) -> tuple[list[int], bool]:
    """Branch and bound for a maximum clique (MCQ) on bitset adjacency rows, without recursion.

    Returns the largest clique found and whether it is proven maximum (``False`` when ``budget`` vertex colourings
    were spent first).
    """
    best: list[int] = []
    clique: list[int] = []
    everything = (1 << len(adjacency)) - 1
    work = len(adjacency)
    # One frame per vertex of `clique`, plus the root: [vertices left to branch on, with colours; their bitset].
    frames = [[_colour_classes(everything, adjacency), everything]]
    while frames:
        frame = frames[-1]
        pending, candidates = frame
        if not pending or len(clique) + pending[-1][1] <= len(best):
            frames.pop()
            if clique:
                clique.pop()
            continue
        vertex, _ = pending.pop()
        extension = candidates & adjacency[vertex]
        frame[1] = candidates & ~(1 << vertex)
        if not extension:
            if len(clique) + 1 > len(best):
                best = clique + [vertex]
            continue
        work += extension.bit_count()
        if work > budget:
            return best, False
        clique.append(vertex)
        frames.append([_colour_classes(extension, adjacency), extension])
    return best, True


def _largest_clique(linked: torch.Tensor, budget: int) -> list[int]:
    """A maximum clique of a boolean link matrix, or the largest found within ``budget`` (with a warning).

    Vertices are coloured in order of decreasing degree, which keeps the colouring bound tight; among equal degrees
    the lowest index is branched on first (an edgeless graph gives ``[0]``).
    """
    linked = linked.cpu().clone()
    linked.fill_diagonal_(False)
    degrees = linked.sum(dim=1).tolist()
    order = sorted(range(len(degrees)), key=lambda node: (-degrees[node], -node))
    permuted = linked[order][:, order].numpy()
    adjacency = [int.from_bytes(row.tobytes(), "little") for row in np.packbits(permuted, axis=1, bitorder="little")]
    clique, exact = _maximum_clique(adjacency, budget)
    if not exact:
        warnings.warn(
            f"The maximum-clique search over {len(order)} generations stopped after its budget of {budget} vertex "
            f"colourings: the group of {len(clique)} is the largest found, a lower bound on the largest group. Raise "
            "clique_search_budget for the exact size, or lower the link threshold (the link graph is dense).",
            stacklevel=3,
        )
    return sorted(order[vertex] for vertex in clique)


def largest_group(
    linked: torch.Tensor, method: GroupMethod = "clique", clique_search_budget: int = CLIQUE_SEARCH_BUDGET
) -> list[int]:
    """The largest group of a symmetric boolean (N, N) link matrix: a maximum clique or a largest connected
    component. A single node is a group of size 1. The clique search stops after ``clique_search_budget`` vertex
    colourings with a warning, keeping the largest clique found (see the module docstring).
    """
    if method == "clique":
        return _largest_clique(linked.bool(), clique_search_budget)
    neighbours = [set(torch.nonzero(row).flatten().tolist()) - {index} for index, row in enumerate(linked)]
    return _largest_component(neighbours)


def _attack_prompt(
    generated: torch.Tensor,
    training_images: torch.Tensor,
    prompt_index: int,
    prompt: str | None,
    config: ExtractionAttackConfig,
) -> tuple[PromptExtractionRecord, ExtractedPair | None]:
    """Groups one prompt's generations, flags the prompt and verifies its representative against training data."""
    distances = tiled_l2_distance(generated, generated, config.grid_size, config.normalize)
    group = largest_group(distances < config.threshold, config.group_method, config.clique_search_budget)
    within_group = distances[group][:, group]
    representative = group[int(within_group.sum(dim=1).argmin())]  # the group's medoid
    candidates = [prompt_index] if config.verify == "own" else list(range(training_images.shape[0]))
    to_training = tiled_l2_distance(
        generated[representative : representative + 1], training_images[candidates], config.grid_size, config.normalize
    )[0]
    nearest = int(to_training.argmin())
    training_index, training_distance = candidates[nearest], float(to_training[nearest])
    flagged = len(group) >= config.min_group_size
    extracted = flagged and training_distance < config.threshold
    record = PromptExtractionRecord(
        prompt_index, prompt, group, flagged, representative, training_index, training_distance, extracted
    )
    match = None
    if extracted:
        match = ExtractedPair(
            prompt_index,
            training_index,
            training_distance,
            generated[representative].cpu(),
            training_images[training_index].cpu(),
        )
    return record, match


def _match_size(training_images: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Resizes training images to the generations' size (bilinear, antialiased) when it differs."""
    if training_images.shape[-2:] == size:
        return training_images
    return F.interpolate(training_images, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)


def _run_attack(
    per_prompt: Iterable[tuple[str | None, torch.Tensor]],
    training_images: torch.Tensor,
    config: ExtractionAttackConfig,
) -> ExtractionResult:
    """Attacks prompt after prompt; training images are resized and moved once, when the generations' size or
    device first differs from theirs (the attack's documented conversion: bilinear, antialiased)."""
    records, matches = [], []
    training = training_images
    for index, (prompt, images) in enumerate(per_prompt):
        if training.shape[-2:] != images.shape[-2:] or training.device != images.device:
            training = _match_size(training_images, images.shape[-2:]).to(images.device)
        record, match = _attack_prompt(images, training, index, prompt, config)
        records.append(record)
        if match is not None:
            matches.append(match)
    return ExtractionResult(sum(record.flagged for record in records), len(matches), records, matches)


def extraction_attack_on_images(
    generated: torch.Tensor | Sequence[ImageInput],
    training_images: ImageInput,
    prompts: Sequence[str] | None = None,
    config: ExtractionAttackConfig | None = None,
) -> ExtractionResult:
    """Runs the attack on generations made beforehand.

    Args:
        generated: one entry per prompt, each N images (a (P, N, C, H, W) tensor or a list of image batches).
        training_images: P images, ``training_images[i]`` being the training image of prompt i. Resized to the
            generations' size if they differ.
        prompts: optional prompt texts, copied into the records.
        config: attack options (`ExtractionAttackConfig`).
    """
    config = config or ExtractionAttackConfig()
    training_images = prepare_images(training_images)
    if len(generated) != training_images.shape[0]:
        raise ValueError(
            f"Got generations for {len(generated)} prompts but {training_images.shape[0]} training images."
        )
    per_prompt = (
        (prompts[index] if prompts else None, prepare_images(images)) for index, images in enumerate(generated)
    )
    return _run_attack(per_prompt, training_images, config)


ImageGenerator = Callable[[str, int], ImageInput]


def generate_images(
    generator: Any | ImageGenerator,
    prompt: str,
    num_images: int,
    batch_size: int = 8,
    seed: int | None = None,
    **pipeline_kwargs: Any,
) -> torch.Tensor:
    """Generates ``num_images`` images for one prompt, ``batch_size`` at a time, in the library's image convention.

    ``generator`` is a diffusers ``DiffusionPipeline`` (called with ``output_type="pt"``, a seeded
    ``torch.Generator`` when ``seed`` is given, and ``pipeline_kwargs``) or a callable ``(prompt, n) -> images``.
    """
    is_pipeline = isinstance(generator, DiffusionPipeline)
    random = torch.Generator(generator.device).manual_seed(seed) if is_pipeline and seed is not None else None
    batches = []
    for start in range(0, num_images, batch_size):
        count = min(batch_size, num_images - start)
        if is_pipeline:
            output = generator(
                prompt=prompt, num_images_per_prompt=count, output_type="pt", generator=random, **pipeline_kwargs
            )
            batches.append(prepare_images(output.images))
        else:
            batches.append(prepare_images(generator(prompt, count)))
    return torch.cat(batches)


def extraction_attack(
    generator: Any | ImageGenerator,
    prompts: Sequence[str],
    training_images: ImageInput,
    num_generations: int = 50,
    batch_size: int = 8,
    config: ExtractionAttackConfig | None = None,
    seed: int | None = 0,
    **pipeline_kwargs: Any,
) -> ExtractionResult:
    """Generates ``num_generations`` images per training prompt and runs the attack, prompt by prompt so memory
    holds one prompt's generations at a time (only extracted pairs are kept).

    Args:
        generator: a diffusers pipeline or a callable ``(prompt, n) -> images`` (see `generate_images`).
        prompts: the training prompts.
        training_images: ``training_images[i]`` is the training image of ``prompts[i]``.
        num_generations: N generations per prompt (reference 50; Carlini 500).
        batch_size: images per pipeline call.
        config: attack options (`ExtractionAttackConfig`).
        seed: seed of the pipeline's random generator (``None``: unseeded).
        pipeline_kwargs: passed to the pipeline, e.g. ``num_inference_steps``, ``guidance_scale``.
    """
    config = config or ExtractionAttackConfig()
    training_images = prepare_images(training_images)
    if len(prompts) != training_images.shape[0]:
        raise ValueError(f"Got {len(prompts)} prompts but {training_images.shape[0]} training images.")
    per_prompt = (
        (prompt, generate_images(generator, prompt, num_generations, batch_size, seed, **pipeline_kwargs))
        for prompt in tqdm(prompts, desc="Extraction attack", unit="prompt")
    )
    return _run_attack(per_prompt, training_images, config)
