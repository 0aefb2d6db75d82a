"""KID: the unbiased kernel distance against a brute-force computation, its bias beside FID's, and its errors."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from peft_memcontrol.metrics import CallableFeatures, frechet_distance
from peft_memcontrol.metrics.kernel_distance import KernelDistance, kernel_distance


def brute_force_mmd2(real: torch.Tensor, generated: torch.Tensor) -> float:
    """The unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, one kernel evaluation at a time, in float64."""
    real, generated = real.double(), generated.double()
    d = real.shape[1]

    def kernel(x, y):
        return ((x @ y / d + 1.0) ** 3).item()

    n, m = len(real), len(generated)
    within_real = sum(kernel(real[i], real[j]) for i, j in itertools.permutations(range(n), 2)) / (n * (n - 1))
    within_generated = sum(kernel(generated[i], generated[j]) for i, j in itertools.permutations(range(m), 2))
    across = sum(kernel(x, y) for x in real for y in generated) / (n * m)
    return within_real + within_generated / (m * (m - 1)) - 2.0 * across


def brute_force_jackknife_se(real: torch.Tensor, generated: torch.Tensor) -> float:
    """Two-sample delete-one jackknife of `brute_force_mmd2`, recomputing every leave-one-out estimate."""
    n, m = len(real), len(generated)
    without_real = np.array([brute_force_mmd2(torch.cat([real[:i], real[i + 1 :]]), generated) for i in range(n)])
    without_gen = np.array([brute_force_mmd2(real, torch.cat([generated[:j], generated[j + 1 :]])) for j in range(m)])
    variance = (n - 1) / n * ((without_real - without_real.mean()) ** 2).sum()
    variance += (m - 1) / m * ((without_gen - without_gen.mean()) ** 2).sum()
    return float(np.sqrt(variance))


def gaussian(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed)) + shift


def test_kid_equals_the_brute_force_unbiased_mmd_when_every_subset_is_the_whole_set():
    real, generated = gaussian(9, 16, seed=0), gaussian(9, 16, seed=1, shift=0.5)
    result = kernel_distance(real, generated, num_subsets=5)
    assert result.mean.item() == pytest.approx(brute_force_mmd2(real, generated), rel=1e-10)
    assert result.std.item() == pytest.approx(0.0, abs=1e-12)
    assert result.standard_error.item() == pytest.approx(brute_force_jackknife_se(real, generated), rel=1e-8)


def test_standard_error_of_unequal_sets_matches_the_brute_force_jackknife():
    real, generated = gaussian(7, 12, seed=2), gaussian(10, 12, seed=3, shift=0.3)
    result = kernel_distance(real, generated)
    assert result.standard_error.item() == pytest.approx(brute_force_jackknife_se(real, generated), rel=1e-8)
    # subsets of 7 generated features vary, and their mean approaches the all-sample estimate
    assert result.std.item() > 0.0
    assert result.mean.item() == pytest.approx(brute_force_mmd2(real, generated), abs=result.std.item())


def test_kid_is_unbiased_at_eight_samples_where_fid_is_mostly_bias():
    n, d = 8, 64
    same = [kernel_distance(gaussian(n, d, seed=s), gaussian(n, d, seed=100 + s)) for s in range(10)]
    shifted = kernel_distance(gaussian(n, d, seed=200), gaussian(n, d, seed=201, shift=1.0))
    for result in same:
        assert abs(result.mean.item()) < 3.0 * result.standard_error.item()
    assert abs(np.mean([result.mean.item() for result in same])) < 0.1  # each estimate's SE is about 0.2
    assert shifted.mean.item() > 3.0 * shifted.standard_error.item()

    # FID of two draws from N(0, I) is 0 in the population; at n = 8 in d = 64 it reads above 100, more than the
    # population FID of the shifted pair (64 = |shift|^2 * d), because covariances of rank 7 miss most of the spread.
    same_fid = [frechet_distance(gaussian(n, d, seed=s), gaussian(n, d, seed=100 + s)).item() for s in range(10)]
    assert min(same_fid) > 64.0


def test_subsets_are_reproducible_and_leave_the_global_rng_alone():
    real, generated = gaussian(12, 8, seed=4), gaussian(20, 8, seed=5)
    state = torch.get_rng_state()
    first = kernel_distance(real, generated, subset_size=6, num_subsets=20, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)  # a different global state must not change the result
    again = kernel_distance(real, generated, subset_size=6, num_subsets=20, seed=7)
    other_seed = kernel_distance(real, generated, subset_size=6, num_subsets=20, seed=8)
    assert again.mean.item() == first.mean.item() and again.std.item() == first.std.item()
    assert other_seed.mean.item() != first.mean.item()


def test_large_features_do_not_overflow_the_cubic_kernel():
    real, generated = gaussian(6, 8, seed=6) * 1e14, gaussian(6, 8, seed=7, shift=0.5) * 1e14
    result = kernel_distance(real, generated)
    assert torch.isfinite(result.mean) and torch.isfinite(result.standard_error)
    assert result.mean.item() == pytest.approx(brute_force_mmd2(real, generated), rel=1e-8)


def natural_crops(name: str, count: int, size: int = 32) -> torch.Tensor:
    """``count`` (N, 3, size, size) crops in [0, 1] along the diagonal of scikit-image's photograph ``name``."""
    import skimage.data

    tensor = torch.from_numpy(getattr(skimage.data, name)()).permute(2, 0, 1).float() / 255.0
    step = (min(tensor.shape[1:]) - size) // count
    return torch.stack([tensor[:, i * step : i * step + size, i * step : i * step + size] for i in range(count)])


