"""Extraction attack on hand-built generations with known answers, and the tiled distance against a loop."""

import math

import pytest
import torch

from peft_memcontrol.metrics import (
    ExtractionAttackConfig,
    extraction_attack,
    extraction_attack_on_images,
    largest_group,
    tiled_l2_distance,
)


SIZE = 16


def image(seed, low=0.2, high=0.6):
    """A random 3 x 16 x 16 image with values in [low, high], so small constant shifts stay in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(3, SIZE, SIZE, generator=generator)


def loop_tiled_distance(a, b, grid, normalize):
    """Tiled L2 distance by explicit loops over tiles and values."""
    bounds = [round(i * SIZE / grid) for i in range(grid + 1)]
    worst = 0.0
    for row in range(grid):
        for column in range(grid):
            squares = [
                (a[c, y, x].item() - b[c, y, x].item()) ** 2
                for c in range(3)
                for y in range(bounds[row], bounds[row + 1])
                for x in range(bounds[column], bounds[column + 1])
            ]
            distance = math.sqrt(sum(squares))
            worst = max(worst, distance / math.sqrt(len(squares)) if normalize else distance)
    return worst


@pytest.mark.parametrize("normalize", [True, False])
def test_tiled_distance_equals_a_loop(normalize):
    a, b = image(0), image(1)
    b[:, :4, :4] = 0.0  # one very different tile dominates
    expected = loop_tiled_distance(a, b, 4, normalize)
    assert tiled_l2_distance(a[None], b[None], 4, normalize).item() == pytest.approx(expected, rel=1e-5)


def test_normalised_distance_does_not_depend_on_resolution():
    a, b = image(0), image(1)
    small = tiled_l2_distance(a[None], b[None])
    large = tiled_l2_distance(
        a[None].repeat_interleave(4, 2).repeat_interleave(4, 3),
        b[None].repeat_interleave(4, 2).repeat_interleave(4, 3),
    )
    assert large.item() == pytest.approx(small.item(), rel=1e-5)
    unnormalised = tiled_l2_distance(a[None], b[None], normalize=False)
    assert unnormalised.item() == pytest.approx(small.item() * math.sqrt(3 * 4 * 4), rel=1e-5)


def linked(edges, size):
    matrix = torch.eye(size, dtype=torch.bool)
    for i, j in edges:
        matrix[i, j] = matrix[j, i] = True
    return matrix


def test_clique_and_component_differ_on_a_chain():
    chain = linked([(0, 1), (1, 2), (2, 3)], 5)
    assert largest_group(chain, "component") == [0, 1, 2, 3]
    assert len(largest_group(chain, "clique")) == 2
    triangle_and_tail = linked([(0, 1), (1, 2), (0, 2), (2, 3), (4, 3)], 6)
    assert largest_group(triangle_and_tail, "clique") == [0, 1, 2]
    assert largest_group(triangle_and_tail, "component") == [0, 1, 2, 3, 4]
    assert largest_group(torch.eye(3, dtype=torch.bool), "clique") == [0]


@pytest.fixture
def planted():
    """Five prompts with known outcomes (threshold 0.15, k = 3, 6 generations each)."""
    training = torch.stack([image(100 + i) for i in range(5)])
    noise = 0.01 * (torch.rand(6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7)) - 0.5)
    distinct = torch.stack([image(200 + i, 0.0, 1.0) for i in range(6)])
    base = image(300)
    generations = [
        # 0: three exact copies of its training image + distinct images: flagged and extracted.
        torch.cat([training[0][None].repeat(3, 1, 1, 1), distinct[:3]]),
        # 1: four near copies of an image that is not in the training set: flagged, not extracted.
        torch.cat([base + noise[:4], distinct[:2]]),
        # 2: all distinct: not flagged.
        distinct,
        # 3: a chain x, x + 0.1, x + 0.2 (neighbours linked, ends not): connected but not a clique.
        torch.cat([base[None], base[None] + 0.1, base[None] + 0.2, distinct[:3]]),
        # 4: three near copies of prompt 0's training image: extracted only when verifying against all images.
        torch.cat([training[0] + noise[:3], distinct[:3]]),
    ]
    return generations, training


def test_cliques_find_the_planted_copies(planted):
    generations, training = planted
    result = extraction_attack_on_images(generations, training, prompts=[f"p{i}" for i in range(5)])
    assert [record.flagged for record in result.records] == [True, True, False, False, True]
    assert [record.extracted for record in result.records] == [True, False, False, False, False]
    assert (result.num_flagged, result.num_extracted) == (3, 1)
    assert result.records[0].group == [0, 1, 2]
    assert result.records[0].training_distance == 0.0
    assert result.records[3].group_size == 2
    match = result.matches[0]
    assert (match.prompt_index, match.training_index) == (0, 0)
    assert torch.equal(match.generated, training[0]) and torch.equal(match.training, training[0])


def test_components_also_flag_the_chain(planted):
    generations, training = planted
    result = extraction_attack_on_images(
        generations, training, config=ExtractionAttackConfig(group_method="component")
    )
    assert [record.flagged for record in result.records] == [True, True, False, True, True]
    assert result.records[3].group == [0, 1, 2]
    assert result.records[3].representative == 1  # the chain's medoid


def test_verifying_against_all_training_images_finds_copies_of_other_prompts(planted):
    generations, training = planted
    result = extraction_attack_on_images(generations, training, config=ExtractionAttackConfig(verify="all"))
    assert [record.extracted for record in result.records] == [True, False, False, False, True]
    assert result.records[4].training_index == 0


def test_group_size_threshold_and_reference_units(planted):
    generations, training = planted
    strict = extraction_attack_on_images(generations, training, config=ExtractionAttackConfig(min_group_size=4))
    assert [record.flagged for record in strict.records] == [False, True, False, False, False]
    # The reference's unnormalised L2: tiles of 3 x 4 x 4 values, so 0.15 normalised is 0.15 * sqrt(48).
    reference = ExtractionAttackConfig(normalize=False, threshold=0.15 * math.sqrt(48))
    same = extraction_attack_on_images(generations, training, config=reference)
    assert [r.flagged for r in same.records] == [True, True, False, False, True]


def test_attack_generates_through_a_callable_and_resizes_training_images(planted):
    generations, training = planted
    prompts = [f"p{i}" for i in range(5)]
    calls = []
    made = dict.fromkeys(prompts, 0)

    def generate(prompt, count):
        calls.append(count)
        upsampled = generations[prompts.index(prompt)].repeat_interleave(2, 2).repeat_interleave(2, 3)
        batch = upsampled[made[prompt] : made[prompt] + count]
        made[prompt] += count
        return (batch * 255).round().to(torch.uint8)  # uint8 is converted

    small_training = torch.nn.functional.avg_pool2d(training.repeat_interleave(2, 2).repeat_interleave(2, 3), 2)
    result = extraction_attack(generate, prompts, small_training, num_generations=6, batch_size=4)
    assert calls == [4, 2] * 5
    assert (result.num_flagged, result.num_extracted) == (3, 1)


def test_bad_inputs_raise(planted):
    generations, training = planted
    with pytest.raises(ValueError, match="5 training images"):
        extraction_attack_on_images(generations[:2], training)
    with pytest.raises(ValueError, match="group_method"):
        ExtractionAttackConfig(group_method="cliques")
    with pytest.raises(ValueError, match="grid_size"):
        tiled_l2_distance(training[:, :, :2, :2], training[:, :, :2, :2], grid_size=4)
    with pytest.raises(ValueError, match="same shape"):
        tiled_l2_distance(training, training[:, :, :8, :8])
