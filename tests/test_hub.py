"""Saving, loading (also in a fresh process and through a pre-filled Hub cache), model cards and bad files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, ModelCardData
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model
from PIL import Image
from safetensors.torch import load_file, save_file

import peft_memcontrol as pm
from peft_memcontrol import DiffFitConfig, MaskedAttentionConfig, MemControlConfig, SVDiffConfig

from helpers.models import build_sd15_unet, build_sdxl_unet, run, sd15_inputs, sdxl_inputs


TESTS = os.path.dirname(__file__)
CONFIGS = {
    "svdiff": lambda: SVDiffConfig(init_weights=False),
    "difffit": lambda: DiffFitConfig(init_weights=False),
    "masked_attention": lambda: MaskedAttentionConfig(init_weights=False, attention_only=True),
    "memcontrol": lambda: MemControlConfig(
        method="svdiff",
        init_weights=False,
        mask_semantics="strict",
        mask=pm.Mask.from_bits([1, 0] * 8, pm.get_layout("sd15-reference-16").genome),
        objectives=["noise_norm", "fid"],
        scores={"noise_norm": 0.25, "fid": 31.5},
        learning_rate=3e-4,
    ),
}


def saved_adapter(tmp_path, method: str):
    torch.manual_seed(11)
    model = get_peft_model(build_sd15_unet(), CONFIGS[method]())
    folder = tmp_path / method
    model.save_pretrained(folder)
    return model, folder


FRESH_PROCESS = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {tests!r})
    from helpers.models import build_sd15_unet, run, sd15_inputs
    import peft_memcontrol
    from peft import PeftModel
    results = {{}}
    for method, folder in {folders!r}.items():
        for trainable in (False, True):
            model = PeftModel.from_pretrained(build_sd15_unet(), folder, is_trainable=trainable)
            count = sum(p.numel() for p in model.parameters() if p.requires_grad)
            results[(method, trainable)] = {{"output": run(model, sd15_inputs()), "trainable": count}}
    torch.save(results, {out!r})
    """
)