def test_images_and_their_features_give_the_same_kid():
    projection = torch.randn(3 * 8 * 8, 24, generator=torch.Generator().manual_seed(0)) / (3 * 8 * 8) ** 0.5

    def pooled_projection(images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(images, 8).flatten(1) @ projection

    real, generated = natural_crops("astronaut", 10), natural_crops("coffee", 10)
    metric = KernelDistance(feature=CallableFeatures(pooled_projection, num_features=24))
    metric.update(real[:4], real=True)  # several updates accumulate
    metric.update(real[4:], real=True)
    metric.update(generated, real=False)
    from_images = metric.compute()
    from_features = kernel_distance(pooled_projection(real), pooled_projection(generated))
    assert from_images.mean.item() == pytest.approx(from_features.mean.item(), rel=1e-6)
    assert from_images.standard_error.item() == pytest.approx(from_features.standard_error.item(), rel=1e-6)


@pytest.mark.parametrize(
    ("real_count", "generated_count", "message"),
    [(1, 5, "at least 2 real samples"), (5, 1, "at least 2 generated samples"), (5, 0, "got 0")],
)
def test_sets_smaller_than_two_are_refused(real_count, generated_count, message):
    metric = KernelDistance(feature=None, num_features=4)
    metric.update(gaussian(real_count, 4, seed=0), real=True)
    if generated_count:
        metric.update(gaussian(generated_count, 4, seed=1), real=False)
    with pytest.raises(ValueError, match=message):
        metric.compute()


def test_bad_widths_and_subset_sizes_are_refused():
    with pytest.raises(ValueError, match="Expected features of width 4, got 5"):
        kernel_distance(gaussian(3, 4, seed=0), gaussian(3, 5, seed=1))
    with pytest.raises(ValueError, match="larger than the smaller set \\(3 real, 6 generated"):
        kernel_distance(gaussian(3, 4, seed=0), gaussian(6, 4, seed=1), subset_size=4)
    with pytest.raises(ValueError, match="subset_size must be at least 2"):
        KernelDistance(feature=None, num_features=4, subset_size=1)
    with pytest.raises(ValueError, match="pass num_features"):
        KernelDistance(feature=None)
