"""The demo's two domains: **digits** (the search and the baselines) and **faces** (the transfer of the searched
mask), built from `peft_memcontrol.sample_data` at the sizes of a `DemoConfig`."""

from __future__ import annotations

from typing import Any

from ..sample_data import ImageFolderSplits, build_digits_dataset, build_faces_dataset


DOMAINS = ("digits", "faces")


def build_domain(domain: str, output_dir: str, config: Any) -> ImageFolderSplits:
    """Build the ``digits`` or ``faces`` set at the sizes of a `DemoConfig`: the held-out folder holds ``num_test``
    images (FID's) and then ``num_calibration`` more (the copy threshold's null distribution)."""
    if domain == "digits":
        return build_digits_dataset(
            output_dir,
            num_train=config.num_train,
            num_test=config.num_test + config.num_calibration,
            num_memorization=config.num_memorization,
            memorization_repeats=config.memorization_repeats,
            seed=config.seed,
        )
    if domain == "faces":
        return build_faces_dataset(
            output_dir,
            num_test=config.num_test + config.num_calibration,
            num_memorization=config.num_memorization,
            memorization_repeats=config.memorization_repeats,
            seed=config.seed,
        )
    raise ValueError(f"Unknown demo domain {domain!r}; choose one of {DOMAINS}.")
