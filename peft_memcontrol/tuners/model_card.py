"""The model card of every output of this package: README.md beside an adapter, a fully fine-tuned UNet or a pipeline.

The card is huggingface_hub's `ModelCard`, rendered from a template of ours (`CARD_TEMPLATE`) instead of the Hub's
blank template that PEFT starts from, so it holds only what is known: what the model is (base model by Hub id, method,
mask, trainable share) and how to load it; when a training run wrote it, the data and the settings; the search's
provenance when the mask came from a search; memorization and quality scores and validation images once they exist.
A section with nothing to say is left out, never filled with a placeholder.

Each section sits between two HTML comments that name it, so that later steps replace their own sections and keep the
rest: `write_model_card` writes a whole card (the configs on every save, the trainer for every output it saves),
`update_model_card` adds or replaces sections of an existing card (validation images, evaluation scores). Text outside
these sections (added by hand, or the Pareto front that the search appends) is kept; the Hub's blank template, which
``PeftModel.save_pretrained`` writes just before it saves the config, is dropped.

A base model or data set is named by its Hub id, a local folder as ``local: <folder name>``: no card holds a path of
the machine it was written on.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import diffusers
import peft
from huggingface_hub import ModelCard, ModelCardData

from .._registry import registered_methods
from .._version import __version__


PACKAGE_URL = "https://pypi.org/project/peft-memcontrol/"

#: The card's sections, in the order they appear.
SECTIONS = ("model", "load", "data", "training", "search", "evaluation", "validation", "versions")

#: Our layout: the metadata, each section between its named comments, then any text of others.
CARD_TEMPLATE = """---
{{ card_data }}
---

{% for name, body in card_sections %}<!-- peft-memcontrol:{{ name }} -->
{{ body }}
<!-- /peft-memcontrol:{{ name }} -->

{% endfor %}{{ other_text }}
"""

_SECTION = re.compile(r"<!-- peft-memcontrol:(\w+) -->\n(.*?)\n<!-- /peft-memcontrol:\1 -->\n*", re.DOTALL)
#: What marks the Hub's blank template (``ModelCard.from_template(ModelCardData())``), which PEFT writes.
_BLANK_TEMPLATE_MARK = "[More Information Needed]"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HUB_CACHE_SNAPSHOT = re.compile(r"models--(.+?)[/\\]snapshots[/\\]")
#: Keys of a searched mask file (a `MemControlConfig` or a search result) that record where the mask came from.
PROVENANCE_KEYS = ("objectives", "scores", "learning_rate", "search")
#: What each kind of output is called in the card's title.
_OUTPUT_NOUNS = {"adapter": "adapter", "unet": "UNet", "pipeline": "pipeline"}


def method_name(method: Any) -> str:
    """The user-facing name of a trainer's ``method``: ``"full"``, a registered method's (``"svdiff"``),
    ``"memcontrol (<base method>)"``, or the PEFT type of another PEFT method (``"lora"``)."""
    if isinstance(method, str):
        return method
    base = getattr(method, "method", None)  # a MemControlConfig names the base method its mask applies to
    if base is not None:
        return f"memcontrol ({base})"
    peft_type = str(getattr(method.peft_type, "value", method.peft_type)).lower()
    return next(
        (record.method for record in registered_methods() if isinstance(method, record.config_cls) and record.method),
        peft_type,
    )


def hub_id(name_or_path: str | None) -> str | None:
    """The Hub id of the model or data set ``name_or_path`` names: the id itself, or the repository of a Hugging Face
    cache snapshot folder; ``None`` for any other local folder or file (and for ``None``)."""
    if not name_or_path:
        return None
    cached = _HUB_CACHE_SNAPSHOT.search(name_or_path)
    if cached:
        return cached[1].replace("--", "/")
    if os.path.isabs(name_or_path) or os.path.exists(name_or_path) or not _HUB_ID.match(name_or_path):
        return None
    return name_or_path


def local_name(path: str) -> str:
    """The name of a local model folder or data file: a pipeline's folder name for one of its components' folders
    (a UNet loaded with its pipeline records ``<pipeline>/unet``)."""
    path = os.path.normpath(path)
    if os.path.isfile(os.path.join(os.path.dirname(path), "model_index.json")):
        path = os.path.dirname(path)
    return os.path.basename(path)


def describe_source(name_or_path: str | None) -> str:
    """How a card names a model or data set: its Hub id, else ``local: <folder or file name>`` (`local_name`)."""
    repo = hub_id(name_or_path)
    if repo is not None:
        return repo
    if not name_or_path:
        return "not recorded"
    return f"local: {local_name(name_or_path)}"


def shown_path(path: str) -> str:
    """A file as a card shows it: its folder's name and its own (``knee/adapter_config.json``), never the path from
    the root of the machine it was written on."""
    parts = os.path.normpath(path).replace("\\", "/").split("/")
    return "/".join(part for part in parts[-2:] if part not in ("", ".", ".."))


def search_provenance(settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a searched mask file (or a `MemControlConfig`'s dict) records about the search that found the mask: its
    `PROVENANCE_KEYS` that are set; ``None`` when it records none of them (a plain mask)."""
    provenance = {key: settings[key] for key in PROVENANCE_KEYS if settings.get(key) is not None}
    return provenance or None


