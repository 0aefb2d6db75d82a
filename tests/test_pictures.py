"""The nearest-neighbour picture's files and refusals: images round-trip through safetensors, and a picture of
generations for different prompts, of no prompts, or from a damaged or missing image file is refused by name rather
than drawn wrong."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from peft_memcontrol.evaluation import load_prompt_records, nearest_picture, save_prompt_images


def records(prompts: list[str], seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {
            "prompt": prompt,
            "group_size": 1,
            "distance": 0.1 * index,
            "extracted": index == 0,
            "generation": torch.rand(3, 8, 8, generator=generator),
            "training": torch.rand(3, 8, 8, generator=generator),
        }
        for index, prompt in enumerate(prompts)
    ]


def scalars(found: list[dict]) -> list[dict]:
    return [{key: record[key] for key in ("prompt", "group_size", "distance", "extracted")} for record in found]


def test_images_round_trip_and_damaged_or_missing_files_are_refused(tmp_path):
    saved = records(["a digit 3", "a digit 7"])
    save_prompt_images(saved, str(tmp_path))
    loaded = load_prompt_records(str(tmp_path), scalars(saved))
    for before, after in zip(saved, loaded):
        assert after["prompt"] == before["prompt"]
        assert torch.equal(after["generation"], before["generation"])
        assert torch.equal(after["training"], before["training"])
    # a results.json of another run (three prompts) beside this run's images (two)
    with pytest.raises(ValueError, match="expected 3 generation images, found shape"):
        load_prompt_records(str(tmp_path), scalars(records(["x", "y", "z"])))
    save_file({"generation": torch.zeros(2, 3, 8, 8)}, str(tmp_path / "prompt_records.safetensors"))
    with pytest.raises(ValueError, match="training images, found shape None"):
        load_prompt_records(str(tmp_path), scalars(saved))
    with pytest.raises(FileNotFoundError, match="older version"):
        load_prompt_records(str(tmp_path / "elsewhere"), scalars(saved))


def test_generations_of_other_prompts_or_none_are_not_drawn(tmp_path):
    path = str(tmp_path / "nearest.png")
    with pytest.raises(ValueError, match="'tuned' was attacked with other prompts than 'base'"):
        nearest_picture({"base": records(["a", "b"]), "tuned": records(["a", "c"])}, path)
    with pytest.raises(ValueError, match="no attacked prompts"):
        nearest_picture({"base": []}, path)
    assert not (tmp_path / "nearest.png").exists()
    assert nearest_picture({"base": records(["a", "b"]), "tuned": records(["a", "b"], seed=1)}, path) == path
