"""Loading this package's adapters into diffusers models and pipelines, from a folder or the Hub.

diffusers' ``load_lora_adapter`` / ``load_lora_weights`` always build a ``LoraConfig``, so they cannot load other
PEFT types (nor a LoRA saved by ``PeftModel.save_pretrained``, whose keys carry PEFT's ``base_model.model.``
prefix). `load_adapter` loads any of them: it reads ``adapter_config.json`` and ``adapter_model.safetensors`` (never
a pickle), or a LoRA that diffusers saved (``pytorch_lora_weights.safetensors``, its config in the safetensors
header), injects the adapter with diffusers' ``add_adapter`` and loads the weights strictly. Loading refuses an
adapter made for another architecture with an error that names the layer and both shapes (the tuners'
`check_adapter_state_dict`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Any

import torch
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from peft import PeftConfig, inject_adapter_in_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import AuxiliaryTrainingWrapper, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ._registry import registered_methods


CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"
PEFT_MODEL_PREFIX = "base_model.model."
DIFFUSERS_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
"""The file of diffusers' ``save_lora_adapter`` and of pipelines' ``save_lora_weights`` (``LORA_WEIGHT_NAME_SAFE``)."""
DIFFUSERS_CONFIG_KEY = "lora_adapter_metadata"
"""The safetensors header entry where diffusers writes the adapter config as JSON (``LORA_ADAPTER_METADATA_KEY``)."""
DENOISER_COMPONENTS = ("unet", "transformer")


def resolve_adapter_folder(
    path_or_repo_id: str, subfolder: str | None = None, revision: str | None = None, token: str | None = None
) -> str:
    """A local folder holding the adapter: the given folder, or the Hub repo's snapshot in the local HF cache.

    The folder holds PEFT's ``adapter_config.json`` or diffusers' ``pytorch_lora_weights.safetensors``.
    """
    if os.path.isdir(path_or_repo_id):
        folder = os.path.join(path_or_repo_id, subfolder) if subfolder else path_or_repo_id
    else:
        patterns = [CONFIG_NAME, WEIGHTS_NAME, DIFFUSERS_WEIGHTS_NAME, "README.md"]
        if subfolder:
            patterns = [f"{subfolder}/{name}" for name in patterns]
        try:
            snapshot = snapshot_download(path_or_repo_id, revision=revision, allow_patterns=patterns, token=token)
        except LocalEntryNotFoundError as error:
            raise OSError(
                f"Adapter {path_or_repo_id!r} is not in the local Hugging Face cache and the Hub cannot be reached "
                "(offline, or HF_HUB_OFFLINE=1). Download it where there is network "
                f"(`hf download {path_or_repo_id}`) or pass a local folder."
            ) from error
        folder = os.path.join(snapshot, subfolder) if subfolder else snapshot
    if not any(os.path.isfile(os.path.join(folder, name)) for name in (CONFIG_NAME, DIFFUSERS_WEIGHTS_NAME)):
        raise FileNotFoundError(
            f"No {CONFIG_NAME} (PEFT's save_pretrained) nor {DIFFUSERS_WEIGHTS_NAME} (diffusers' save_lora_adapter) "
            f"in {folder}: not a saved adapter. For a diffusers LoRA file of another name, pass the file's path."
        )
    return folder


def read_adapter_config(folder: str) -> PeftConfig:
    """Read ``adapter_config.json``; malformed JSON, an unknown ``peft_type`` or a field of the wrong type is refused
    with an error that names the file."""
    path = os.path.join(folder, CONFIG_NAME)
    with open(path, encoding="utf-8") as handle:
        return adapter_config_from_attributes(_parse_json(handle.read(), path), path)


def adapter_config_from_attributes(attributes: Any, source: str) -> PeftConfig:
    """The adapter config that ``attributes`` (a config's JSON object, as PEFT writes it) describe, of the class its
    ``peft_type`` names. An unknown ``peft_type`` or a field of the wrong type is refused naming ``source``."""
    peft_type = attributes.get("peft_type") if isinstance(attributes, dict) else None
    if not isinstance(peft_type, str) or peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise ValueError(
            f"{source} gives peft_type {peft_type!r}, which is not a PEFT method installed here. Was the file edited "
            f"by hand? peft_memcontrol's methods are {[record.peft_type.value for record in registered_methods()]}; "
            "PEFT's own include LORA."
        )
    attributes = {key: value for key, value in attributes.items() if key != "runtime_config"}  # as PEFT's loader
    try:
        return PeftConfig.from_peft_type(**PeftConfig.check_kwargs(**attributes))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{source} holds an invalid adapter config: {error}") from error


def _parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{source} is not valid JSON ({error}). Repair the file, or save or download the adapter again."
        ) from error


def read_adapter_weights(folder: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read ``adapter_model.safetensors``; a pickle file is refused, a corrupt file named."""
    path = os.path.join(folder, WEIGHTS_NAME)
    if not os.path.isfile(path):
        if os.path.isfile(os.path.join(folder, PICKLE_WEIGHTS_NAME)):
            raise ValueError(
                f"{folder} holds only {PICKLE_WEIGHTS_NAME}, a pickle; peft_memcontrol never unpickles downloaded "
                "files. Re-save the adapter with save_pretrained(..., safe_serialization=True)."
            )
        raise FileNotFoundError(f"No {WEIGHTS_NAME} in {folder}.")
    return _read_safetensors(path, device)


def read_diffusers_lora(
    path: str, component: str | None = None, device: str | torch.device = "cpu"
) -> tuple[PeftConfig, dict[str, torch.Tensor]]:
    """Read a LoRA file that diffusers saved: its config from the safetensors header, and its weights.

    A model's ``save_lora_adapter`` writes the model's PEFT state dict (keys without adapter name) and the config as
    JSON under `DIFFUSERS_CONFIG_KEY`. A pipeline's ``save_lora_weights`` writes the same with every key and config
    field under its component's prefix (``unet.``, ``text_encoder.``); the part of ``component`` is returned, without
    the prefix. A file that also holds other components is refused: loading one part would silently leave the rest
    out.

    Args:
        path: the ``.safetensors`` file.
        component: the pipeline component that receives the adapter (``"unet"``, ``"transformer"``); None for a model
            on its own, which takes the file's only denoiser component.
        device: where the weights are loaded.
    """
    try:
        with safe_open(path, framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"{path} is corrupt or truncated ({error}). Delete it and download or save the adapter again."
        ) from error
    source = f"The {DIFFUSERS_CONFIG_KEY!r} entry of {path}'s safetensors header"
    if DIFFUSERS_CONFIG_KEY not in header:
        name = component or "unet"
        raise ValueError(
            f"{path} has no adapter config in its safetensors header (no {DIFFUSERS_CONFIG_KEY!r} entry), so its "
            "rank, alpha and target modules are unknown. diffusers writes it with `model.save_lora_adapter(folder)` "
            f"or `pipeline.save_lora_weights(folder, {name}_lora_layers=..., "
            f"{name}_lora_adapter_metadata={name}.peft_config[adapter_name].to_dict())`: save the LoRA that way, or "
            "load this file with diffusers' `pipeline.load_lora_weights`, which guesses the config from the weights."
        )
    attributes = _parse_json(header[DIFFUSERS_CONFIG_KEY], source)
    weights = _read_safetensors(path, device)
    if isinstance(attributes, dict) and attributes and all("." in key for key in attributes):
        # a pipeline's save_lora_weights: every config field and weight under its component's prefix
        prefix = _pipeline_component(path, {key.partition(".")[0] for key in [*attributes, *weights]}, component) + "."
        attributes = {key.removeprefix(prefix): value for key, value in attributes.items() if key.startswith(prefix)}
        weights = {key.removeprefix(prefix): value for key, value in weights.items()}
    return adapter_config_from_attributes(attributes, source), weights


def _pipeline_component(path: str, components: set[str], component: str | None) -> str:
    """The component of a pipeline's LoRA file that is loaded: ``component``, or the file's only denoiser."""
    if component is None:
        denoisers = components.intersection(DENOISER_COMPONENTS)
        component = denoisers.pop() if len(denoisers) == 1 else None
    if component not in components:
        raise ValueError(
            f"{path} holds LoRA weights for {sorted(components)}, none for "
            f"{component or ' or '.join(DENOISER_COMPONENTS)}. Load it into the pipeline it was saved from, with "
            "diffusers' `pipeline.load_lora_weights`."
        )
    others = sorted(components - {component})
    if others:
        raise ValueError(
            f"{path} holds LoRA weights for {others} besides {component!r}; peft_memcontrol.load_adapter loads one "
            "model's adapter and would leave them out. Load the file with diffusers' `pipeline.load_lora_weights`, "
            "which loads every component."
        )
    return component


def _read_safetensors(path: str, device: str | torch.device) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device=str(device))
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"{path} is corrupt or truncated ({error}). Delete it and download or save the adapter again."
        ) from error