@dataclass(frozen=True)
class ModelFacts:
    """What a saved output is: the facts of its card's first section and of the card's metadata.

    Args:
        output: ``"adapter"`` (a PEFT adapter folder), ``"unet"`` (a fully fine-tuned UNet) or ``"pipeline"`` (a whole
            diffusers pipeline, e.g. with an adapter merged into its UNet).
        method: the method's user-facing name (`method_name`).
        method_tag: the method's tag in the metadata (the base method of a MemControl mask, ``full-fine-tuning``).
        base_model: the base model's Hub id or local folder, as the model's ``_name_or_path`` records it.
        peft_type: the adapter's PEFT type; ``None`` for full fine-tuning.
        mask: unit -> on; ``None`` when every unit trains or the method takes no mask.
        granularity: what the mask's units are (``"slot"``, ``"block"``, ``"layer"``); ``None`` without a mask.
        mask_semantics: ``"paper"`` or ``"strict"``; ``None`` for methods without masks.
        trainable_parameters: the parameters the training changes.
        trainable_share: ``trainable_parameters`` over the base UNet's parameters.
    """

    output: str
    method: str
    method_tag: str
    base_model: str | None = None
    peft_type: str | None = None
    mask: Mapping[str, bool] | None = None
    granularity: str | None = None
    mask_semantics: str | None = None
    trainable_parameters: int | None = None
    trainable_share: float | None = None

    def __post_init__(self) -> None:
        if self.output not in _OUTPUT_NOUNS:
            raise ValueError(f"output must be one of {tuple(_OUTPUT_NOUNS)}, got {self.output!r}.")

    @classmethod
    def from_method(
        cls,
        method: Any,
        output: str,
        base_model: str | None = None,
        trainable_parameters: int | None = None,
        trainable_share: float | None = None,
    ) -> ModelFacts:
        """The facts of an output trained with ``method`` (``"full"`` or a ``peft.PeftConfig``); the trainable
        parameters and the base model default to what the config records."""
        if isinstance(method, str):
            return cls(
                output=output,
                method=method,
                method_tag="full-fine-tuning",
                base_model=base_model,
                trainable_parameters=trainable_parameters,
                trainable_share=1.0,
            )
        return cls(
            output=output,
            method=method_name(method),
            method_tag=getattr(method, "method", None) or method_name(method),
            base_model=base_model or method.base_model_name_or_path,
            peft_type=str(getattr(method.peft_type, "value", method.peft_type)),
            mask=getattr(method, "mask", None),
            granularity=getattr(method, "granularity", None),
            mask_semantics=getattr(method, "mask_semantics", None),
            trainable_parameters=_first_set(trainable_parameters, getattr(method, "trainable_parameters", None)),
            trainable_share=_first_set(trainable_share, getattr(method, "trainable_share", None)),
        )


