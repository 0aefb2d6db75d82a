"""One real search on the tiny pipeline: the inner loop trains with the project's trainer, scores with the metrics,
and the front's masks load through get_peft_model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftConfig, get_peft_model

from peft_memcontrol.sample_data import build_faces_dataset
from peft_memcontrol.search import GenomeSpace, MaskSearcher, SearchConfig, measure_references
from peft_memcontrol.search.inner_loop import InnerLoop, ProxyDataSpec
from peft_memcontrol.search.report import write_search_outputs
from peft_memcontrol.tiny_sd import load_tiny_pipeline
from peft_memcontrol.training import TrainingConfig


@pytest.mark.slow
def test_real_search_on_tiny_pipeline_gives_loadable_masks(tmp_path):
    data = build_faces_dataset(str(tmp_path / "data"), num_test=4, num_memorization=2, memorization_repeats=2)
    loop = InnerLoop(
        ProxyDataSpec(data.train_dir, test_data_dir=data.test_dir, fraction=0.05, num_memorization=2, repeats=2),
        objectives=["noise_norm", "val_loss"],
        training=TrainingConfig(max_train_steps=2, train_batch_size=2),
    )
    space = GenomeSpace.from_layout("sd15-reference-13")
    config = SearchConfig(population_size=4, generations=1, num_offspring=2, seed=0)
    searcher = MaskSearcher(space, loop, config=config, output_dir=tmp_path / "search", progress=False)
    result = searcher.run()
    assert all(r["status"] == "ok" for r in result.records), [r.get("error") for r in result.records]
    assert result.front and result.hypervolume > 0

    # references: the knee trained again under other seeds scores differently; the base model is the same model
    # whichever adapter was injected (and disabled) to score it, and differs from a trained one
    result.references = measure_references(searcher, runs=2)
    runs, base_scores = result.references.runs, result.references.base_model
    assert len(runs) == 2 and runs[0] != runs[1] and all(v > 0 for v in result.references.noise().values())
    other = next(space.decode(r["genome"]) for r in result.records if r["key"] != result.knee().candidate.key)
    assert loop.score_base_model(other) == base_scores and [base_scores[n] for n in result.objectives] != runs[0]

    base = loop.load().unet
    before = {name: p.detach().clone() for name, p in base.named_parameters()}
    paths = write_search_outputs(result, str(tmp_path / "search"), plots=True)
    assert json.loads(Path(paths["front.json"]).read_text())["references"]["base_model"] == base_scores
    unet = load_tiny_pipeline().unet
    for point in result.front:
        config = result.to_config(point)
        model = get_peft_model(unet, config)
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
        model.unload()
    loaded = PeftConfig.from_pretrained(paths["chosen"]["knee"])
    assert loaded.mask == result.knee().candidate.mask.to_dict()
    assert loaded.learning_rate == result.knee().candidate.learning_rate
    # The shared base model is left as it was found (adapters unloaded, weights untouched).
    after = dict(base.named_parameters())
    assert set(after) == set(before) and all(torch.equal(after[n], before[n]) for n in before)
