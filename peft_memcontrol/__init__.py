"""peft-memcontrol: MemControl parameter masks for Hugging Face PEFT.

Importing this package registers its methods with PEFT, so that ``get_peft_model``, ``PeftConfig.from_pretrained``
and ``PeftModel.from_pretrained`` know them.
"""

__version__ = "0.1.0.dev0"
