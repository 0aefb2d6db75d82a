#!/usr/bin/env python
"""Turn a MIMIC-CXR-JPG download into two diffusers image folders (``train/``, ``test/``) for MemControl.

MemControl's paper fine-tunes Stable Diffusion on MIMIC-CXR chest X-rays with the radiology report as the prompt.
MIMIC-CXR-JPG (PhysioNet, credentialed access) ships the images and two tables; the free-text reports come from
MIMIC-CXR (``mimic-cxr-reports.zip``, extracted). This script writes what the trainer
(``examples/train_text_to_image_memcontrol.py --train_data_dir``) and the mask search
(``memcontrol search --train_data_dir/--test_data_dir``) read: image folders with a ``metadata.jsonl`` of
``file_name`` and ``text``::

    python examples/prepare_mimic_cxr.py \\
        --mimic_cxr_jpg_dir physionet.org/files/mimic-cxr-jpg/2.1.0 \\
        --reports_dir mimic-cxr-reports \\
        --split_file physionet.org/files/mimic-cxr-jpg/2.1.0/mimic-cxr-2.0.0-split.csv.gz \\
        --output_dir mimic-cxr-sd --resolution 512

What it does, in order:

* **Images.** Rows of ``mimic-cxr-2.0.0-metadata.csv(.gz)`` (``dicom_id``, ``subject_id``, ``study_id``,
  ``ViewPosition``) whose view is one of ``--views`` (frontal: PA and AP by default); the image is
  ``files/pXX/pXXXXXXXX/sYYYYYYYY/<dicom_id>.jpg``.
* **Prompts.** The study's report ``files/pXX/pXXXXXXXX/sYYYYYYYY.txt``: the first non-empty section of
  ``--prompt_sections`` (``IMPRESSION``, then ``FINDINGS``), whitespace-normalised. Studies with neither are
  skipped and counted. A prompt is cut at a word boundary so that it fits CLIP's 77-token context (start and end
  tokens included), counted with CLIP's tokenizer: Stable Diffusion would drop the rest anyway, and cutting here
  keeps the saved prompt equal to what the model sees (the FID and extraction prompts are then exactly the trained
  ones). Whole words are dropped from the end; nothing else is changed (de-identified spans stay ``___``).
* **Splits.** With ``--split_file`` (the official ``mimic-cxr-2.0.0-split.csv(.gz)``): its ``train`` and ``test``
  rows; ``validate`` rows go where ``--validate_split_to`` says (dropped by default). Without it: a seeded split by
  patient (``subject_id``), ``--test_fraction`` of the patients to ``test``, so no patient is in both folders.
* **Sizes.** ``--max_train_samples`` / ``--max_test_samples`` keep a seeded random subset of each split (before any
  image is read).
* **Pixels.** Each image is center-cropped to a square, resized to ``--resolution`` and saved as an RGB PNG (the
  X-rays are grayscale; Stable Diffusion's VAE takes 3 channels). 16-bit and float images are scaled by bit depth
  as the trainer scales them (`load_square_rgb`), never clipped. The default 512 is Stable Diffusion v1.5's native
  size; the paper's reference code trained at 224 px, which the trainer and the search get from the same folder with
  ``--resolution 224`` (they resize on load). A 224-px folder is about 5 times smaller on disk, but cannot serve a
  512-px run without upsampling.

Outputs: ``<output_dir>/train`` and ``<output_dir>/test`` (PNG files named ``<dicom_id>.png`` and a
``metadata.jsonl`` with ``file_name``, ``text``, ``source_id``, ``subject_id``, ``study_id``, ``view``,
``section``), and ``<output_dir>/prepare_summary.json`` with the counts printed at the end (kept, and skipped by
reason). A non-empty ``--output_dir`` is refused unless ``--overwrite`` is given, which replaces only ``train/``,
``test/`` and the summary.

The functions (`read_table`, `extract_prompt`, `patient_split`, `prepare_mimic_cxr`, ...) can be imported from
this file; `prepare_mimic_cxr` returns the counts as a `PreparationResult`.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from peft_memcontrol.tiny_sd import tiny_pipeline_path
from peft_memcontrol.training.data import normalize_image


METADATA_STEM = "mimic-cxr-2.0.0-metadata"
SPLIT_STEM = "mimic-cxr-2.0.0-split"
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition")
SPLIT_COLUMNS = ("dicom_id", "split")
FRONTAL_VIEWS = ("PA", "AP")
DEFAULT_SECTIONS = ("IMPRESSION", "FINDINGS")
CLIP_CONTEXT_LENGTH = 77  # tokens, start and end tokens included
SUMMARY_FILE = "prepare_summary.json"

#: A section header of a MIMIC-CXR report: at the start of a line, upper-case words, then a colon
#: ("FINDINGS:", "IMPRESSION:", "WET READ:", "PA AND LATERAL VIEWS OF THE CHEST:").
SECTION_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z0-9 ,/&()'-]*?)[ \t]*:", re.MULTILINE)


# ---------------------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------------------


def find_table(directory: str, stem: str, flag: str) -> str:
    """The path of ``<stem>.csv.gz`` or ``<stem>.csv`` in ``directory``; a clear error naming both when neither is
    there (``flag`` is the option that points at the file directly)."""
    for name in (f"{stem}.csv.gz", f"{stem}.csv"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"Neither {stem}.csv.gz nor {stem}.csv is in {directory}. It ships with MIMIC-CXR-JPG next to files/: pass "
        f"the download's root as --mimic_cxr_jpg_dir, or the file itself with {flag}."
    )


def read_table(path: str, required_columns: Sequence[str] = ()) -> list[dict[str, str]]:
    """Read a CSV file, gzip-compressed when its name ends in ``.gz``, as a list of row dicts (values as strings).

    Raises a `ValueError` naming the file, the missing columns and the columns it has when ``required_columns``
    are not all in its header.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist.")
    opener: Callable[..., Any] = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        missing = [column for column in required_columns if column not in columns]
        if missing:
            raise ValueError(
                f"{path} lacks the column(s) {missing}; its columns are {columns}. Pass the MIMIC-CXR-JPG 2.x "
                f"table itself (mimic-cxr-2.0.0-metadata.csv.gz / mimic-cxr-2.0.0-split.csv.gz), not a derived file."
            )
        return list(reader)