def test_fresh_process_loads_identical_outputs(tmp_path):
    """Every method's saved adapter, loaded frozen and trainable in one fresh process (one interpreter start)."""
    saved = {method: saved_adapter(tmp_path, method) for method in sorted(CONFIGS)}
    for method, (_, folder) in saved.items():
        assert sorted(os.listdir(folder)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
        assert type(PeftConfig.from_pretrained(folder)) is type(CONFIGS[method]())
    out = tmp_path / "out.pt"
    folders = {method: str(folder) for method, (_, folder) in saved.items()}
    script = FRESH_PROCESS.format(tests=TESTS, folders=folders, out=str(out))
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    results = torch.load(out)
    for method, (model, _) in saved.items():
        expected = run(model, sd15_inputs())
        count = model.peft_config["default"].trainable_parameters
        for trainable in (False, True):
            assert torch.equal(results[(method, trainable)]["output"], expected), method
            assert results[(method, trainable)]["trainable"] == (count if trainable else 0), method


def test_model_card_names_method_mask_share_and_scores(tmp_path):
    _, folder = saved_adapter(tmp_path, "memcontrol")
    card = (folder / "README.md").read_text()
    config = json.loads((folder / "adapter_config.json").read_text())
    assert "import peft_memcontrol" in card
    assert "PEFT type `MC_MEMCONTROL`" in card
    assert "8 of 16 slots on, `strict` semantics" in card
    assert f"{config['trainable_parameters']:,}" in card
    assert "score: fid | 31.5" in card and "learning rate | 0.0003" in card
    assert '"down_blocks.0.attentions.0": true' in card
    assert "peft-memcontrol" in card.split("---")[1]  # a tag in the card's metadata


def test_load_adapter_into_unet_and_pipeline_attribute(tmp_path):
    model, folder = saved_adapter(tmp_path, "difffit")
    expected = run(model, sd15_inputs())
    unet = build_sd15_unet()
    pm.load_adapter(unet, str(folder), adapter_name="mask")
    assert torch.equal(run(unet, sd15_inputs()), expected)
    assert not any(p.requires_grad for p in unet.parameters())

    class Pipeline:  # stands for any diffusers pipeline: load_adapter only looks at .unet
        unet = build_sd15_unet()

    pm.load_adapter(Pipeline(), str(folder), adapter_name="mask", is_trainable=True)
    assert torch.equal(run(Pipeline.unet, sd15_inputs()), expected)
    assert any(p.requires_grad for p in Pipeline.unet.parameters())


def _fake_hub(monkeypatch, remote):
    """Replace the two Hub calls (the network is the only obstacle) by a local 'remote' folder."""

    class Info:
        def __init__(self, repo_id):
            self.repo_id = repo_id

    def create_repo(self, repo_id, **kwargs):
        (remote / repo_id).mkdir(parents=True, exist_ok=True)
        return Info(repo_id)

    def upload_folder(self, repo_id, folder_path, **kwargs):
        shutil.copytree(folder_path, remote / repo_id, dirs_exist_ok=True)
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def test_push_a_saved_folder_uploads_its_card_and_the_images_it_shows_only(tmp_path, monkeypatch):
    model, folder = saved_adapter(tmp_path, "difffit")
    (folder / "validation").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(folder / "validation" / "image_0.png")
    (folder / "checkpoint-2").mkdir()
    (folder / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (folder / "training_summary.json").write_text("{}")
    with open(folder / "README.md", "a", encoding="utf-8") as card:
        card.write("\n![validation image 0](validation/image_0.png) [outside](../secret.txt)\n")
    (tmp_path / "secret.txt").write_text("not for the Hub")
    remote = tmp_path / "remote"
    _fake_hub(monkeypatch, remote)
    pm.push_adapter_to_hub(str(folder), "someone/difffit")
    pushed = remote / "someone/difffit"
    files = sorted(str(path.relative_to(pushed)) for path in pushed.rglob("*") if path.is_file())
    assert files == ["README.md", "adapter_config.json", "adapter_model.safetensors", "validation/image_0.png"]
    assert (pushed / "README.md").read_text() == (folder / "README.md").read_text()
    with pytest.raises(FileNotFoundError, match="lacks .*adapter_model.safetensors"):
        pm.push_adapter_to_hub(str(folder / "validation"), "someone/nothing")
    assert not (remote / "someone/nothing").exists()


def _fill_hub_cache(cache, repo_id, files_from, commit="a" * 40):
    """Lay out files as huggingface_hub's cache does after a download."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in os.listdir(files_from):
        shutil.copy(files_from / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_push_to_hub_then_load_by_repo_id_offline_from_the_cache(tmp_path, monkeypatch):
    model, _ = saved_adapter(tmp_path, "memcontrol")
    expected = run(model, sd15_inputs())
    remote = tmp_path / "remote"
    _fake_hub(monkeypatch, remote)
    pm.push_adapter_to_hub(model, "someone/sd15-memcontrol-mask")
    pushed = remote / "someone/sd15-memcontrol-mask"
    assert sorted(os.listdir(pushed)) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert "peft_memcontrol.load_adapter(pipeline" in (pushed / "README.md").read_text()  # our card, not the Hub's

    cache = tmp_path / "hf-cache"
    _fill_hub_cache(cache, "someone/sd15-memcontrol-mask", pushed)
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.path.insert(0, {TESTS!r})
        from helpers.models import build_sd15_unet, run, sd15_inputs
        import peft_memcontrol
        unet = build_sd15_unet()
        peft_memcontrol.load_adapter(unet, "someone/sd15-memcontrol-mask")
        torch.save(run(unet, sd15_inputs()), {str(tmp_path / "hub.pt")!r})
        try:
            peft_memcontrol.load_adapter(build_sd15_unet(), "someone/not-cached")
        except OSError as error:
            assert "not in the local Hugging Face cache" in str(error), error
        else:
            raise AssertionError("loading an uncached repo offline must fail")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    subprocess.run([sys.executable, "-c", script], check=True, env=env)
    assert torch.equal(torch.load(tmp_path / "hub.pt"), expected)


def test_peft_push_to_hub_uploads_weights_and_config(tmp_path, monkeypatch):
    model, _ = saved_adapter(tmp_path, "svdiff")
    uploaded = {}

    def fake_upload(self, working_dir, repo_id, files_timestamps, **kwargs):
        uploaded.update(
            {
                name: (working_dir / name if hasattr(working_dir, "joinpath") else None)
                for name in os.listdir(working_dir)
            }
        )
        shutil.copytree(working_dir, tmp_path / "pushed")

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: type("R", (), {"repo_id": repo_id})())
    monkeypatch.setattr(
        "transformers.utils.hub.create_and_tag_model_card", lambda *a, **k: ModelCard.from_template(ModelCardData())
    )
    monkeypatch.setattr(type(model), "_upload_modified_files", fake_upload, raising=False)
    model.push_to_hub("someone/svdiff")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(uploaded)
    unet = build_sd15_unet()
    pm.load_adapter(unet, str(tmp_path / "pushed"))
    assert torch.equal(run(unet, sd15_inputs()), run(model, sd15_inputs()))


def test_adapter_for_another_architecture_names_layer_and_shapes(tmp_path):
    _, folder = saved_adapter(tmp_path, "svdiff")
    unet = build_sdxl_unet()
    with pytest.raises(ValueError, match=r"has shape \(32,\) in the adapter but \(64,\) in this model"):
        pm.load_adapter(unet, str(folder))
    assert not hasattr(unet, "peft_config")  # nothing half-loaded stays behind
    assert torch.equal(
        run(unet, {**sd15_inputs(), **_sdxl_extra()}), run(build_sdxl_unet(), {**sd15_inputs(), **_sdxl_extra()})
    )
    with pytest.raises(ValueError, match="another architecture"):
        PeftModel.from_pretrained(build_sdxl_unet(), folder)


def _sdxl_extra():
    return {"added_cond_kwargs": sdxl_inputs()["added_cond_kwargs"]}


def test_corrupt_truncated_and_pickled_files(tmp_path):
    _, folder = saved_adapter(tmp_path, "difffit")
    weights = folder / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        pm.load_adapter(build_sd15_unet(), str(folder))
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        pm.load_adapter(build_sd15_unet(), str(folder))
    weights.unlink()
    (folder / "adapter_model.bin").write_bytes(b"not even a pickle")
    with pytest.raises(ValueError, match="never unpickles"):
        pm.load_adapter(build_sd15_unet(), str(folder))


def test_nan_weights_are_refused(tmp_path):
    _, folder = saved_adapter(tmp_path, "difffit")
    weights = load_file(folder / "adapter_model.safetensors")
    key = next(iter(weights))
    weights[key][0] = float("nan")
    save_file(weights, folder / "adapter_model.safetensors")
    with pytest.raises(ValueError, match="NaN or inf"):
        pm.load_adapter(build_sd15_unet(), str(folder))


def test_config_from_a_newer_version_warns_and_loads(tmp_path):
    model, folder = saved_adapter(tmp_path, "svdiff")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["a_future_option"] = 1
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="a_future_option"):
        loaded = PeftModel.from_pretrained(build_sd15_unet(), folder)
    assert torch.equal(run(loaded, sd15_inputs()), run(model, sd15_inputs()))


def test_a_lora_saved_by_peft_loads_too(tmp_path):
    """A LoRA baseline saved with save_pretrained (which diffusers' load_lora_adapter cannot read: PEFT's key
    prefix) loads like this package's adapters, frozen unless asked otherwise."""
    config = LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"], init_lora_weights=False)
    model = get_peft_model(build_sd15_unet(), config)
    model.save_pretrained(tmp_path / "lora")
    unet = pm.load_adapter(build_sd15_unet(), str(tmp_path / "lora"))
    assert torch.equal(run(unet, sd15_inputs()), run(model, sd15_inputs()))
    assert not torch.equal(run(unet, sd15_inputs()), run(build_sd15_unet(), sd15_inputs()))
    lora = [name for name, _ in unet.named_parameters() if ".lora_" in name]
    assert len(lora) == 2 * 2 * sum(1 for n, _ in unet.named_modules() if n.endswith(("attn1.to_q", "attn2.to_q")))
    assert not any(p.requires_grad for p in unet.parameters())
    trainable = pm.load_adapter(build_sd15_unet(), str(tmp_path / "lora"), is_trainable=True)
    assert {n for n, p in trainable.named_parameters() if p.requires_grad} == set(lora)


def test_low_cpu_mem_usage_load_gives_the_same_outputs(tmp_path):
    model, folder = saved_adapter(tmp_path, "svdiff")
    loaded = PeftModel.from_pretrained(build_sd15_unet(), folder, low_cpu_mem_usage=True)
    assert not any(p.device.type == "meta" for p in loaded.parameters())
    assert torch.equal(run(loaded, sd15_inputs()), run(model, sd15_inputs()))


def test_print_trainable_parameters_reports_the_recorded_count(tmp_path, capsys):
    model, _ = saved_adapter(tmp_path, "difffit")
    model.print_trainable_parameters()
    count = model.peft_config["default"].trainable_parameters
    assert f"trainable params: {count:,}" in capsys.readouterr().out
