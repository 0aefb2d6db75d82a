"""SVD factors cached on disk by a `SpectralFactorPool(cache_dir=...)` (issue 17, item 3).

The reference for "read from disk" is the count of decompositions actually computed (a spy that calls through to the
real `_decompose`); for correctness, the factors a layer gets from the cache rebuild its weight and are orthonormal.
"""

from __future__ import annotations

import os

import pytest
import torch
from peft import get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import peft_memcontrol.svd as svd
from peft_memcontrol import SpectralFactorPool, SVDiffConfig, clear_svd_cache
from peft_memcontrol.sample_data import build_faces_dataset
from peft_memcontrol.search import GenomeSpace
from peft_memcontrol.search.inner_loop import InnerLoop, ProxyDataSpec
from peft_memcontrol.training import TrainingConfig
from peft_memcontrol.tuners import SVDiffLayer

from helpers.models import build_sd15_unet


@pytest.fixture
def decompositions(monkeypatch):
    """Counts the decompositions computed (the real function still runs)."""
    calls = []
    real = svd._decompose

    def counting(weight, as_row):
        calls.append(tuple(weight.shape))
        return real(weight, as_row)

    monkeypatch.setattr(svd, "_decompose", counting)
    return calls


def _factors(unet, cache_dir) -> dict[str, svd.SpectralFactors]:
    clear_svd_cache()
    with SpectralFactorPool(cache_dir=cache_dir):
        model = get_peft_model(unet, SVDiffConfig())
    factors = {path: layer.spectral_factors for path, layer in model.named_modules() if isinstance(layer, SVDiffLayer)}
    model.unload()
    return factors


def test_a_second_run_reads_every_decomposition_from_the_folder(tmp_path, decompositions):
    unet = build_sd15_unet(seed=41)
    first = _factors(unet, tmp_path)
    distinct = len({id(factors) for factors in first.values()})
    assert len(decompositions) == distinct
    assert len(list(tmp_path.glob("*.safetensors"))) == distinct and not list(tmp_path.glob("*.tmp"))

    decompositions.clear()
    second = _factors(unet, tmp_path)
    assert decompositions == []
    for path, factors in first.items():
        for got, expected in zip(second[path], factors):
            assert torch.equal(got, expected), path


def test_damaged_or_foreign_files_are_recomputed_with_a_warning(tmp_path, decompositions):
    unet = build_sd15_unet(seed=42)
    first = _factors(unet, tmp_path)
    files = sorted(tmp_path.glob("*.safetensors"), key=os.path.getsize)
    truncated, tampered = files[-1], files[-2]
    truncated.write_bytes(truncated.read_bytes()[:100])
    tensors = load_file(tampered)
    tensors["u"][:, 0] *= -1  # still orthonormal, but no longer rebuilds the weight
    save_file(tensors, tampered, metadata={"key": _key_of(tampered)})

    decompositions.clear()
    with pytest.warns(UserWarning, match="Ignoring the cached SVD") as warned:
        second = _factors(unet, tmp_path)
    messages = " ".join(str(warning.message) for warning in warned)
    assert "do not rebuild the weight" in messages
    assert len(decompositions) == 2
    for path, factors in first.items():
        for got, expected in zip(second[path], factors):
            torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=path)

    decompositions.clear()
    _factors(unet, tmp_path)  # both files were rewritten
    assert decompositions == []


def _key_of(path) -> str:
    with safe_open(path, framework="pt") as handle:
        return handle.metadata()["key"]


def test_search_candidates_read_the_cache_written_by_the_first(tmp_path, decompositions):
    data = build_faces_dataset(str(tmp_path / "data"), num_test=4, num_memorization=2, memorization_repeats=2)
    space = GenomeSpace.from_layout("sd15-reference-13", method="svdiff")
    first, second = (space.decode(genome) for genome in space.seed_genomes()[:2])
    loop = InnerLoop(
        ProxyDataSpec(data.train_dir, test_data_dir=data.test_dir, fraction=0.05, num_memorization=2, repeats=2),
        objectives=["val_loss"],
        training=TrainingConfig(max_train_steps=1, train_batch_size=2),
        reuse_base_model=False,  # each candidate reloads the base model and forgets the in-memory decompositions
        svd_cache_dir=tmp_path / "svd",
    )
    loop(first)
    written = len(decompositions)
    assert written == len(list((tmp_path / "svd").glob("*.safetensors"))) > 0
    decompositions.clear()
    loop(second)
    assert decompositions == []


def test_the_check_of_cached_factors_refuses_what_does_not_decompose_the_weight():
    weight = torch.randn(48, 96, generator=torch.Generator().manual_seed(0))
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    svd._check_decomposition(weight, u, s, vh)  # the true factors pass

    other = weight.clone()
    other[3, 5] += 0.05 * weight.abs().max()  # one entry of another weight
    with pytest.raises(ValueError, match="do not rebuild the weight"):
        svd._check_decomposition(other, u, s, vh)
    with pytest.raises(ValueError, match="not orthonormal"):  # rebuilds the weight, but U is not orthonormal
        svd._check_decomposition(weight, 2 * u, s / 2, vh)
    with pytest.raises(ValueError, match="not orthonormal"):
        svd._check_decomposition(weight, u, s * 2, vh / 2)