# ---------------------------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------------------------


def study_folder(root: str, subject_id: str, study_id: str) -> str:
    """``root/files/pXX/pXXXXXXXX/sYYYYYYYY``: MIMIC-CXR's layout, XX being the subject id's first two digits."""
    subject_id, study_id = str(subject_id).strip(), str(study_id).strip()
    return os.path.join(root, "files", f"p{subject_id[:2]}", f"p{subject_id}", f"s{study_id}")


def image_path(root: str, subject_id: str, study_id: str, dicom_id: str) -> str:
    """Path of one MIMIC-CXR-JPG image."""
    return os.path.join(study_folder(root, subject_id, study_id), f"{str(dicom_id).strip()}.jpg")


def report_path(reports_root: str, subject_id: str, study_id: str) -> str:
    """Path of a study's free-text report (``files/pXX/pXXXXXXXX/sYYYYYYYY.txt`` of mimic-cxr-reports.zip)."""
    return study_folder(reports_root, subject_id, study_id) + ".txt"


def check_path_ids(rows: Sequence[dict[str, str]], source: str) -> None:
    """Refuse rows whose ``dicom_id``, ``subject_id`` or ``study_id`` is not a plain file name.

    The ids become path parts (``<dicom_id>.png`` is written to the output folder; the three ids locate the image
    and the report), so an id such as ``../../x`` or ``/tmp/x`` would read or write outside the given folders. All
    such rows are listed in one `ValueError`, before anything is written.
    """
    separators = {"/", "\\", os.sep, os.altsep} - {None}
    bad = []
    for line, row in enumerate(rows, 2):
        for column in ("dicom_id", "subject_id", "study_id"):
            value = (row[column] or "").strip()
            if value in ("", os.curdir, os.pardir) or any(separator in value for separator in separators):
                bad.append(f"  line {line}: {column} {value!r}")
    if bad:
        listing = "\n".join(bad)
        raise ValueError(
            f"{source}: {len(bad)} id(s) are not plain file names, so they would lead outside --mimic_cxr_jpg_dir or "
            f"--output_dir. Fix or remove these rows:\n{listing}"
        )


