"""The nearest-neighbour picture: each model's attack generation beside the training image it comes closest to.

A table says how many generations the attack counted as copies; the picture lets a reader judge them. For the
memorized prompts a reference model copies most closely, one row shows the nearest training image and every model's
representative generation for that prompt (`ModelScores.prompt_records`), labelled with its distance to the nearest
memorized image (red: counted as extracted).

An evaluation run keeps its records' images in ``prompt_records.safetensors`` (`save_prompt_images`) and their
prompts, distances and verdicts in ``results.json``; `load_prompt_records` joins the two again, so that
``memcontrol report`` can draw runs evaluated in separate processes side by side.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from safetensors.torch import load_file, save_file


PROMPT_IMAGES_NAME = "prompt_records.safetensors"

RECORD_FIELDS = ("prompt", "group_size", "distance", "extracted")
"""The scalar fields of a prompt record, as ``results.json`` keeps them under ``"per_prompt"``."""


def save_prompt_images(records: Sequence[Mapping[str, Any]], folder: str) -> str:
    """Write the records' ``generation`` and ``training`` images, stacked in record order, to
    ``folder/prompt_records.safetensors``; returns its path."""
    path = os.path.join(folder, PROMPT_IMAGES_NAME)
    tensors = {
        name: torch.stack([record[name].float().cpu() for record in records]) for name in ("generation", "training")
    }
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, path)
    return path


def load_prompt_records(folder: str, per_prompt: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The prompt records of an evaluation run: ``per_prompt`` (from its ``results.json``) with the images of
    ``folder/prompt_records.safetensors`` (safetensors only: nothing is unpickled).

    Raises:
        FileNotFoundError: when the run has no image file (written by an older version: evaluate it again).
        ValueError: when the file does not hold one image pair per record.
    """
    path = os.path.join(folder, PROMPT_IMAGES_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist: the run was evaluated by an older version of examples/evaluate_memorization.py; "
            "evaluate the model again to draw its generations."
        )
    tensors = load_file(path)
    for name in ("generation", "training"):
        found = tensors.get(name)
        if found is None or found.ndim != 4 or len(found) != len(per_prompt):
            shape = None if found is None else tuple(found.shape)
            raise ValueError(f"{path}: expected {len(per_prompt)} {name} images, found shape {shape}.")
    return [
        {**record, "generation": tensors["generation"][index], "training": tensors["training"][index]}
        for index, record in enumerate(per_prompt)
    ]


def nearest_picture(
    records: Mapping[str, Sequence[Mapping[str, Any]]], path: str, num_prompts: int = 4, reference: str | None = None
) -> str:
    """Draw, for the ``num_prompts`` memorized prompts that ``reference`` (default: the first model) copies most
    closely, the training image nearest to its generation and every model's representative generation for that
    prompt, labelled with its distance to the nearest memorized image (red: counted as extracted).

    Args:
        records: per model (by name), its prompt records in the same prompt order for every model.
        path: the PNG to write. Needs matplotlib (``pip install "peft-memcontrol[plots]"``).

    Raises:
        ValueError: when the models' records are not for the same prompts, or there are none.
    """
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError(
            'The nearest-neighbour picture needs matplotlib: pip install "peft-memcontrol[plots]".'
        ) from error
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    models = list(records)
    reference = reference or models[0]
    prompts = [record["prompt"] for record in records[reference]]
    for name in models:
        if [record["prompt"] for record in records[name]] != prompts:
            raise ValueError(
                f"{name!r} was attacked with other prompts than {reference!r}: the picture compares generations of "
                "the same prompts; evaluate every model with the same memorized data."
            )
    if not prompts:
        raise ValueError(f"{reference!r} has no attacked prompts: there is no generation to draw.")
    order = sorted(range(len(prompts)), key=lambda i: records[reference][i]["distance"])[:num_prompts]
    columns = 1 + len(models)
    figure, axes = plt.subplots(len(order), columns, figsize=(1.3 * columns, 1.55 * len(order) + 0.5), squeeze=False)
    for row, index in enumerate(order):
        panels = [("nearest training image", records[reference][index]["training"], None)]
        panels += [(name, records[name][index]["generation"], records[name][index]) for name in models]
        for column, (name, image, record) in enumerate(panels):
            axis = axes[row][column]
            axis.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(textwrap.fill(name, 16), fontsize=7)
            if record is not None:
                label = f"d={record['distance']:.2f}" + (" copy" if record["extracted"] else "")
                axis.set_xlabel(label, fontsize=7, color="C3" if record["extracted"] else "black")
            else:
                axis.set_xlabel(textwrap.fill(prompts[index], 22), fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
