"""`examples/prepare_mimic_cxr.py` on a small MIMIC-CXR-JPG-style tree built from real images.

The tree has the download's layout (``files/pXX/pXXXXXXXX/sYYYYYYYY/<dicom_id>.jpg``, the reports at
``files/pXX/pXXXXXXXX/sYYYYYYYY.txt``, the metadata table gzip-compressed, the split table plain) and real pictures:
grayscale photos shipped in the scikit-image wheel, saved as 8-bit grayscale JPEGs of various shapes, like MIMIC's.
Every expected number below is read from the ``STUDIES`` spec, not computed by the script's functions.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps
from transformers import AutoTokenizer

from peft_memcontrol.tiny_sd import tiny_pipeline_path
from peft_memcontrol.training import load_training_dataset

from helpers.images import read_metadata


REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "prepare_mimic_cxr.py"
sys.path.insert(0, str(REPO / "examples"))

import prepare_mimic_cxr as prep  # noqa: E402


REPORT_FULL = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough  // ?pna

 COMPARISON:  ___

 FINDINGS:

 PA and lateral views of the chest provided.  There is no focal consolidation,
 effusion, or pneumothorax.  The cardiomediastinal silhouette is normal.

 IMPRESSION:

 No acute intrathoracic
 process.
"""

REPORT_IMPRESSION_INLINE = """                                 FINAL REPORT
 INDICATION:  Intubated patient, assess tube position.

 IMPRESSION:  Endotracheal tube terminates 4.5 cm above the carina.  Mild
 pulmonary vascular congestion, unchanged.
"""

REPORT_FINDINGS_ONLY = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 FINDINGS:  Heart size is mildly enlarged.  Small left pleural effusion
 with adjacent atelectasis.

 NOTIFICATION:  Findings discussed with Dr. ___ at 10:30.
"""

REPORT_NO_SECTION = """                                 FINAL REPORT
 INDICATION:  Chest pain.

 COMPARISON:  None.

 Wet read only, see prior.
"""

LONG_IMPRESSION = " ".join(
    [
        "Interval worsening of bilateral perihilar and basilar airspace opacities, right greater than left,",
        "compatible with multifocal pneumonia in the appropriate clinical setting, although superimposed",
        "pulmonary edema and aspiration cannot be excluded; moderate bilateral pleural effusions with",
        "compressive atelectasis, cardiomegaly, tortuous calcified aorta, and an unchanged right internal",
        "jugular central venous catheter terminating in the mid superior vena cava; recommend follow-up",
        "radiographs after diuresis to assess for underlying consolidation and resolution.",
    ]
)
REPORT_LONG = f"""                                 FINAL REPORT
 FINDINGS:  See impression.

 IMPRESSION:

 {LONG_IMPRESSION}
