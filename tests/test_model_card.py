"""Every output of a training run carries a real model card: README.md with our sections and metadata.

The launch script runs in-process on the embedded tiny pipeline, on a folder of real photos, from the knee mask that
a real (synthetic-objective) search wrote to ``chosen/knee/adapter_config.json``. The saved card is parsed and every
provenance value is checked against that file; the full fine-tune's UNet and pipeline folders get cards too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys

import pytest
from huggingface_hub import ModelCard
from peft import LoraConfig
from PIL import Image

from peft_memcontrol.search import GenomeSpace, MaskSearcher, SearchConfig, SyntheticMaskProblem
from peft_memcontrol.search.report import write_search_outputs
from peft_memcontrol.tiny_sd import load_tiny_pipeline, tiny_pipeline_path
from peft_memcontrol.training import load_training_dataset
from peft_memcontrol.tuners.model_card import describe_source, hub_id, update_model_card

from helpers.training import TINY_SLOTS, make_trainer


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "examples", "train_text_to_image_memcontrol.py")
_spec = importlib.util.spec_from_file_location("train_text_to_image_memcontrol", SCRIPT)
launch_script = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(launch_script)

BLANK = "[More Information Needed]"
ADAPTER_HEADINGS = ["How to load it", "Training data", "Training settings", "Search provenance", "Framework versions"]
FULL_HEADINGS = ["How to load it", "Training data", "Training settings", "Validation images", "Framework versions"]


def _photo_folder(root: str, names: list[str]) -> str:
    """Real photos from the scikit-image wheel with a ``metadata.jsonl``."""
    import skimage.data

    os.makedirs(root)
    with open(os.path.join(root, "metadata.jsonl"), "w") as f:
        for name in names:
            Image.fromarray(getattr(skimage.data, name)()[::8, ::8]).save(os.path.join(root, f"{name}.png"))
            f.write(json.dumps({"file_name": f"{name}.png", "text": f"a photo of {name}"}) + "\n")
    return root


def _searched_knee(output_dir: str) -> str:
    """Run a small search over the tiny pipeline's 16 slots with a learning-rate gene; return the knee's file."""
    space = GenomeSpace(units=TINY_SLOTS, learning_rate_bounds=(1e-4, 1e-2), name="sd15-reference-16")
    result = MaskSearcher(
        space,
        SyntheticMaskProblem(len(TINY_SLOTS)),
        config=SearchConfig(population_size=6, generations=2),
        progress=False,
    ).run()
    write_search_outputs(result, output_dir, plots=False)
    return os.path.join(output_dir, "chosen", "knee", "adapter_config.json")


def _section(text: str, name: str) -> str:
    """The body of the card's section ``name`` (between its named comments); empty when the card lacks it."""
    match = re.search(rf"<!-- peft-memcontrol:{name} -->\n(.*?)\n<!-- /peft-memcontrol:{name} -->", text, re.DOTALL)
    return match[1] if match else ""


def _rows(section: str) -> dict[str, str]:
    """The two-column table of a section, key -> value."""
    return {key: value for key, value in re.findall(r"^\| (.+?) \| (.*) \|$", section, re.MULTILINE) if key.strip()}


def _headings(text: str) -> list[str]:
    return re.findall(r"^#{1,3} (.+)$", text, re.MULTILINE)


def _check_clean(text: str, tmp_path) -> None:
    """No blank-template filler, no path of this machine."""
    assert BLANK not in text
    for path in (str(tmp_path), REPO, os.path.expanduser("~")):
        assert path not in text, path


def test_searched_mask_card_keeps_provenance_and_settings(tmp_path):
    knee_file = _searched_knee(str(tmp_path / "search"))
    with open(knee_file) as f:
        knee = json.load(f)
    assert knee["scores"] and knee["learning_rate"] and knee["search"]  # what the search records beside the mask
    data = _photo_folder(str(tmp_path / "photos"), ["camera", "coins", "astronaut", "coffee"])
    out = tmp_path / "out"
    launch_script.main(
        ["--train_data_dir", data, "--method", "memcontrol", "--mask", knee_file, "--output_dir", str(out)]
        + ["--max_train_steps", "2", "--train_batch_size", "2", "--report_to", "none", "--save_merged_pipeline"]
    )

    config = json.loads((out / "adapter_config.json").read_text())
    for key in ("objectives", "scores", "learning_rate", "search", "mask", "method"):
        assert config[key] == knee[key], key  # the trained adapter's config keeps the search's record

    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft"
    assert card.data.base_model is None  # the tiny pipeline is a local folder: no Hub id to give
    assert sorted(card.data.tags) == ["diffusers", "memcontrol", "peft-memcontrol", "svdiff"]
    text = card.text
    _check_clean(text, tmp_path)
    assert _headings(text) == ["memcontrol (svdiff) adapter of local: tiny-sd", *ADAPTER_HEADINGS]

    summary = json.loads((out / "training_summary.json").read_text())
    trainable, share = summary["trainable_parameters"], summary["trainable_share"]
    units_on = sum(knee["mask"].values())
    assert 0 < units_on < len(TINY_SLOTS)
    assert _rows(_section(text, "model")) == {
        "base model": "`local: tiny-sd` (a local folder, not on the Hub)",
        "method": "memcontrol (svdiff) (PEFT type `MC_MEMCONTROL`)",
        "mask": f"{units_on} of {len(TINY_SLOTS)} slots on, `{knee['mask_semantics']}` semantics",
        "trainable parameters": f"{trainable:,} ({100 * share:.4f}% of the base model)",
    }
    assert "peft_memcontrol.load_adapter(pipeline, " in _section(text, "load")
    assert _section(text, "data").splitlines()[2:4] == ["- images: 4", "- data set: `local: photos`"]

    shown = "knee/adapter_config.json"
    training = _rows(_section(text, "training"))
    assert training["steps"] == "2 of 2"
    assert training["batch size"] == "2 per device x 1 process x 1 accumulation steps = 2"
    assert training["learning rate"] == f"{knee['learning_rate']:g}, from the searched mask file {shown}"
    assert training["mask file"] == f"`{shown}`"
    assert float(training["final loss"]) == pytest.approx(summary["final_loss"], rel=1e-5)

    search = _rows(_section(text, "search"))
    assert f"The mask (`{shown}`) was chosen" in _section(text, "search")
    assert search["objectives"] == ", ".join(knee["objectives"])
    assert [float(search[f"score: {name}"]) for name in knee["objectives"]] == pytest.approx(
        [knee["scores"][name] for name in knee["objectives"]], rel=1e-5
    )
    assert float(search["learning rate"]) == pytest.approx(knee["learning_rate"], rel=1e-5)
    for key in ("generation", "seed", "population_size", "evaluations"):
        assert int(search[f"search: {key}"]) == knee["search"][key], key

    # The merged pipeline's card states the same run; its parameters were counted before merging removed them.
    merged = ModelCard.load(out / "merged_pipeline" / "README.md")
    assert merged.data.library_name == "diffusers"
    assert _headings(merged.text)[0] == "memcontrol (svdiff) pipeline of local: tiny-sd"
    for name in ("model", "training", "search"):
        assert _rows(_section(merged.text, name)) == _rows(_section(text, name)), name

    # Scores measured later come as a section of their own; every other section stays as it was.
    update_model_card(str(out), evaluation={"memorization: copies": 0.25, "quality: FID": 31.5})
    evaluated = ModelCard.load(out / "README.md").text
    assert _headings(evaluated) == _headings(text)[:-1] + ["Memorization and quality", "Framework versions"]
    assert _rows(_section(evaluated, "evaluation")) == {"memorization: copies": "0.25", "quality: FID": "31.5"}
    for name in ("model", "load", "data", "training", "search", "versions"):
        assert _section(evaluated, name) == _section(text, name), name


