"""KID in any feature space, through torchmetrics' ``KernelInceptionDistance``: the quality metric for small sets.

KID (Bińkowski et al., 2018) is the squared maximum mean discrepancy between real and generated features under the
polynomial kernel ``k(x, y) = (x . y / d + 1) ** 3``, estimated without bias. FID fits a Gaussian to each set and
is biased upward at small sample sizes: with 8-16 images in 1280 dimensions its covariances have rank <= 15, and
two draws from one distribution score far from 0. KID of two such draws is 0 in expectation at any size (single
estimates can be slightly negative; they are not clamped), so compare models at 8-64 images with KID and its
standard error, and keep FID for hundreds of images and for comparisons with published numbers.

This subclass keeps torchmetrics' kernel and estimator (`poly_mmd`) and changes what does not suit small sets:

* the subset size defaults to the smaller set's size (torchmetrics' 1000 refuses smaller sets);
* subsets are drawn with a ``torch.Generator`` seeded by ``seed``, so a result is reproducible and the global RNG
  is left untouched (torchmetrics draws them with the global RNG);
* kernels are computed in float64, so large features do not overflow the cubic kernel;
* each set needs at least 2 samples (the unbiased estimate divides by ``m (m - 1)``), refused with a clear error;
* the result carries a jackknife standard error of the estimate on all samples. torchmetrics' ``std`` is the
  spread over subsets: it measures the subsampling, not the uncertainty of KID, and is 0 when every subset is the
  whole set (equal set sizes at the default subset size).

Like FID, ``update`` takes images (embedded in the metric's feature space) or precomputed (N, d) features, so one
embedding serves FID, KID, AMD and replication. Lower is better.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
from torchmetrics.image.kid import KernelInceptionDistance, poly_kernel, poly_mmd
from torchmetrics.utilities.data import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from .features import DEFAULT_FEATURE, FeatureInput, FeatureSpec, PrecomputedFeatures, resolve_feature
from .images import ImageInput


MIN_SAMPLES_PER_SET = 2


class KIDResult(NamedTuple):
    """KID of generated against real features, all float64 scalar tensors.

    Attributes:
        mean: the unbiased squared MMD, averaged over subsets; close to 0 (either sign) for one distribution.
        std: the spread of the subset estimates (torchmetrics' ``kid_std``); 0 when every subset is the whole set.
        standard_error: the jackknife standard error of the unbiased estimate on all samples, the uncertainty to
            quote with ``mean``. It errs large (the jackknife overestimates variance): 1.3-1.5 x the spread over
            independent draws of Gaussian sets at 8-64 samples. NaN when a set has fewer than 3 samples.
    """

    mean: torch.Tensor
    std: torch.Tensor
    standard_error: torch.Tensor


class KernelDistance(FeatureInput, KernelInceptionDistance):
    """KID in a chosen feature space; ``update(x, real)`` takes images or precomputed (N, d) features.

    Args:
        feature: the feature space (default EfficientNet-Lite0, as for `FrechetDistance`), or ``None`` when updates
            pass features only (then ``num_features`` is required).
        num_features: the feature width, needed with ``feature=None`` or a callable without ``num_features``.
        subset_size: samples drawn from each set per subset; ``None`` (default) uses the smaller set's size.
        num_subsets: subsets averaged into ``mean``.
        seed: seeds the subset draws (a private ``torch.Generator``), so equal inputs give equal results.
        batch_size: images embedded at once.
        reset_real_features: keep the real features across ``reset()`` when ``False`` (torchmetrics' option).
        kwargs: torchmetrics' ``degree``, ``gamma``, ``coef`` of the kernel, and ``Metric`` options.
    """

    def __init__(
        self,
        feature: FeatureSpec | None = DEFAULT_FEATURE,
        num_features: int | None = None,
        subset_size: int | None = None,
        num_subsets: int = 100,
        seed: int = 0,
        batch_size: int = 64,
        reset_real_features: bool = True,
        **kwargs: Any,
    ) -> None:
        extractor, width = resolve_feature(feature, num_features)
        if subset_size is not None and subset_size < MIN_SAMPLES_PER_SET:
            raise ValueError(f"subset_size must be at least {MIN_SAMPLES_PER_SET}, got {subset_size}.")
        with warnings.catch_warnings():
            # torchmetrics warns that features are kept in memory: that is the design here (N x d floats per set).
            warnings.filterwarnings("ignore", message="Metric `Kernel Inception Distance` will save")
            super().__init__(
                feature=PrecomputedFeatures(width),
                subsets=num_subsets,
                subset_size=subset_size or MIN_SAMPLES_PER_SET,
                reset_real_features=reset_real_features,
                normalize=False,
                **kwargs,
            )
        self.subset_size = subset_size
        self.seed = seed
        self.feature_extractor, self.num_features, self.batch_size = extractor, width, batch_size

    def update(self, images_or_features: ImageInput | torch.Tensor, real: bool) -> None:
        """Adds real (``real=True``) or generated images, or their (N, d) features, to the kept features."""
        super().update(self.features(images_or_features).to(self.device), real=real)

    def compute(self) -> KIDResult:
        """KID over ``num_subsets`` seeded subsets, and its jackknife standard error; needs >= 2 samples per set."""
        real = self._gathered_features(self.real_features, "real")
        generated = self._gathered_features(self.fake_features, "generated")
        smaller = min(len(real), len(generated))
        subset_size = self.subset_size or smaller
        if subset_size > smaller:
            raise ValueError(
                f"subset_size={subset_size} is larger than the smaller set ({len(real)} real, {len(generated)} "
                "generated features). Pass subset_size=None to use the smaller set's size."
            )
        generator = torch.Generator().manual_seed(self.seed)
        estimates = []
        for _ in range(self.subsets):
            real_subset = real[self._draw(len(real), subset_size, generator, real.device)]
            generated_subset = generated[self._draw(len(generated), subset_size, generator, real.device)]
            estimates.append(poly_mmd(real_subset, generated_subset, self.degree, self.gamma, self.coef))
        estimates = torch.stack(estimates)
        standard_error = self._jackknife_standard_error(real, generated)
        return KIDResult(estimates.mean(), estimates.std(unbiased=False), standard_error)

    def _sync_dist(self, dist_sync_fn: Any = gather_all_tensors, process_group: Any | None = None) -> None:
        """Gathers the feature lists across processes, after giving an empty list the shape (0, d).

        torchmetrics turns an empty list state into a 1-D empty tensor, which cannot be gathered with the other
        processes' (N, d) features (the gather never completes); a process that saw no generated (or real) images
        joins with an empty (0, d) matrix instead.
        """
        for name in ("real_features", "fake_features"):
            if not len(getattr(self, name)):
                setattr(self, name, [torch.empty(0, self.num_features, device=self.device, dtype=self.dtype)])
        super()._sync_dist(dist_sync_fn, process_group)

    @staticmethod
    def _draw(count: int, subset_size: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """Indices of a random subset, drawn on the CPU with ``generator`` so that every device draws the same."""
        return torch.randperm(count, generator=generator)[:subset_size].to(device)

    def _gathered_features(self, state: list[torch.Tensor], name: str) -> torch.Tensor:
        """One set's features as one float64 tensor, refused when it has fewer than 2 samples."""
        features = dim_zero_cat(state) if len(state) > 0 else torch.empty(0, self.num_features)
        if len(features) < MIN_SAMPLES_PER_SET:
            raise ValueError(
                f"KID needs at least {MIN_SAMPLES_PER_SET} {name} samples (the unbiased estimate divides by "
                f"m (m - 1)), got {len(features)}. Update the metric with more {name} images or features."
            )
        return features.double()

    def _jackknife_standard_error(self, real: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
        """Delete-one jackknife (two-sample form, Arvesen 1969) of the unbiased MMD^2 with all samples.

        Leaving out one sample changes the three kernel sums by that sample's row sums, so all leave-one-out
        estimates come from the three kernel matrices in closed form.
        """
        n, m = len(real), len(generated)
        if min(n, m) < MIN_SAMPLES_PER_SET + 1:
            return torch.tensor(float("nan"), dtype=torch.float64, device=real.device)
        kernel = {"degree": self.degree, "gamma": self.gamma, "coef": self.coef}
        k_real = poly_kernel(real, real, **kernel)
        k_generated = poly_kernel(generated, generated, **kernel)
        k_cross = poly_kernel(real, generated, **kernel)
        real_rows = k_real.sum(dim=1) - k_real.diagonal()
        generated_rows = k_generated.sum(dim=1) - k_generated.diagonal()
        real_sum, generated_sum, cross_sum = real_rows.sum(), generated_rows.sum(), k_cross.sum()
        without_real = (
            (real_sum - 2 * real_rows) / ((n - 1) * (n - 2))
            + generated_sum / (m * (m - 1))
            - 2 * (cross_sum - k_cross.sum(dim=1)) / ((n - 1) * m)
        )
        without_generated = (
            real_sum / (n * (n - 1))
            + (generated_sum - 2 * generated_rows) / ((m - 1) * (m - 2))
            - 2 * (cross_sum - k_cross.sum(dim=0)) / (n * (m - 1))
        )
        variance = (n - 1) / n * (without_real - without_real.mean()).square().sum() + (m - 1) / m * (
            without_generated - without_generated.mean()
        ).square().sum()
        return variance.sqrt()


def kernel_distance(
    real_features: torch.Tensor,
    generated_features: torch.Tensor,
    subset_size: int | None = None,
    num_subsets: int = 100,
    seed: int = 0,
) -> KIDResult:
    """Function form of `KernelDistance` on precomputed (N, d) features (N >= 2 in each set)."""
    metric = KernelDistance(
        feature=None, num_features=real_features.shape[-1], subset_size=subset_size, num_subsets=num_subsets, seed=seed
    )
    metric.update(real_features, real=True)
    metric.update(generated_features, real=False)
    return metric.compute()