# ---------------------------------------------------------------------------------------------------------------
# Reports and prompts
# ---------------------------------------------------------------------------------------------------------------


def report_sections(report: str) -> dict[str, str]:
    """Split a report into ``{HEADER: text}`` at its upper-case ``HEADER:`` lines (text whitespace-normalised).

    Text before the first header is dropped (the "FINAL REPORT" banner). A header that appears twice keeps its
    first non-empty text.
    """
    sections: dict[str, str] = {}
    headers = list(SECTION_HEADER.finditer(report))
    for header, following in zip(headers, [*headers[1:], None]):
        end = following.start() if following is not None else len(report)
        text = normalize_whitespace(report[header.end() : end])
        name = normalize_whitespace(header.group(1))
        if text and not sections.get(name):
            sections[name] = text
        sections.setdefault(name, text)
    return sections


def normalize_whitespace(text: str) -> str:
    """Collapse every run of whitespace (newlines included) to one space, and strip the ends."""
    return " ".join(text.split())


def extract_prompt(report: str, sections: Sequence[str] = DEFAULT_SECTIONS) -> tuple[str, str] | None:
    """``(text, section)`` of the first of ``sections`` that the report has with non-empty text, else ``None``.

    A section also matches its plural or singular form ("IMPRESSIONS", "FINDING"), and a combined header such as
    "FINDINGS AND IMPRESSION" (used by some MIMIC-CXR reports) when the report has no header of that name alone.
    """
    found = {name: text for name, text in report_sections(report).items() if text}
    for wanted in sections:
        wanted = wanted.upper()
        forms = {wanted, wanted + "S", wanted.removesuffix("S")}
        for name in forms:
            if name in found:
                return found[name], wanted
        for name, text in found.items():
            if forms & {part.strip() for part in name.split(" AND ")}:
                return text, wanted
    return None


