"""The demo's two domains: **digits** (the search and the baselines) and **faces** (the transfer of the searched
mask), built from `peft_memcontrol.sample_data` at the sizes of a `DemoConfig`."""

from __future__ import annotations

from typing import Any

from ..sample_data import ImageFolderSplits, build_digits_dataset, build_faces_dataset


DOMAINS = ("digits", "faces")


def build_domain(domain: str, output_dir: str, config: Any) -> ImageFolderSplits:
    """Build the ``digits`` or ``faces`` set at the sizes of a `DemoConfig`. The digits' held-out folder holds
    ``num_test`` images (FID's) and then ``num_calibration`` more (the copy threshold's null distribution), drawn
    after the training digits so that the training set does not depend on it; the faces (100 in all, the rest
    trained on) have only their ``num_test`` held-out images."""
    if domain == "digits":
        return build_digits_dataset(
            output_dir,
            num_train=config.num_train,
            num_test=config.num_test,
            num_memorization=config.num_memorization,
            memorization_repeats=config.memorization_repeats,
            seed=config.seed,
            num_extra_test=config.num_calibration,
        )
    if domain == "faces":
        return build_faces_dataset(
            output_dir,
            num_test=config.num_test,
            num_memorization=config.num_memorization,
            memorization_repeats=config.memorization_repeats,
            seed=config.seed,
        )
    raise ValueError(f"Unknown demo domain {domain!r}; choose one of {DOMAINS}.")