def push_adapter_to_hub(
    model: nn.Module | str | os.PathLike,
    repo_id: str,
    *,
    adapter_name: str = "default",
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload MemControl adapter",
    revision: str | None = None,
) -> str:
    """Upload ``model``'s adapter with its model card (base model, method, mask, trainable share, scores).

    ``model`` is a ``PeftModel``, a diffusers model with adapters, or a saved adapter folder. A folder is uploaded
    as it was saved: its config, weights, card (README.md) and the images the card shows, nothing else (no
    checkpoints), so the training script's card keeps its data, training and validation sections. A model is saved
    first, with the card `save_pretrained` writes. ``PeftModel.push_to_hub`` uploads the same weights and config, but
    transformers' uploader replaces README.md with the Hub's card. Returns the URL of the commit.
    """
    api = HfApi(token=token)
    if isinstance(model, (str, os.PathLike)):
        _check_saved_adapter(os.fspath(model))
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        if isinstance(model, (str, os.PathLike)):
            _copy_saved_adapter(os.fspath(model), folder)
        elif hasattr(model, "save_pretrained") and hasattr(model, "peft_config") and hasattr(model, "base_model"):
            model.save_pretrained(folder, selected_adapters=[adapter_name])
            folder = os.path.join(folder, adapter_name) if adapter_name != "default" else folder
        else:
            _save_diffusers_adapter(model, folder, adapter_name)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message, revision=revision)
    return str(info)