class PromptTruncator:
    """Cut prompts at word boundaries to fit a CLIP context of ``max_tokens`` (start and end tokens included).

    Token counts come from a CLIP tokenizer. The default is the one of the package's embedded tiny pipeline, which
    has CLIP's real 49,408-token BPE vocabulary: the tokenizer of Stable Diffusion v1.5, available offline. CLIP's
    pre-tokenizer never joins text across whitespace, so a prompt's token count is the sum of its words' counts;
    the result is checked with one full tokenization anyway.
    """

    def __init__(self, tokenizer: Any = None, max_tokens: int = CLIP_CONTEXT_LENGTH) -> None:
        if tokenizer is None or isinstance(tokenizer, str):
            if tokenizer is None:
                tokenizer = os.path.join(tiny_pipeline_path(), "tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        if max_tokens < 3:
            raise ValueError(
                f"--max_prompt_tokens must leave room for a word between start and end, got {max_tokens}."
            )
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens

    def count(self, text: str) -> int:
        """Tokens of ``text`` as the text encoder receives it (start and end tokens included)."""
        return len(self.tokenizer(text, truncation=False).input_ids)

    def __call__(self, text: str) -> tuple[str, bool]:
        """``(prompt, truncated)``: ``text`` itself when it fits, else its longest word prefix that fits."""
        if self.count(text) <= self.max_tokens:
            return text, False
        words = text.split(" ")
        budget, kept = self.max_tokens - 2, 0
        for word in words:
            cost = len(self.tokenizer(word, add_special_tokens=False, truncation=False).input_ids)
            if cost > budget:
                break
            budget -= cost
            kept += 1
        while kept > 0 and self.count(" ".join(words[:kept])) > self.max_tokens:
            kept -= 1
        return " ".join(words[: max(kept, 1)]), True


# ---------------------------------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------------------------------


def patient_split(subject_ids: Iterable[str], test_fraction: float, seed: int = 0) -> dict[str, str]:
    """Assign each patient to ``"train"`` or ``"test"``: a seeded permutation of the sorted patient ids, the first
    ``ceil(test_fraction * patients)`` to test (at least one patient on each side when there are two or more).

    Splitting by patient, not by image, keeps a patient's other X-rays out of the test set: they look alike and
    would make FID and the memorization metrics look better than they are.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"--test_fraction must be between 0 and 1 (exclusive), got {test_fraction}.")
    patients = sorted(set(subject_ids))
    if len(patients) < 2:
        raise ValueError(f"A patient-level split needs at least 2 patients, got {len(patients)}.")
    order = np.random.default_rng(seed).permutation(len(patients))
    num_test = min(max(math.ceil(test_fraction * len(patients)), 1), len(patients) - 1)
    test = {patients[int(i)] for i in order[:num_test]}
    return {patient: "test" if patient in test else "train" for patient in patients}


def choose_subset(rows: list[dict[str, Any]], max_samples: int | None, seed: int) -> list[dict[str, Any]]:
    """At most ``max_samples`` rows, drawn with a seeded permutation, returned in their original order."""
    if max_samples is None or len(rows) <= max_samples:
        return rows
    if max_samples < 1:
        raise ValueError(f"--max_train_samples / --max_test_samples must be at least 1, got {max_samples}.")
    keep = sorted(int(i) for i in np.random.default_rng(seed).permutation(len(rows))[:max_samples])
    return [rows[i] for i in keep]


# ---------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------


def load_square_rgb(path: str, resolution: int, bit_depth: int | None = None) -> Image.Image:
    """Open an image, center-crop it to a square, resize it to ``resolution`` (Lanczos) and return it as RGB.

    JPEG decoding is asked for a reduced size first (``Image.draft``, never below ``resolution`` on either side),
    which makes MIMIC's ~2500 x 3000 px files several times faster to read. Pixels are scaled by bit depth as the
    trainer scales them (`peft_memcontrol.training.data.normalize_image`): a 16-bit or float image is cropped and
    resized in float, then rounded to 8 bits (``round(255 * x)``); unsupported modes and float values outside
    [0, 1] raise a `ValueError` naming the file. ``bit_depth`` (``--bit_depth``) scales every 16-bit image alike
    (12 for 12-bit X-rays in 16-bit PNGs); without it each image is scaled by its own stored bit depth.
    """
    with Image.open(path) as image:
        image.draft(image.mode, (resolution, resolution))
        image = normalize_image(image, path, bit_depth)
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != resolution:
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    if image.mode == "F":
        image = Image.fromarray(np.round(np.clip(np.asarray(image), 0.0, 1.0) * 255.0).astype(np.uint8))
    return image.convert("RGB")


def _convert_one(job: tuple[str, str, int, int | None]) -> str | None:
    """Worker: read, crop, resize and save one image; returns an error message instead of raising."""
    source, target, resolution, bit_depth = job
    try:
        load_square_rgb(source, resolution, bit_depth).save(target, format="PNG")
    except (OSError, ValueError) as err:
        return f"{source}: {err}"
    return None


# ---------------------------------------------------------------------------------------------------------------
# The whole preparation
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class PreparationResult:
    """What `prepare_mimic_cxr` wrote.

    Attributes:
        num_train, num_test: images written to ``train/`` and ``test/``.
        num_train_patients, num_test_patients: distinct patients in each.
        skipped: images not written, by reason: ``view`` (not in ``--views``), ``missing_report``, ``no_section``
            (report has none of ``--prompt_sections``), ``validate_split`` (official split's validate rows, dropped),
            ``not_in_split_file``, ``max_samples`` (beyond ``--max_train_samples``/``--max_test_samples``),
            ``missing_image``, ``unreadable_image``.
        skipped_studies: studies (of selected views) without a report, or without a usable section.
        sections: prompts taken from each section (``{"IMPRESSION": n, "FINDINGS": m}``).
        truncated_prompts: prompts cut to fit the token budget.
        split_source: ``"official"`` (``--split_file``) or ``"patient"`` (seeded patient split).
        output_dir, train_dir, test_dir: where the folders are.
        errors: the first unreadable-image messages (at most 20).
    """

    num_train: int
    num_test: int
    num_train_patients: int
    num_test_patients: int
    skipped: dict[str, int]
    skipped_studies: dict[str, int]
    sections: dict[str, int]
    truncated_prompts: int
    split_source: str
    output_dir: str
    train_dir: str
    test_dir: str
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (written to ``prepare_summary.json``)."""
        return asdict(self)

    def summary_lines(self) -> list[str]:
        """The counts, as printed by the script."""
        skipped = ", ".join(f"{reason} {count}" for reason, count in sorted(self.skipped.items()) if count) or "none"
        studies = ", ".join(f"{r} {c}" for r, c in sorted(self.skipped_studies.items()) if c) or "none"
        sections = ", ".join(f"{name} {count}" for name, count in self.sections.items())
        return [
            f"train: {_plural(self.num_train, 'image')} of {_plural(self.num_train_patients, 'patient')}",
            f"test: {_plural(self.num_test, 'image')} of {_plural(self.num_test_patients, 'patient')}",
            f"split: {self.split_source}",
            f"prompts from: {sections or 'none'}; truncated to fit CLIP: {self.truncated_prompts}",
            f"skipped images: {skipped}",
            f"skipped studies: {studies}",
        ]


def _plural(count: int, noun: str) -> str:
    """``"1 image"``, ``"3 images"``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def check_output_dir(output_dir: str, overwrite: bool) -> None:
    """Refuse a non-empty ``output_dir`` unless ``overwrite``; with it, remove only what this script writes."""
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        if not overwrite:
            raise FileExistsError(
                f"--output_dir {output_dir} is not empty. Pass --overwrite to replace its train/, test/ and "
                f"{SUMMARY_FILE}, or choose another folder."
            )
        for name in ("train", "test"):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
        if os.path.isfile(os.path.join(output_dir, SUMMARY_FILE)):
            os.remove(os.path.join(output_dir, SUMMARY_FILE))


def _read_split_file(split_file: str) -> dict[str, str]:
    """``{dicom_id: split}`` from the official split table."""
    rows = read_table(split_file, SPLIT_COLUMNS)
    return {row["dicom_id"].strip(): row["split"].strip().lower() for row in rows}


def prepare_mimic_cxr(
    mimic_cxr_jpg_dir: str,
    output_dir: str,
    reports_dir: str | None = None,
    metadata_file: str | None = None,
    split_file: str | None = None,
    resolution: int = 512,
    bit_depth: int | None = None,
    views: Sequence[str] = FRONTAL_VIEWS,
    prompt_sections: Sequence[str] = DEFAULT_SECTIONS,
    test_fraction: float = 0.05,
    validate_split_to: str = "drop",
    max_train_samples: int | None = None,
    max_test_samples: int | None = None,
    max_prompt_tokens: int = CLIP_CONTEXT_LENGTH,
    tokenizer: Any = None,
    seed: int = 0,
    overwrite: bool = False,
    num_workers: int = 1,
    progress: bool = True,
) -> PreparationResult:
    """Write ``output_dir/train`` and ``output_dir/test`` from a MIMIC-CXR-JPG download (see the module docstring).

    Args:
        mimic_cxr_jpg_dir: the download's root (holds ``files/`` and, unless ``metadata_file`` is given, the
            metadata table).
        output_dir: where ``train/``, ``test/`` and ``prepare_summary.json`` go; must be empty unless ``overwrite``.
        reports_dir: root of the extracted ``mimic-cxr-reports.zip`` (holds ``files/``); default
            ``mimic_cxr_jpg_dir``.
        metadata_file, split_file: the tables (``.csv`` or ``.csv.gz``). Without ``split_file``, a seeded split by
            patient with ``test_fraction`` of the patients in ``test``.
        resolution: side of the saved square PNGs.
        bit_depth: the bits used by 16-bit images (12 for 12-bit X-rays in 16-bit PNGs), so that every image is
            scaled alike; ``None``: each image by its own stored bit depth (`normalize_image`). 8-bit JPEGs (the
            MIMIC-CXR-JPG release) are not affected.
        views: ``ViewPosition`` values to keep (case-insensitive).
        prompt_sections: report sections to use as the prompt, first present wins.
        validate_split_to: ``"drop"``, ``"train"`` or ``"test"``: where the official split's validate rows go.
        max_train_samples, max_test_samples: seeded random subsets of each split.
        max_prompt_tokens, tokenizer: the token budget of a prompt and the CLIP tokenizer (name, path or object;
            default: CLIP's vocabulary from the package's tiny pipeline, which SD v1.5 shares).
        seed: of the patient split and the subsets.
        overwrite: replace an existing preparation.
        num_workers: processes that convert images (1: in this process).
        progress: show tqdm bars.
    """
    if resolution < 8 or resolution % 8:
        raise ValueError(f"--resolution must be a positive multiple of 8 (the VAE's factor), got {resolution}.")
    if validate_split_to not in ("drop", "train", "test"):
        raise ValueError(f"--validate_split_to must be drop, train or test, got {validate_split_to!r}.")
    reports_dir = reports_dir or mimic_cxr_jpg_dir
    for root, flag, hint in (
        (mimic_cxr_jpg_dir, "--mimic_cxr_jpg_dir", "the MIMIC-CXR-JPG root, which holds files/p10, ..."),
        (reports_dir, "--reports_dir", "the folder where mimic-cxr-reports.zip was extracted (it holds files/)"),
    ):
        if not os.path.isdir(os.path.join(root, "files")):
            raise FileNotFoundError(f"{flag} {root} has no files/ folder: pass {hint}.")
    metadata_file = metadata_file or find_table(mimic_cxr_jpg_dir, METADATA_STEM, "--metadata_file")
    metadata = read_table(metadata_file, METADATA_COLUMNS)
    check_path_ids(metadata, metadata_file)
    official = _read_split_file(split_file) if split_file else None
    check_output_dir(output_dir, overwrite)

    skipped: Counter[str] = Counter()
    skipped_studies: Counter[str] = Counter()
    sections: Counter[str] = Counter()
    wanted_views = {view.strip().upper() for view in views}
    truncate = PromptTruncator(tokenizer, max_prompt_tokens)

    # 1. rows of the selected views, and a prompt per study (each report read once)
    prompts: dict[tuple[str, str], tuple[str, str]] = {}
    study_skips: dict[tuple[str, str], str] = {}
    candidates = []
    truncated = 0
    for row in tqdm(metadata, desc="Reading reports", unit="image", disable=not progress):
        if row["ViewPosition"].strip().upper() not in wanted_views:
            skipped["view"] += 1
            continue
        subject_id, study_id = row["subject_id"].strip(), row["study_id"].strip()
        key = (subject_id, study_id)
        if key not in prompts and key not in study_skips:
            path = report_path(reports_dir, subject_id, study_id)
            found = None
            if os.path.isfile(path):
                with open(path, encoding="utf-8", errors="replace") as handle:
                    found = extract_prompt(handle.read(), prompt_sections)
            if found is None:
                study_skips[key] = "no_section" if os.path.isfile(path) else "missing_report"
                skipped_studies[study_skips[key]] += 1
            else:
                text, was_truncated = truncate(found[0])
                truncated += was_truncated
                prompts[key] = (text, found[1])
        if key in study_skips:
            skipped[study_skips[key]] += 1
            continue
        candidates.append({**row, "subject_id": subject_id, "study_id": study_id, "dicom_id": row["dicom_id"].strip()})

    # 2. splits
    if official is not None:
        split_source = "official"
        by_split: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
        for row in candidates:
            split = official.get(row["dicom_id"])
            if split is None:
                skipped["not_in_split_file"] += 1
                continue
            if split == "validate":
                if validate_split_to == "drop":
                    skipped["validate_split"] += 1
                    continue
                split = validate_split_to
            if split not in by_split:
                raise ValueError(
                    f"{split_file}: unknown split {split!r} for dicom_id {row['dicom_id']}; expected train, validate "
                    f"or test."
                )
            by_split[split].append(row)
    else:
        split_source = "patient"
        if not candidates:
            raise ValueError(_nothing_left_message(mimic_cxr_jpg_dir, skipped, skipped_studies))
        assignment = patient_split((row["subject_id"] for row in candidates), test_fraction, seed)
        by_split = {"train": [], "test": []}
        for row in candidates:
            by_split[assignment[row["subject_id"]]].append(row)
    limits = {"train": max_train_samples, "test": max_test_samples}
    for offset, split in enumerate(("train", "test")):
        chosen = choose_subset(by_split[split], limits[split], seed + offset)
        skipped["max_samples"] += len(by_split[split]) - len(chosen)
        by_split[split] = chosen

    # 3. images and metadata
    written: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    errors: list[str] = []
    pool = ProcessPoolExecutor(num_workers) if num_workers > 1 else None
    try:
        for split in ("train", "test"):
            folder = os.path.join(output_dir, split)
            os.makedirs(folder, exist_ok=True)
            jobs, rows = [], []
            for row in by_split[split]:
                source = image_path(mimic_cxr_jpg_dir, row["subject_id"], row["study_id"], row["dicom_id"])
                if not os.path.isfile(source):
                    skipped["missing_image"] += 1
                    continue
                jobs.append((source, os.path.join(folder, f"{row['dicom_id']}.png"), resolution, bit_depth))
                rows.append(row)
            results = pool.map(_convert_one, jobs, chunksize=16) if pool else map(_convert_one, jobs)
            bar = tqdm(
                zip(rows, results), total=len(jobs), desc=f"Writing {split}/", unit="image", disable=not progress
            )
            for row, error in bar:
                if error is not None:
                    skipped["unreadable_image"] += 1
                    if len(errors) < 20:
                        errors.append(error)
                    continue
                text, section = prompts[(row["subject_id"], row["study_id"])]
                sections[section] += 1
                written[split].append(
                    {
                        "file_name": f"{row['dicom_id']}.png",
                        "text": text,
                        "source_id": row["dicom_id"],
                        "subject_id": row["subject_id"],
                        "study_id": row["study_id"],
                        "view": row["ViewPosition"].strip().upper(),
                        "section": section.lower(),
                    }
                )
            with open(os.path.join(folder, "metadata.jsonl"), "w", encoding="utf-8") as handle:
                for entry in written[split]:
                    handle.write(json.dumps(entry) + "\n")
    finally:
        if pool is not None:
            pool.shutdown()

    if not written["train"]:
        raise ValueError(_nothing_left_message(mimic_cxr_jpg_dir, skipped, skipped_studies))
    result = PreparationResult(
        num_train=len(written["train"]),
        num_test=len(written["test"]),
        num_train_patients=len({row["subject_id"] for row in written["train"]}),
        num_test_patients=len({row["subject_id"] for row in written["test"]}),
        skipped=dict(sorted(skipped.items())),
        skipped_studies=dict(sorted(skipped_studies.items())),
        sections={name: sections[name] for name in map(str.upper, prompt_sections) if sections[name]},
        truncated_prompts=truncated,
        split_source=split_source,
        output_dir=output_dir,
        train_dir=os.path.join(output_dir, "train"),
        test_dir=os.path.join(output_dir, "test"),
        errors=errors,
    )
    with open(os.path.join(output_dir, SUMMARY_FILE), "w", encoding="utf-8") as handle:
        json.dump(result.to_dict(), handle, indent=2)
    return result


def _nothing_left_message(root: str, skipped: Counter[str], skipped_studies: Counter[str]) -> str:
    """Why no training image is left, with the counts that say where they went."""
    return (
        f"No training image left from {root}: skipped images {dict(skipped)}, skipped studies {dict(skipped_studies)}. "
        "Check --views (ViewPosition values such as PA, AP), --reports_dir (the extracted mimic-cxr-reports.zip) "
        "and that --mimic_cxr_jpg_dir holds the images under files/pXX/pXXXXXXXX/sYYYYYYYY/."
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (diffusers-style flag names)."""
    parser = argparse.ArgumentParser(
        description="Turn MIMIC-CXR-JPG into diffusers image folders (train/, test/ with metadata.jsonl)."
    )
    source = parser.add_argument_group("source")
    source.add_argument("--mimic_cxr_jpg_dir", required=True, help="MIMIC-CXR-JPG root (holds files/ and the tables).")
    source.add_argument("--reports_dir", default=None, help="Extracted mimic-cxr-reports.zip (default: the JPG root).")
    source.add_argument("--metadata_file", default=None, help="Default: <root>/mimic-cxr-2.0.0-metadata.csv(.gz).")
    source.add_argument("--split_file", default=None, help="Official split table; default: a seeded patient split.")
    source.add_argument("--validate_split_to", choices=("drop", "train", "test"), default="drop")
    source.add_argument("--views", nargs="+", default=list(FRONTAL_VIEWS), help="ViewPosition values to keep.")
    source.add_argument(
        "--prompt_sections", nargs="+", default=list(DEFAULT_SECTIONS), help="Report sections, first present wins."
    )
    source.add_argument("--max_prompt_tokens", type=int, default=CLIP_CONTEXT_LENGTH)
    source.add_argument("--tokenizer_name_or_path", default=None, help="CLIP tokenizer; default: SD-1.5's vocabulary.")

    output = parser.add_argument_group("output")
    output.add_argument("--output_dir", required=True)
    output.add_argument("--resolution", type=int, default=512, help="Side of the square PNGs (paper: 224).")
    output.add_argument(
        "--bit_depth",
        type=int,
        choices=(8, 10, 12, 14, 16),
        default=None,
        help="Bits used by 16-bit images (12 for 12-bit X-rays in 16-bit PNGs), so that all are scaled alike; "
        "default: each image by its own (the smallest of 8/10/12/14/16 bits holding its largest value).",
    )
    output.add_argument("--test_fraction", type=float, default=0.05, help="Patients in test (without --split_file).")
    output.add_argument("--max_train_samples", type=int, default=None)
    output.add_argument("--max_test_samples", type=int, default=None)
    output.add_argument("--seed", type=int, default=0)
    output.add_argument("--overwrite", action="store_true", help="Replace train/, test/ of a previous run.")
    output.add_argument("--num_workers", type=int, default=1, help="Image conversion processes.")
    output.add_argument("--no_progress", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> PreparationResult:
    """Run the preparation from the command line and print the counts."""
    args = parse_args(argv)
    result = prepare_mimic_cxr(
        args.mimic_cxr_jpg_dir,
        args.output_dir,
        reports_dir=args.reports_dir,
        metadata_file=args.metadata_file,
        split_file=args.split_file,
        resolution=args.resolution,
        bit_depth=args.bit_depth,
        views=args.views,
        prompt_sections=args.prompt_sections,
        test_fraction=args.test_fraction,
        validate_split_to=args.validate_split_to,
        max_train_samples=args.max_train_samples,
        max_test_samples=args.max_test_samples,
        max_prompt_tokens=args.max_prompt_tokens,
        tokenizer=args.tokenizer_name_or_path,
        seed=args.seed,
        overwrite=args.overwrite,
        num_workers=args.num_workers,
        progress=not args.no_progress,
    )
    for line in result.summary_lines():
        print(line)
    print(f"Wrote {result.train_dir} and {result.test_dir} ({SUMMARY_FILE} in {result.output_dir}).")
    return result


if __name__ == "__main__":
    main()