def test_full_fine_tune_writes_unet_and_pipeline_cards(tmp_path):
    data = _photo_folder(str(tmp_path / "photos"), ["camera", "coins", "coffee"])
    out = tmp_path / "full"
    launch_script.main(
        ["--train_data_dir", data, "--method", "full", "--output_dir", str(out), "--max_train_steps", "1"]
        + ["--train_batch_size", "2", "--report_to", "none", "--learning_rate", "2e-5", "--save_merged_pipeline"]
        + ["--validation_prompt", "a photo of coins", "--num_validation_images", "1", "--num_inference_steps", "2"]
    )
    unet_parameters = sum(parameter.numel() for parameter in load_tiny_pipeline().unet.parameters())
    for folder, noun in (("unet", "UNet"), ("merged_pipeline", "pipeline")):
        card = ModelCard.load(out / folder / "README.md")
        assert card.data.library_name == "diffusers"
        assert sorted(card.data.tags) == ["diffusers", "full-fine-tuning", "memcontrol", "peft-memcontrol"]
        text = card.text
        _check_clean(text, tmp_path)
        assert _headings(text) == [f"Fully fine-tuned {noun} of local: tiny-sd", *FULL_HEADINGS]
        model = _rows(_section(text, "model"))
        assert model["trainable parameters"] == f"{unet_parameters:,} (100.0000% of the base model)"
        assert "mask" not in model
        training = _rows(_section(text, "training"))
        assert training["learning rate"] == "2e-05, from --learning_rate" and training["steps"] == "1 of 1"
        assert _section(text, "data").splitlines()[2] == "- images: 3"
        image = os.path.relpath(out / "validation" / "image_0.png", out / folder)
        assert f"![validation image 0]({image})" in _section(text, "validation")
        assert (out / folder / image).is_file()


def test_lora_through_the_trainer_gets_our_card_not_the_blank_template(tmp_path):
    data = load_training_dataset(
        train_data_dir=_photo_folder(str(tmp_path / "photos"), ["camera", "coins"]), resolution=32
    )
    trainer = make_trainer(data, LoraConfig(r=2, target_modules=["to_q", "to_k"]), str(tmp_path / "lora"))
    trainer.train()
    folder = trainer.save_adapter()
    card = ModelCard.load(os.path.join(folder, "README.md"))
    _check_clean(card.text, tmp_path)  # PEFT writes the Hub's blank template first; none of it is left
    assert card.data.library_name == "peft" and "lora" in card.data.tags
    trainable = sum(parameter.numel() for parameter in trainer.trainable_parameters().values())
    assert _rows(_section(card.text, "model"))["trainable parameters"].startswith(f"{trainable:,} (")
    assert _headings(card.text)[0] == "lora adapter of local: tiny-sd"  # the UNet's pipeline, not its unet folder


@pytest.mark.parametrize(
    "name_or_path, expected, shown",
    [
        ("stable-diffusion-v1-5/stable-diffusion-v1-5", "stable-diffusion-v1-5/stable-diffusion-v1-5", None),
        ("/cache/models--CompVis--stable-diffusion-v1-4/snapshots/" + "a" * 40, "CompVis/stable-diffusion-v1-4", None),
        ("/home/someone/models/my-sd", None, "local: my-sd"),
        (os.path.join(tiny_pipeline_path(), "unet"), None, "local: tiny-sd"),
        (None, None, "not recorded"),
    ],
)
def test_base_model_is_a_hub_id_or_a_folder_name(name_or_path, expected, shown):
    assert hub_id(name_or_path) == expected
    assert describe_source(name_or_path) == (shown or expected)