"""

# One entry per study: (subject_id, study_id, report text or None (no file), expected prompt or None, section,
# [(dicom_id, ViewPosition, image name)], official split of the study)
STUDIES = [
    ("10000032", "50414267", REPORT_FULL, "No acute intrathoracic process.", "impression",
     [("d-aa01", "PA", "camera"), ("d-aa02", "LATERAL", "coins")], "train"),
    ("10000032", "53189527", REPORT_IMPRESSION_INLINE,
     "Endotracheal tube terminates 4.5 cm above the carina. Mild pulmonary vascular congestion, unchanged.",
     "impression", [("d-ab01", "AP", "moon"), ("d-ab02", "AP", "brick")], "train"),
    ("10000764", "57375967", REPORT_FINDINGS_ONLY,
     "Heart size is mildly enlarged. Small left pleural effusion with adjacent atelectasis.", "findings",
     [("d-ba01", "PA", "grass"), ("d-ba02", "LL", "gravel")], "validate"),
    ("11001469", "54076811", REPORT_NO_SECTION, None, None,
     [("d-ca01", "PA", "cell"), ("d-ca02", "LATERAL", "clock")], "train"),
    ("12000123", "51000001", None, None, None, [("d-da01", "AP", "page")], "train"),
    ("12000123", "51000002", REPORT_LONG, "TRUNCATED", "impression", [("d-db01", "PA", "text")], "train"),
    ("13000456", "52000001", REPORT_FULL, "No acute intrathoracic process.", "impression",
     [("d-ea01", "PA", "coins"), ("d-ea02", "LATERAL", "camera")], "train"),
    ("14000789", "52500001", REPORT_IMPRESSION_INLINE,
     "Endotracheal tube terminates 4.5 cm above the carina. Mild pulmonary vascular congestion, unchanged.",
     "impression", [("d-fa01", "PA", "clock"), ("d-fa02", "", "moon")], "test"),
    ("15000001", "53000001", REPORT_FINDINGS_ONLY,
     "Heart size is mildly enlarged. Small left pleural effusion with adjacent atelectasis.", "findings",
     [("d-ga01", "AP", "cell"), ("d-ga02", "LL", "grass")], "test"),
]  # fmt: skip

FRONTAL = {"PA", "AP"}
RESOLUTION = 64


def expected_images() -> dict[str, dict]:
    """dicom_id -> what the spec says about every frontal image with a usable prompt."""
    out = {}
    for subject, study, _, prompt, section, images, split in STUDIES:
        for dicom, view, _ in images:
            if view in FRONTAL and prompt is not None:
                out[dicom] = {"subject": subject, "study": study, "prompt": prompt, "section": section, "split": split}
    return out


def expected_skips() -> dict[str, int]:
    """Image-level skip counts read from the spec."""
    counts = {"view": 0, "no_section": 0, "missing_report": 0}
    for _, _, report, prompt, _, images, _ in STUDIES:
        for _, view, _ in images:
            if view not in FRONTAL:
                counts["view"] += 1
            elif report is None:
                counts["missing_report"] += 1
            elif prompt is None:
                counts["no_section"] += 1
    return counts


def _picture(name: str) -> np.ndarray:
    """A real grayscale photo from the scikit-image wheel, cut to a portrait or landscape shape."""
    import skimage.data

    array = getattr(skimage.data, name)()
    return array[:, : int(array.shape[1] * 0.8)] if name in ("camera", "moon", "brick") else array


@pytest.fixture(scope="module")
def mimic_tree(tmp_path_factory) -> Path:
    """A MIMIC-CXR-JPG-style download: images, reports, metadata (.csv.gz) and split (.csv)."""
    root = tmp_path_factory.mktemp("mimic-cxr-jpg")
    metadata, splits = [], []
    for subject, study, report, _, _, images, split in STUDIES:
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True, exist_ok=True)
        if report is not None:
            (folder.parent / f"s{study}.txt").write_text(report)
        for dicom, view, picture in images:
            Image.fromarray(_picture(picture), mode="L").save(folder / f"{dicom}.jpg", quality=95)
            metadata.append({"dicom_id": dicom, "subject_id": subject, "study_id": study, "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": view})  # fmt: skip
            splits.append({"dicom_id": dicom, "study_id": study, "subject_id": subject, "split": split})
    with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "wt", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(metadata[0]))
        writer.writeheader()
        writer.writerows(metadata)
    with open(root / "mimic-cxr-2.0.0-split.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(splits[0]))
        writer.writeheader()
        writer.writerows(splits)
    return root


def test_patient_split_frontal_prompts_and_images(mimic_tree, tmp_path):
    out = tmp_path / "prepared"
    result = prep.prepare_mimic_cxr(
        str(mimic_tree), str(out), resolution=RESOLUTION, test_fraction=0.3, seed=1, progress=False
    )
    expected = expected_images()
    train, test = read_metadata(out / "train"), read_metadata(out / "test")

    # frontal-only, every usable image kept once, nothing else
    assert sorted(row["source_id"] for row in train + test) == sorted(expected)
    assert result.num_train + result.num_test == len(expected) == 8
    assert (result.num_train, result.num_test) == (len(train), len(test))
    assert {key: result.skipped.get(key, 0) for key in expected_skips()} == expected_skips()
    assert result.skipped_studies == {"missing_report": 1, "no_section": 1}
    assert result.split_source == "patient"

    # patient-level split: no patient on both sides, both sides used
    train_patients, test_patients = {r["subject_id"] for r in train}, {r["subject_id"] for r in test}
    assert train_patients and test_patients and not train_patients & test_patients
    assert {r["subject_id"] for r in train + test} == {e["subject"] for e in expected.values()}

    # prompts: the IMPRESSION (else FINDINGS) text, whitespace-normalised; the long one cut at a word boundary
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(tiny_pipeline_path(), "tokenizer"))
    for row in train + test:
        spec = expected[row["source_id"]]
        assert row["section"] == spec["section"]
        if spec["prompt"] == "TRUNCATED":
            assert LONG_IMPRESSION.startswith(row["text"]) and len(row["text"]) < len(LONG_IMPRESSION)
            assert LONG_IMPRESSION[len(row["text"])] == " "  # whole words only
            assert len(tokenizer(row["text"]).input_ids) <= 77
            longer = LONG_IMPRESSION[: LONG_IMPRESSION.index(" ", len(row["text"]) + 1)]
            assert len(tokenizer(longer).input_ids) > 77  # the longest prefix that fits
        else:
            assert row["text"] == spec["prompt"]
    assert result.truncated_prompts == 1
    assert result.sections == {"IMPRESSION": 6, "FINDINGS": 2}

    # pixels: square RGB PNGs of the requested size, the center crop of the source
    for row in train[:3]:
        with Image.open(out / "train" / row["file_name"]) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (RESOLUTION, RESOLUTION)
            written = np.asarray(image).astype(float)
        assert np.array_equal(written[..., 0], written[..., 2])  # a grayscale X-ray, repeated to 3 channels
        spec = expected[row["source_id"]]
        source = mimic_tree / "files" / f"p{spec['subject'][:2]}" / f"p{spec['subject']}" / f"s{spec['study']}"
        with Image.open(source / f"{row['source_id']}.jpg") as original:
            reference = np.asarray(ImageOps.fit(original.convert("L"), (RESOLUTION, RESOLUTION), Image.LANCZOS))
        assert np.abs(written[..., 0] - reference).mean() < 6.0

    # the trainer and the search read it
    dataset = load_training_dataset(train_data_dir=str(out / "train"), resolution=32)
    assert len(dataset) == len(train) and dataset[0]["pixel_values"].shape == (3, 32, 32)
    assert json.loads((out / "prepare_summary.json").read_text())["num_train"] == len(train)


def test_cli_official_split_subsets_and_overwrite(mimic_tree, tmp_path):
    out = tmp_path / "official"
    command = [
        sys.executable, str(SCRIPT), "--mimic_cxr_jpg_dir", str(mimic_tree),
        "--split_file", str(mimic_tree / "mimic-cxr-2.0.0-split.csv"),
        "--output_dir", str(out), "--resolution", "32", "--no_progress",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr

    expected = expected_images()
    want = {split: sorted(d for d, e in expected.items() if e["split"] == split) for split in ("train", "test")}
    train, test = read_metadata(out / "train"), read_metadata(out / "test")
    assert sorted(r["source_id"] for r in train) == want["train"]
    assert sorted(r["source_id"] for r in test) == want["test"]
    validate = sum(1 for e in expected.values() if e["split"] == "validate")
    assert f"train: {len(want['train'])} images" in first.stdout
    assert f"validate_split {validate}" in first.stdout and "split: official" in first.stdout

    # a second run into the same folder is refused, with the fix named; --overwrite replaces it
    refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert refused.returncode != 0 and "--overwrite" in refused.stderr and "not empty" in refused.stderr
    (out / "train" / "metadata.jsonl").write_text("")
    subset = subprocess.run(
        [*command, "--overwrite", "--max_train_samples", "2", "--seed", "3"], capture_output=True, text=True, env=env,
        timeout=120,
    )  # fmt: skip
    assert subset.returncode == 0, subset.stderr
    train = read_metadata(out / "train")
    assert len(train) == 2 and {r["source_id"] for r in train} <= set(want["train"])
    assert len(list((out / "train").glob("*.png"))) == 2  # the previous run's images are gone
    assert f"max_samples {len(want['train']) - 2}" in subset.stdout


def test_missing_column_and_missing_files_are_named(mimic_tree, tmp_path):
    broken = tmp_path / "metadata.csv"
    with gzip.open(mimic_tree / "mimic-cxr-2.0.0-metadata.csv.gz", "rt") as handle:
        rows = list(csv.DictReader(handle))
    with open(broken, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["dicom_id", "subject_id", "study_id"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ValueError, match=r"ViewPosition.*its columns are \['dicom_id', 'subject_id', 'study_id'\]"):
        prep.prepare_mimic_cxr(str(mimic_tree), str(tmp_path / "a"), metadata_file=str(broken), progress=False)

    empty = tmp_path / "empty"
    (empty / "files").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"mimic-cxr-2.0.0-metadata.csv.gz.*--metadata_file"):
        prep.prepare_mimic_cxr(str(empty), str(tmp_path / "b"), progress=False)
    with pytest.raises(FileNotFoundError, match=r"--reports_dir .* no files/ folder.*mimic-cxr-reports.zip"):
        prep.prepare_mimic_cxr(str(mimic_tree), str(tmp_path / "c"), reports_dir=str(tmp_path), progress=False)
    assert not (tmp_path / "a").exists()  # nothing written before the inputs are checked


def test_report_sections_and_views():
    assert prep.extract_prompt(REPORT_FULL) == ("No acute intrathoracic process.", "IMPRESSION")
    assert prep.extract_prompt(REPORT_FULL, ["FINDINGS"])[0].startswith("PA and lateral views of the chest provided.")
    assert prep.extract_prompt(REPORT_NO_SECTION) is None
    assert prep.extract_prompt("IMPRESSIONS: Clear lungs.\n") == ("Clear lungs.", "IMPRESSION")
    assert prep.extract_prompt("IMPRESSION:\n\nFINDINGS: Clear lungs.\n") == ("Clear lungs.", "FINDINGS")
    combined = "WET READ: Edema.\n FINDINGS AND IMPRESSION: Mild edema.\n"
    assert prep.extract_prompt(combined) == ("Mild edema.", "IMPRESSION")
    assert prep.extract_prompt(combined + " IMPRESSION: Edema, improved.\n") == ("Edema, improved.", "IMPRESSION")
    assert prep.extract_prompt(combined, ["FINDINGS"]) == ("Mild edema.", "FINDINGS")
    split = prep.patient_split([f"{i:08d}" for i in range(40)] * 3, test_fraction=0.25, seed=0)
    assert len(split) == 40 and sum(v == "test" for v in split.values()) == 10
    assert split == prep.patient_split([f"{i:08d}" for i in reversed(range(40))], 0.25, seed=0)


SIXTEEN_BIT_SOURCES = {
    # name: (file name, array written from the 8-bit photo, the array scaled into [0, 1] by the documented rule)
    "12-bit in a 16-bit PNG": ("x.png", lambda c: (c / 255 * 4095).round().astype(np.uint16), 4095.0),
    "16-bit PNG": ("x.png", lambda c: c.astype(np.uint16) * 257, 65535.0),
    "float TIFF in [0, 1]": ("x.tif", lambda c: (c / 255).astype(np.float32), 1.0),
}


@pytest.mark.parametrize("case", list(SIXTEEN_BIT_SOURCES))
def test_sixteen_bit_and_float_images_are_scaled_not_clipped(tmp_path, case):
    name, make, scale = SIXTEEN_BIT_SOURCES[case]
    array = make(_picture("camera"))  # 512 x 409: center-cropped to 409 x 409, no resize at that resolution
    Image.fromarray(array).save(tmp_path / name)
    side = min(array.shape)
    top = (array.shape[0] - side) // 2
    expected = np.round(array[top : top + side, :side].astype(np.float64) / scale * 255).astype(np.uint8)

    written = np.asarray(prep.load_square_rgb(str(tmp_path / name), side))
    assert written.shape == (side, side, 3)
    assert np.array_equal(written[..., 0], expected) and np.array_equal(written[..., 2], expected)


def test_float_image_outside_unit_range_is_refused_naming_the_file(tmp_path):
    Image.fromarray(_picture("camera").astype(np.float32)).save(tmp_path / "x.tif")
    with pytest.raises(ValueError, match=r"x\.tif.*mode F.*\[0, 1\]"):
        prep.load_square_rgb(str(tmp_path / "x.tif"), 64)
    assert "x.tif" in prep._convert_one((str(tmp_path / "x.tif"), str(tmp_path / "x.png"), 64, None))
    assert not (tmp_path / "x.png").exists()


def test_dicom_ids_cannot_write_outside_the_output_folder(mimic_tree, tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(mimic_tree, tree)
    with gzip.open(tree / "mimic-cxr-2.0.0-metadata.csv.gz", "rt") as handle:
        rows = list(csv.DictReader(handle))
    # a valid image where the escaping id's source path leads, so only the id check can stop the write
    escaping = "../../escaped"
    Image.fromarray(_picture("camera"), mode="L").save(tree / "files" / "p10" / "escaped.jpg")
    rows.append({**rows[0], "dicom_id": escaping})
    metadata = tmp_path / "metadata.csv"
    with open(metadata, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "out"
    with pytest.raises(
        ValueError, match=rf"metadata\.csv: 1 id\(s\) .*\n  line {len(rows) + 1}: dicom_id '\.\./\.\./escaped'$"
    ):
        prep.prepare_mimic_cxr(str(tree), str(out), metadata_file=str(metadata), resolution=32, progress=False)
    assert not (tmp_path / "escaped.png").exists() and not out.exists()


def test_bit_depth_scales_every_16_bit_image_alike(tmp_path):
    """``--bit_depth 12``: a dark 12-bit X-ray (largest value 900) is divided by 4095, as its brighter neighbours."""
    dark = (_picture("camera") / 255 * 900).round().astype(np.uint16)
    Image.fromarray(dark).save(tmp_path / "dark.png")
    height, width = dark.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    converted = np.asarray(prep.load_square_rgb(str(tmp_path / "dark.png"), side, bit_depth=12))
    expected = np.round(dark[top : top + side, left : left + side] / 4095 * 255).astype(np.uint8)
    np.testing.assert_array_equal(converted[:, :, 0], expected)
    assert prep.parse_args(["--mimic_cxr_jpg_dir", "x", "--output_dir", "y", "--bit_depth", "12"]).bit_depth == 12