def _check_saved_adapter(folder: str) -> None:
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a saved adapter folder: it lacks {missing}. Pass the folder `save_pretrained` wrote, "
            "or the model itself."
        )


_CARD_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _copy_saved_adapter(source: str, target: str) -> None:
    """Copy an adapter folder's config, weights and card, and the files inside it the card links to (images)."""
    names = [CONFIG_NAME, WEIGHTS_NAME]
    card = os.path.join(source, "README.md")
    if os.path.isfile(card):
        names.append("README.md")
        with open(card, encoding="utf-8") as handle:
            links = _CARD_LINK.findall(handle.read())
        root = os.path.realpath(source)
        for link in links:
            path = os.path.realpath(os.path.join(source, link))
            if "://" not in link and path.startswith(root + os.sep) and os.path.isfile(path):
                names.append(os.path.relpath(path, root))
    for name in dict.fromkeys(names):
        os.makedirs(os.path.dirname(os.path.join(target, name)) or target, exist_ok=True)
        shutil.copyfile(os.path.join(source, name), os.path.join(target, name))


def _save_diffusers_adapter(model: nn.Module, folder: str, adapter_name: str) -> None:
    """Write a diffusers model's adapter in PEFT's folder format (config, safetensors weights, model card)."""
    config = model.peft_config[adapter_name]
    weights = get_peft_model_state_dict(model, adapter_name=adapter_name)
    save_file({key: value.contiguous() for key, value in weights.items()}, os.path.join(folder, WEIGHTS_NAME))
    config.save_pretrained(folder)


def _target_model(unet_or_pipeline: Any) -> tuple[str | None, nn.Module]:
    """The model that receives the adapter, and its component name in the pipeline (None for a model on its own)."""
    for name in DENOISER_COMPONENTS:
        model = getattr(unet_or_pipeline, name, None)
        if isinstance(model, nn.Module):
            return name, model
    if isinstance(unet_or_pipeline, nn.Module):
        return None, unet_or_pipeline
    raise TypeError(f"Expected a diffusers model or a pipeline with a unet/transformer, got {type(unet_or_pipeline)}.")


