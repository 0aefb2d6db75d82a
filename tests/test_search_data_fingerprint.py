"""A search records what its data held (`data_fingerprint`), and a resume after the data changed is refused.

The journal's header has always named the data folders; with the fingerprint it also says what was in them (every
image's bytes and caption, in row order). Replacing an image in the same folder and resuming would otherwise mix
scores made on two data sets in one front. The images are real ones (scikit-image's sample photographs).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from peft_memcontrol.search import GenomeSpace, InnerLoop, MaskSearcher, SearchConfig, inner_loop
from peft_memcontrol.search.inner_loop import ProxyDataSpec, data_fingerprint
from peft_memcontrol.search.journal import JournalError
from peft_memcontrol.training import TrainingConfig


skimage_data = pytest.importorskip("skimage.data")

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins")


def photo(name: str, size: int = 32) -> Image.Image:
    """One of scikit-image's sample photographs, as a small RGB image."""
    return Image.fromarray(np.asarray(getattr(skimage_data, name)())).convert("RGB").resize((size, size))


def write_folder(root, names=PHOTOS) -> str:
    root.mkdir(parents=True)
    rows = []
    for index, name in enumerate(names):
        photo(name).save(root / f"{index}.png")
        rows.append(json.dumps({"file_name": f"{index}.png", "text": f"a photograph of a {name}"}))
    (root / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return str(root)


def rewrite_metadata(root, change) -> None:
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in change(rows)))


def test_fingerprint_follows_the_content_the_inner_loop_reads(tmp_path):
    folder = tmp_path / "data"
    fingerprint = data_fingerprint(write_folder(folder))
    assert len(fingerprint) == 64 and data_fingerprint(str(folder)) == fingerprint  # deterministic

    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    assert data_fingerprint(str(moved)) == fingerprint  # the folder's place is recorded elsewhere

    photo("coffee").save(moved / "0.png")  # another image under the same name
    assert data_fingerprint(str(moved)) != fingerprint
    photo("astronaut").save(moved / "0.png")
    assert data_fingerprint(str(moved)) == fingerprint

    (moved / "notes.txt").write_text("not read by the inner loop")
    assert data_fingerprint(str(moved)) == fingerprint

    rewrite_metadata(moved, lambda rows: [{**rows[0], "text": "another caption"}, *rows[1:]])
    changed_caption = data_fingerprint(str(moved))
    rewrite_metadata(moved, lambda rows: [{**rows[0], "text": "a photograph of a astronaut"}, *rows[1:]])
    assert changed_caption != fingerprint and data_fingerprint(str(moved)) == fingerprint

    rewrite_metadata(moved, lambda rows: rows[::-1])  # the proxy set draws rows by index
    assert data_fingerprint(str(moved)) != fingerprint
    rewrite_metadata(moved, lambda rows: rows[::-1][:-1])  # one row fewer
    assert data_fingerprint(str(moved)) not in (fingerprint, None)

    assert data_fingerprint(None) is None
    assert data_fingerprint(str(tmp_path / "missing")) is None


def test_inner_loop_settings_hold_the_fingerprints_of_its_folders(tmp_path):
    train, test = write_folder(tmp_path / "train", PHOTOS[:4]), write_folder(tmp_path / "test", PHOTOS[4:])
    settings = InnerLoop(ProxyDataSpec(train, test_data_dir=test), objectives=["noise_norm", "val_loss"]).settings()
    assert settings["data_fingerprint"] == {
        "train_data_dir": data_fingerprint(train),
        "test_data_dir": data_fingerprint(test),
    }
    assert settings["data_fingerprint"]["train_data_dir"] != settings["data_fingerprint"]["test_data_dir"]


def search(folder, data_dir) -> MaskSearcher:
    loop = InnerLoop(
        ProxyDataSpec(data_dir, fraction=0.5, num_memorization=2, repeats=1),
        objectives=["noise_norm"],
        training=TrainingConfig(max_train_steps=1, train_batch_size=1),
    )
    space = GenomeSpace.from_layout("sd15-reference-13")
    config = SearchConfig(population_size=2, generations=0, seed=0)
    return MaskSearcher(space, loop, config=config, output_dir=folder, progress=False)


def test_resume_after_the_images_changed_is_refused_naming_the_fingerprint(tmp_path):
    data = tmp_path / "data"
    write_folder(data)
    output = tmp_path / "search"
    result = search(output, str(data)).run()
    assert [record["status"] for record in result.records] == ["ok", "ok"], [r.get("error") for r in result.records]
    journal = (output / "journal.jsonl").read_text()

    # Unchanged data: the search resumes, with nothing left to evaluate.
    search(output, str(data)).run()
    assert (output / "journal.jsonl").read_text() == journal

    photo("coins").save(data / "1.png")  # the user replaced an image in the same folder
    with pytest.raises(JournalError) as refused:
        search(output, str(data)).run()
    message = str(refused.value)
    assert "evaluator.settings.data_fingerprint.train_data_dir" in message
    assert "--output_dir" in message and "evaluator.settings.data.train_data_dir" not in message
    assert (output / "journal.jsonl").read_text() == journal  # nothing evaluated, nothing written


def test_a_run_hashes_its_data_once_for_the_journal_references_and_fidelity_check(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_folder(data)
    hashed = []

    def counted(data_dir):
        hashed.append(data_dir)
        return data_fingerprint(data_dir)

    monkeypatch.setattr(inner_loop, "data_fingerprint", counted)
    searcher = search(tmp_path / "search", str(data))
    searcher.run()
    assert hashed == [str(data), None]  # the run's header: the training folder, and no held-out folder
    header = searcher.header()
    assert searcher.header() == header and hashed == [str(data), None]  # what references and fidelity key by

    photo("coins").save(data / "1.png")  # changed after the run: the run's evaluations were made on the old images
    assert searcher.header() == header and len(hashed) == 2
    with pytest.raises(JournalError, match="data_fingerprint"):
        searcher.run()  # a new run reads the folder again, and refuses to resume on other images
    assert len(hashed) == 4