def write_model_card(
    folder: str,
    facts: ModelFacts,
    *,
    training: Mapping[str, Any] | None = None,
    search: Mapping[str, Any] | None = None,
    evaluation: Mapping[str, Any] | None = None,
    validation: Mapping[str, Any] | None = None,
) -> str:
    """Write ``folder/README.md``, the whole card of one output; returns its path.

    Every section of this package is rewritten (those without facts are left out, so that no section of an earlier
    output in the folder survives); text that others added outside the sections is kept.

    Args:
        folder: the output's folder.
        facts: what the output is.
        training: facts of the run that trained it, as `MemControlTrainer.run_summary` names them, optionally with
            ``global_step``, ``lr_scheduler``, ``lr_warmup_steps``, ``seed``, ``mixed_precision``, ``resolution``,
            ``final_loss``, ``dataset`` (Hub id or local path), ``duplicate_groups`` (duplicate groups found in the
            data), ``mask_file`` and ``learning_rate_source`` (where the learning rate came from).
        search: the search provenance of the mask (`search_provenance`), optionally with the ``mask_file`` it was read
            from.
        evaluation: memorization and quality scores (name -> value), see `update_model_card`.
        validation: validation images, see `update_model_card`.
    """
    path = os.path.join(folder, "README.md")
    data, _, other_text = _read_card(path)
    sections = {
        "model": _model_section(facts),
        "load": _load_section(facts),
        "data": _data_section(training) if training else None,
        "training": _training_section(training) if training else None,
        "search": _search_section(search) if search else None,
        "evaluation": _evaluation_section(evaluation) if evaluation else None,
        "validation": _validation_section(validation, folder) if validation else None,
        "versions": _versions_section(),
    }
    return _save_card(path, _metadata(data, facts), sections, other_text)


def update_model_card(
    folder: str,
    *,
    evaluation: Mapping[str, Any] | None = None,
    validation: Mapping[str, Any] | None = None,
) -> str:
    """Add or replace sections of the card ``folder/README.md`` that `write_model_card` wrote, keeping the others;
    returns its path.

    Args:
        folder: the output's folder.
        evaluation: memorization and quality scores of the output, name -> value (``{"memorization: copies":
            0.1, "quality: FID": 31.5}``), measured on the output (e.g. by ``evaluate_memorization.py``).
        validation: ``{"prompt": str, "images": [paths], "step": int}``: images generated with the output; the card
            links them relative to ``folder``.

    Raises:
        FileNotFoundError: if ``folder`` holds no card of this package (it would lack what the model is).
    """
    path = os.path.join(folder, "README.md")
    data, sections, other_text = _read_card(path)
    if "model" not in sections:
        raise FileNotFoundError(
            f"{path} is not a model card of peft-memcontrol (missing, or without its sections): save the output "
            "with save_pretrained or MemControlTrainer.save_adapter first, which write the card."
        )
    if evaluation:
        sections["evaluation"] = _evaluation_section(evaluation)
    if validation:
        sections["validation"] = _validation_section(validation, folder)
    return _save_card(path, data, sections, other_text)


# ---------------------------------------------------------------------------------------------------- reading, saving
def _read_card(path: str) -> tuple[ModelCardData, dict[str, str], str]:
    """An existing card's metadata, its sections of this package by name, and the rest of its text (empty when the
    card is missing or is the Hub's blank template)."""
    if not os.path.exists(path):
        return ModelCardData(), {}, ""
    card = ModelCard.load(path)
    sections = {match[1]: match[2] for match in _SECTION.finditer(card.text)}
    other_text = _SECTION.sub("", card.text).strip()
    if not sections and _BLANK_TEMPLATE_MARK in other_text:
        other_text = ""
    return card.data, sections, other_text


def _save_card(path: str, data: ModelCardData, sections: Mapping[str, str | None], other_text: str) -> str:
    ordered = [(name, sections[name]) for name in SECTIONS if sections.get(name)]
    card = ModelCard.from_template(data, template_str=CARD_TEMPLATE, card_sections=ordered, other_text=other_text)
    card.save(path)
    return path


def _metadata(existing: ModelCardData, facts: ModelFacts) -> ModelCardData:
    """The card's metadata: what ``existing`` holds (e.g. a license added by hand), with the library, the base model
    (a Hub id only; left out otherwise) and our tags. PEFT's ``base_model:`` tags, which name local paths, are
    dropped."""
    data = existing.to_dict()
    data["library_name"] = "peft" if facts.output == "adapter" else "diffusers"
    data["base_model"] = hub_id(facts.base_model)
    kept = [tag for tag in data.get("tags") or [] if not tag.startswith("base_model:")]
    data["tags"] = sorted({*kept, "peft-memcontrol", "memcontrol", "diffusers", facts.method_tag})
    return ModelCardData(**data)


