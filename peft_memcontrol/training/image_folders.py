"""Which metadata files an image folder has, as ``datasets``' ``imagefolder`` finds them.

Kept apart from `peft_memcontrol.training.data` (which imports torch and PIL), so that the launch script refuses a
folder without captions before anything heavy is imported.
"""

from __future__ import annotations

import os


#: The metadata files of an image folder, as ``datasets``' ``imagefolder`` reads them (not its ``metadata.parquet``).
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
#: Folder names that ``datasets`` reads as a validation or test split (``datasets.data_files.SPLIT_KEYWORDS``).
HELD_OUT_SPLIT_FOLDERS = ("validation", "valid", "dev", "val", "test", "testing", "eval", "evaluation")


def find_metadata_files(root: str, flag: str = "--train_data_dir") -> list[str]:
    """The metadata files of an image folder, as ``datasets``' ``imagefolder`` finds them: every ``metadata.jsonl``
    or ``metadata.csv`` in ``root`` and its subfolders, ``root``'s first, then in path order.

    Refused, with the fix: a missing folder (named with ``flag``, the command-line flag that gave it); no metadata
    file (naming ``--train_csv`` for a training folder's CSV of another name); files of both kinds; a metadata file in
    a subfolder named like a held-out split (`HELD_OUT_SPLIT_FOLDERS`), whose rows ``imagefolder`` would not train on.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{flag} {root} does not exist.")
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders.sort()
        found += [os.path.join(folder, name) for name in METADATA_FILES if name in files]
    if not found:
        hint = ""
        if flag == "--train_data_dir":
            hint = " A CSV of another name, or with paths outside the folder, is read with --train_csv."
        raise FileNotFoundError(
            f"{root} has no metadata.jsonl or metadata.csv: an image folder needs one, with a row per image such as "
            '{"file_name": "0001.png", "text": "a photo of ..."} (or the CSV columns file_name,text).' + hint
        )
    kinds = {os.path.basename(path) for path in found}
    if len(kinds) > 1:
        raise ValueError(
            f"{root} holds both metadata.jsonl and metadata.csv files ({found}): as in datasets' imagefolder, the "
            "metadata files of a folder must all be of one kind. Convert or remove one kind."
        )
    held_out = [
        path
        for path in found
        if any(part.lower() in HELD_OUT_SPLIT_FOLDERS for part in os.path.relpath(path, root).split(os.sep)[:-1])
    ]
    if held_out:
        raise ValueError(
            f"{root}: {held_out} lie in folders named like a held-out split, which datasets' imagefolder does not "
            "train on. Pass the training split's folder as --train_data_dir (e.g. its train/ subfolder)."
        )
    return found