def load_adapter(
    unet_or_pipeline: Any,
    path_or_repo_id: str,
    adapter_name: str = "default",
    *,
    is_trainable: bool = False,
    subfolder: str | None = None,
    revision: str | None = None,
    token: str | None = None,
) -> nn.Module:
    """Load a PEFT adapter into a diffusers UNet/transformer or a pipeline's, and activate it.

    This package's adapters, any other PEFT type saved with ``save_pretrained`` (a LoRA baseline trained by
    ``examples/train_text_to_image_memcontrol.py --method lora``, say), and a LoRA saved by diffusers
    (``model.save_lora_adapter`` or ``pipeline.save_lora_weights``, with its config in the file's header). Every
    tensor of the file must land in the adapter and every parameter of the adapter must come from the file.

    Args:
        unet_or_pipeline: a diffusers model (``ModelMixin``) or a pipeline with ``unet`` or ``transformer``.
        path_or_repo_id: a folder written by ``save_pretrained`` or ``save_lora_adapter``, a diffusers LoRA
            ``.safetensors`` file, or a Hub repo id (through the local HF cache).
        adapter_name: the name the adapter gets on the model.
        is_trainable: keep the adapter's parameters trainable (default: loaded for inference, frozen).

    Returns:
        The model that received the adapter.
    """
    component, model = _target_model(unet_or_pipeline)
    device = next(model.parameters()).device
    if os.path.isfile(path_or_repo_id):
        config, weights = read_diffusers_lora(path_or_repo_id, component, device)
    else:
        folder = resolve_adapter_folder(path_or_repo_id, subfolder=subfolder, revision=revision, token=token)
        if os.path.isfile(os.path.join(folder, CONFIG_NAME)):
            config = read_adapter_config(folder)
            weights = read_adapter_weights(folder, device)
        else:
            config, weights = read_diffusers_lora(os.path.join(folder, DIFFUSERS_WEIGHTS_NAME), component, device)
    # PeftModel.save_pretrained writes keys under "base_model.model."; a diffusers model has none. PEFT drops the prefix
    # itself, but only after it has looked up the weights of `modules_to_save` under the model's own keys.
    weights = {key.removeprefix(PEFT_MODEL_PREFIX): value for key, value in weights.items()}
    config.inference_mode = not is_trainable
    had_adapters = bool(getattr(model, "peft_config", None))
    if hasattr(model, "add_adapter"):
        model.add_adapter(config, adapter_name=adapter_name)
    else:
        inject_adapter_in_model(config, model, adapter_name=adapter_name)
    try:
        result = set_peft_model_state_dict(model, weights, adapter_name=adapter_name)
        _check_every_key_loaded(model, adapter_name, result.missing_keys, result.unexpected_keys, path_or_repo_id)
    except Exception:
        _remove_adapter(model, adapter_name, had_adapters)
        raise
    # diffusers' add_adapter activates the adapter as trainable; honour is_trainable on the adapter's own parameters
    # only (a test on parameter names would also pick base parameters: "0" matches "down_blocks.0.resnets.0.conv1").
    for parameter in _adapter_parameters(model, adapter_name):
        parameter.requires_grad_(is_trainable)
    return model


def _check_every_key_loaded(
    model: nn.Module, adapter_name: str, missing_keys: list[str], unexpected_keys: list[str], source: str
) -> None:
    """Refuse a load that left an adapter parameter at its initial value or a tensor of the file unused.

    ``missing_keys`` lists every base parameter too (the file holds only the adapter); only the adapter's count.
    """
    adapter_ids = {id(parameter) for parameter in _adapter_parameters(model, adapter_name)}
    adapter_keys = {
        name for name, parameter in model.named_parameters(remove_duplicate=False) if id(parameter) in adapter_ids
    }
    problems = [
        f"{len(keys)} {kind} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
        for kind, keys in (
            ("adapter parameters not in the file", sorted(adapter_keys.intersection(missing_keys))),
            ("tensors of the file that fit no adapter parameter", sorted(unexpected_keys)),
        )
        if keys
    ]
    if problems:
        raise ValueError(
            f"Cannot load adapter {adapter_name!r} from {source} into {type(model).__name__}: "
            f"{' and '.join(problems)}. The file was saved from another model or another adapter config; load it "
            "into the model it was saved from, or save it again from this one."
        )


def _adapter_parameters(model: nn.Module, adapter_name: str) -> list[nn.Parameter]:
    """The parameters that belong to adapter ``adapter_name`` on ``model``, and nothing else.

    Every PEFT adapter layer (`BaseTunerLayer`) and auxiliary wrapper (``modules_to_save``) keeps its adapters'
    parameters in containers keyed by adapter name, named in its ``adapter_layer_names``
    (``mc_svdiff_spectral_shift``, ``lora_A``, ...). Reading those containers finds exactly the adapter's parameters
    whatever its name, where matching parameter names cannot.
    """
    found: dict[int, nn.Parameter] = {}
    for module in model.modules():
        if not isinstance(module, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            continue
        for container_name in module.adapter_layer_names:
            container = module
            for attribute in container_name.split("."):  # TrainableTokensWrapper names "token_adapter.<container>"
                container = getattr(container, attribute, None)
            if not isinstance(container, (nn.ModuleDict, nn.ParameterDict)) or adapter_name not in container:
                continue
            entry = container[adapter_name]
            for parameter in [entry] if isinstance(entry, nn.Parameter) else entry.parameters():
                found[id(parameter)] = parameter
    return list(found.values())


def _remove_adapter(model: nn.Module, adapter_name: str, had_adapters: bool) -> None:
    """Undo a failed load, so that nothing half-loaded stays on the model."""
    if had_adapters:
        model.delete_adapters(adapter_name)
        return
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    if hasattr(model, "_hf_peft_config_loaded"):
        model._hf_peft_config_loaded = False