# ------------------------------------------------------------------------------------------------------------ sections
def _first_set(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    return "| | |\n|---|---|\n" + "\n".join(f"| {key} | {value} |" for key, value in rows)


def _number(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _base_model_markdown(base_model: str | None) -> str:
    repo = hub_id(base_model)
    if repo is not None:
        return f"[`{repo}`](https://huggingface.co/{repo})"
    if not base_model:
        return "not recorded"
    return f"`{describe_source(base_model)}` (a local folder, not on the Hub)"


def _model_section(facts: ModelFacts) -> str:
    of_base = f" of {describe_source(facts.base_model)}" if facts.base_model else ""
    if facts.method == "full":
        title = f"Fully fine-tuned {_OUTPUT_NOUNS[facts.output]}{of_base}"
        method = "full fine-tuning (every parameter of the UNet trains)"
    else:
        title = f"{facts.method} {_OUTPUT_NOUNS[facts.output]}{of_base}"
        method = f"{facts.method} (PEFT type `{facts.peft_type}`)"
    what = {
        "adapter": "A PEFT adapter for the UNet of the base model below",
        "unet": "The UNet of the base model below, fine-tuned as a whole",
        "pipeline": "The base model below as a whole pipeline, its UNet fine-tuned"
        + ("" if facts.method == "full" else " (the adapter merged into its weights)"),
    }[facts.output]
    rows = [("base model", _base_model_markdown(facts.base_model)), ("method", method)]
    if facts.granularity is not None:
        units = f"{sum(facts.mask.values())} of {len(facts.mask)}" if facts.mask else "all"
        rows.append(("mask", f"{units} {facts.granularity}s on, `{facts.mask_semantics}` semantics"))
    if facts.trainable_parameters is not None:
        share = f" ({100 * facts.trainable_share:.4f}% of the base model)" if facts.trainable_share else ""
        rows.append(("trainable parameters", f"{facts.trainable_parameters:,}{share}"))
    text = (
        f"# {title}\n\n{what}, made with [peft-memcontrol]({PACKAGE_URL}), a PEFT extension that fine-tunes "
        "diffusion models with parameter masks that limit memorization (MemControl, arXiv 2405.19458).\n\n"
        + _table(rows)
    )
    if facts.mask:
        mask_json = json.dumps(dict(facts.mask), indent=2)
        text += f"\n\n<details>\n<summary>Mask (unit -> on)</summary>\n\n```json\n{mask_json}\n```\n\n</details>"
    return text


def _load_section(facts: ModelFacts) -> str:
    repo = hub_id(facts.base_model)
    base = f'"{repo}"' if repo else f'"path/to/{local_name(facts.base_model or "base-model")}"'
    if facts.output == "adapter":
        intro = (
            "peft-memcontrol registers its methods with PEFT when it is imported: install it and import it before "
            "loading. `load_adapter` takes a diffusers pipeline or UNet, and a folder or a Hub repository."
        )
        code = (
            "import peft_memcontrol\nfrom diffusers import DiffusionPipeline\n\n"
            f"pipeline = DiffusionPipeline.from_pretrained({base})\n"
            'peft_memcontrol.load_adapter(pipeline, "<this repo or folder>")\n'
        )
    elif facts.output == "unet":
        intro = "A diffusers UNet: load it into a pipeline of its base model."
        code = (
            "from diffusers import DiffusionPipeline, UNet2DConditionModel\n\n"
            'unet = UNet2DConditionModel.from_pretrained("<this repo or folder>")\n'
            f"pipeline = DiffusionPipeline.from_pretrained({base}, unet=unet)\n"
        )
    else:
        intro = "A whole diffusers pipeline."
        code = 'from diffusers import DiffusionPipeline\n\npipeline = DiffusionPipeline.from_pretrained("<this repo or folder>")\n'
    code += 'image = pipeline("a prompt").images[0]'
    return f"## How to load it\n\n{intro}\n\n```python\n{code}\n```"


def _data_section(training: Mapping[str, Any]) -> str:
    lines = [f"- images: {training['num_examples']}"]
    if training.get("dataset"):
        lines.append(f"- data set: `{describe_source(training['dataset'])}`")
    if training.get("resolution"):
        lines.append(f"- resolution: {training['resolution']} x {training['resolution']} pixels")
    if training.get("duplicate_groups") is not None:
        lines.append(
            f"- duplicate groups found: {training['duplicate_groups']} (rows that show one image, the images a "
            "fine-tune is most likely to memorize)"
        )
    return "## Training data\n\n" + "\n".join(lines)


def _training_section(training: Mapping[str, Any]) -> str:
    rows = []
    if "global_step" in training:
        rows.append(("steps", f"{training['global_step']} of {training['max_train_steps']}"))
    else:
        rows.append(("steps", training["max_train_steps"]))
    processes = training.get("num_processes", 1)
    rows.append(
        (
            "batch size",
            f"{training['train_batch_size']} per device x {processes} process{'es' if processes > 1 else ''} x "
            f"{training['gradient_accumulation_steps']} accumulation steps = {training['total_train_batch_size']}",
        )
    )
    if "num_epochs" in training:
        rows.append(("epochs", training["num_epochs"]))
    rate = f"{training['learning_rate']:g}"
    source = training.get("learning_rate_source")
    if source:
        mask_file = training.get("mask_file")
        # The launch script names the mask file as the user gave it; the card names it without the local path.
        rate += ", " + (source.replace(mask_file, shown_path(mask_file)) if mask_file else source)
    rows.append(("learning rate", rate))
    if training.get("lr_scheduler"):
        rows.append(
            ("learning-rate schedule", f"{training['lr_scheduler']}, {training['lr_warmup_steps']} warmup steps")
        )
    if training.get("mask_file"):
        rows.append(("mask file", f"`{shown_path(training['mask_file'])}`"))
    for key, label in (("mixed_precision", "mixed precision"), ("seed", "seed"), ("final_loss", "final loss")):
        if training.get(key) is not None:
            rows.append((label, _number(training[key])))
    return "## Training settings\n\n" + _table(rows)


def _search_section(search: Mapping[str, Any]) -> str:
    source = f" (`{shown_path(search['mask_file'])}`)" if search.get("mask_file") else ""
    rows = []
    if search.get("objectives"):
        rows.append(("objectives", ", ".join(search["objectives"])))
    rows += [(f"score: {name}", _number(value)) for name, value in (search.get("scores") or {}).items()]
    if search.get("learning_rate") is not None:
        rows.append(("learning rate", f"{search['learning_rate']:g}"))
    for key, value in (search.get("search") or {}).items():
        if key == "genome":  # the mask and learning rate again, as the search encodes them
            continue
        shown = ", ".join(map(_number, value)) if isinstance(value, (list, tuple)) else _number(value)
        rows.append((f"search: {key}", shown))
    return (
        "## Search provenance\n\n"
        f"The mask{source} was chosen by peft-memcontrol's mask search, with these scores and the learning rate the "
        "search found for it.\n\n" + _table(rows)
    )


def _evaluation_section(evaluation: Mapping[str, Any]) -> str:
    rows = [(name, _number(value)) for name, value in evaluation.items()]
    return "## Memorization and quality\n\n" + _table(rows)


def _validation_section(validation: Mapping[str, Any], folder: str) -> str:
    images = [os.path.relpath(image, folder).replace(os.sep, "/") for image in validation["images"]]
    after = f" after step {validation['step']}" if validation.get("step") is not None else ""
    gallery = "\n".join(f"![validation image {i}]({image})" for i, image in enumerate(images))
    return f'## Validation images\n\nPrompt: "{validation["prompt"]}"{after}.\n\n{gallery}'


def _versions_section() -> str:
    # PEFT appends its version under this heading unless the line "- PEFT <version>" is already there.
    return (
        f"### Framework versions\n\n- peft-memcontrol {__version__}\n- PEFT {peft.__version__}\n"
        f"- diffusers {diffusers.__version__}"
    )
