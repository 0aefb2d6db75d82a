"""The model card section that every saved adapter of this package carries (README.md next to the weights).

The configs write it whenever they are saved (`MaskedTunerConfig.save_pretrained`), so that every way of saving an
adapter (``PeftModel.save_pretrained`` and `push_adapter_to_hub` alike) leaves the card.
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING

from huggingface_hub import ModelCard, ModelCardData


if TYPE_CHECKING:
    from .base import MaskedTunerConfig

START = "<!-- peft-memcontrol:start -->"
END = "<!-- peft-memcontrol:end -->"


def card_section(config: MaskedTunerConfig) -> str:
    """Markdown describing the adapter: base model, method, mask, trainable share, scores, and how to load it."""
    method = getattr(config, "method", None) or type(config).__name__.removesuffix("Config")
    mask = config.mask
    units = f"{sum(mask.values())} of {len(mask)}" if mask else "all"
    rows = [
        ("base model", config.base_model_name_or_path or "not recorded"),
        ("method", f"{method} (PEFT type `{getattr(config.peft_type, 'value', config.peft_type)}`)"),
        ("mask", f"{units} {config.granularity}s on, `{config.mask_semantics}` semantics"),
    ]
    if config.trainable_parameters is not None:
        share = f" ({100 * config.trainable_share:.4f}% of the base model)" if config.trainable_share else ""
        rows.append(("trainable parameters", f"{config.trainable_parameters:,}{share}"))
    if getattr(config, "learning_rate", None) is not None:
        rows.append(("learning rate", f"{config.learning_rate:g}"))
    for name, value in (getattr(config, "scores", None) or {}).items():
        rows.append((f"score: {name}", f"{value:.6g}" if isinstance(value, (int, float)) else str(value)))
    table = "\n".join(f"| {key} | {value} |" for key, value in rows)
    mask_json = json.dumps(mask, indent=2) if mask else "null  (every unit on)"
    return f"""{START}
## MemControl adapter

Made with [peft-memcontrol](https://pypi.org/project/peft-memcontrol/), a PEFT extension for fine-tuning diffusion
models with parameter masks that limit memorization (MemControl, arXiv 2405.19458). The method is registered with
PEFT by the package, so **install it and import it before loading**:

```python
import peft_memcontrol  # registers the method with PEFT
from peft import PeftModel

unet = PeftModel.from_pretrained(unet, "<this repo or folder>")
# or, on a diffusers pipeline or UNet:
peft_memcontrol.load_adapter(pipeline, "<this repo or folder>")
```

| | |
|---|---|
{table}

Mask (unit -> on):

```json
{mask_json}
```
{END}"""


def update_model_card(folder: str, config: MaskedTunerConfig) -> None:
    """Add or replace this package's section in ``folder/README.md``, keeping everything else in the card."""
    path = os.path.join(folder, "README.md")
    card = ModelCard.load(path) if os.path.exists(path) else ModelCard.from_template(ModelCardData())
    tags = set(card.data.tags or []) | {"peft-memcontrol", "memcontrol", "diffusers"}
    card.data.tags = sorted(tags)
    card.data.library_name = card.data.library_name or "peft"
    if config.base_model_name_or_path and not card.data.base_model:
        card.data.base_model = config.base_model_name_or_path
    section = card_section(config)
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    if pattern.search(card.text):
        card.text = pattern.sub(lambda _: section, card.text)
    else:
        card.text = card.text.rstrip() + "\n\n" + section + "\n"
    card.save(path)
