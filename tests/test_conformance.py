"""The conformance table: every PEFT and diffusers adapter call x each of the four methods (issue 12).

`TABLE` has one row per call (or group of calls made in one sequence). A row's check is either a *cell*,
``cell(method)``, that makes the calls on the tiny SD-1.5 UNet and compares the results with expectations computed
without the code under test: the base UNet's own outputs and weights, a plain ``UNet2DConditionModel`` loading a merged
state dict strictly, the same adapter with its change scaled by hand, the same call on a LoRA r=4. Or it is the node
id of the test that covers the call in depth where a cell would be too slow (``torch.compile``). ``test_cell`` walks
every (call, method); each cell is light (a few forwards of the tiny UNet), and the in-depth tests a row names live in
other modules.

``docs/adapters.md`` shows the same table; `test_the_docs_page_shows_this_table` keeps the two equal.
"""

from __future__ import annotations

import ast
import functools
import inspect
import math
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn

import peft_memcontrol as pm
from peft_memcontrol import DiffFitConfig, MaskedAttentionConfig, MemControlConfig, SpectralFactorPool, SVDiffConfig
from peft_memcontrol.tiny_sd import TINY_UNET_CONFIG
from peft_memcontrol.tuners import MaskedTunerConfig

from helpers.models import build_sd15_unet, run, sd15_inputs


# one xdist worker for the whole module: the cells share the reference adapters, their outputs and the fresh process
pytestmark = pytest.mark.xdist_group("conformance")

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "adapters.md"

#: The four methods, as a user configures them (MemControl: a searched 8-of-16 slot mask over SVDiff).
METHODS: dict[str, Callable[..., MaskedTunerConfig]] = {
    "svdiff": SVDiffConfig,
    "difffit": DiffFitConfig,
    "masked_attention": MaskedAttentionConfig,
    "memcontrol": lambda **kwargs: MemControlConfig(
        method="svdiff",
        mask=pm.Mask.from_bits([1, 0] * 8, pm.get_layout("sd15-reference-16").genome),
        mask_semantics="strict",
        **kwargs,
    ),
}
#: The docs page's column titles: the methods in `METHODS` order, the reference, the tests.
COLUMNS = ["call", "SVDiff", "DiffFit", "masked attention", "MemControl", "LoRA r=4", "checked by"]
PROJECTIONS = ["to_q", "to_k", "to_v", "to_out.0"]
ADAPTER_SEED, LORA_SEED, CHANGE_SEED = 5, 6, 7
#: A merged weight gives the unmerged computation's output to float32 rounding.
MERGE_TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def _inputs() -> dict:
    return sd15_inputs(batch=1)


def _adapted(method: str) -> PeftModel:
    """``get_peft_model`` on a fresh UNet with ``method``'s adapter at seeded random (non-identity) values."""
    unet = build_sd15_unet()
    torch.manual_seed(ADAPTER_SEED)
    return get_peft_model(unet, METHODS[method](init_weights=False))


@functools.cache
def _reference(method: str) -> PeftModel:
    """`_adapted`, shared by the cells that only read it."""
    return _adapted(method)


@functools.cache
def _reference_output(method: str) -> torch.Tensor:
    output = run(_reference(method), _inputs())
    # the adapter moves the output by 0.25 to 0.93: far more than any tolerance here, so comparisons can fail
    assert (output - _base_output()).abs().max() > 0.2
    return output


@functools.cache
def _base_output() -> torch.Tensor:
    return run(build_sd15_unet(), _inputs())


@functools.cache
def _base_state() -> dict[str, torch.Tensor]:
    return build_sd15_unet().state_dict()


def _base_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's tensors under their plain names (adapter parameters left out)."""
    return {
        re.sub(r"^base_model\.model\.|\.base_layer", "", name): value
        for name, value in model.state_dict().items()
        if ".mc_" not in name and "lora_" not in name
    }


def _assert_states_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(actual[name], value), name


def _assert_states_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(actual[name], value, rtol=0, atol=1e-6, msg=name)


def _plain_unet(state_dict: dict[str, torch.Tensor]) -> UNet2DConditionModel:
    """A UNet without adapter code that loads ``state_dict`` strictly: every key it has, none it lacks."""
    plain = UNet2DConditionModel(**TINY_UNET_CONFIG).eval()
    plain.load_state_dict(state_dict, strict=True)
    return plain


def _adapter_parameters(model: nn.Module, adapter: str) -> dict[str, nn.Parameter]:
    pattern = re.compile(rf"\.(mc|lora)_\w+\.{re.escape(adapter)}(\.\w+)?$")
    return {name: parameter for name, parameter in model.named_parameters() if pattern.search(name)}


def _trainable(model: nn.Module) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def _lora_config(target_modules: list[str] = PROJECTIONS) -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=4, target_modules=target_modules, init_lora_weights=False)


def _add_lora(unet: UNet2DConditionModel) -> None:
    torch.manual_seed(LORA_SEED)
    unet.add_adapter(_lora_config(), adapter_name="lora")


# -- the fresh process --------------------------------------------------------------------------------------------
FRESH_PROCESS = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from peft import PeftModel
    from safetensors.torch import save_file
    import peft_memcontrol
    from helpers.models import build_sd15_unet, run, sd15_inputs
    outputs = {{
        method: run(PeftModel.from_pretrained(build_sd15_unet(), folder), sd15_inputs(batch=1))
        for method, folder in {folders!r}.items()
    }}
    save_file(outputs, {out!r})
    """
)


@dataclass
class SavedAdapters:
    """`_reference`'s adapters, saved by ``save_pretrained``, and the process that loads them all afresh."""

    folders: dict[str, str]
    fresh_process: subprocess.Popen
    out: str

    @functools.cached_property
    def fresh_process_outputs(self) -> dict[str, torch.Tensor]:
        """The outputs of the adapters loaded in the fresh process (waits for it)."""
        if self.fresh_process.wait() != 0:
            raise AssertionError(Path(self.out).with_name("stderr.txt").read_text())
        return load_file(self.out)


@pytest.fixture(scope="module")
def saved_adapters(tmp_path_factory) -> SavedAdapters:
    """Saves the adapters and starts the fresh process, which runs beside the other cells until one needs it."""
    root = tmp_path_factory.mktemp("adapters")
    folders = {method: str(root / method) for method in METHODS}
    for method, folder in folders.items():
        _reference(method).save_pretrained(folder)
    out = str(root / "outputs.safetensors")
    script = FRESH_PROCESS.format(tests=str(ROOT / "tests"), folders=folders, out=out)
    with open(root / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", script], stderr=stderr, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
    yield SavedAdapters(folders, process, out)
    if process.poll() is None:  # no cell needed it (deselected)
        process.kill()
        process.wait()


@pytest.fixture(scope="module", autouse=True)
def decompose_each_weight_once():
    """The SVDiff adapters here sit on copies of one UNet: keep their decompositions for the whole module."""
    with SpectralFactorPool() as pool:
        yield
    pool.clear()


# -- cells --------------------------------------------------------------------------------------------------------
def check_named_adapters(method: str) -> None:
    model = get_peft_model(build_sd15_unet(), METHODS[method]())
    assert torch.equal(run(model, _inputs()), _base_output())  # the identity at init, as LoRA (B = 0)
    assert _adapter_parameters(model, "default") and _trainable(model) == set(_adapter_parameters(model, "default"))

    model.add_adapter("trained", METHODS[method]())
    assert model.active_adapters == ["default"]  # added, not active, as for LoRA
    checkpoint = get_peft_model_state_dict(_reference(method))
    assert checkpoint and not any(".base_layer" in key or ".default" in key for key in checkpoint)
    result = set_peft_model_state_dict(model, checkpoint, adapter_name="trained")
    assert not result.unexpected_keys and not [key for key in result.missing_keys if ".trained" in key]
    model.set_adapter("trained")
    assert _trainable(model) == set(_adapter_parameters(model, "trained"))
    assert torch.equal(run(model, _inputs()), _reference_output(method))
    with model.disable_adapter():
        assert torch.equal(run(model, _inputs()), _base_output())
    model.delete_adapter("default")
    assert not _adapter_parameters(model, "default") and model.active_adapters == ["trained"]

    unloaded = model.unload()
    _assert_states_equal(_plain_unet(unloaded.state_dict()).state_dict(), _base_state())


def check_fresh_process(method: str, saved_adapters: SavedAdapters) -> None:
    assert torch.equal(saved_adapters.fresh_process_outputs[method], _reference_output(method))


def check_merges(method: str) -> None:
    model = _adapted(method)
    model.merge_adapter()
    assert any(not torch.equal(value, _base_state()[name]) for name, value in _base_weights(model).items())
    torch.testing.assert_close(run(model, _inputs()), _reference_output(method), **MERGE_TOLERANCE)
    model.unmerge_adapter()
    _assert_states_equal(_base_weights(model), _base_state())  # bit for bit (LoRA: to float32 rounding)

    model.add_adapter("broken", METHODS[method](target_modules=["to_q"]))
    with torch.no_grad():
        for parameter in _adapter_parameters(model, "broken").values():
            parameter.fill_(math.nan)
    with pytest.raises(_lora_safe_merge_error(), match="NaN"):
        model.merge_adapter(adapter_names=["broken"], safe_merge=True)
    _assert_states_equal(_base_weights(model), _base_state())  # refused before writing anything, as LoRA

    merged = model.merge_and_unload(adapter_names=["default"], safe_merge=True)
    output = run(_plain_unet(merged.state_dict()), _inputs())
    torch.testing.assert_close(output, _reference_output(method), **MERGE_TOLERANCE)


@functools.cache
def _lora_safe_merge_error() -> type[Exception]:
    """The error LoRA's ``safe_merge`` raises for a NaN adapter; it too leaves the weights as they were."""
    model = get_peft_model(build_sd15_unet(), _lora_config())
    with torch.no_grad():
        for parameter in _adapter_parameters(model, "default").values():
            parameter.fill_(math.nan)
    with pytest.raises(Exception, match="NaN") as refusal:
        model.merge_adapter(safe_merge=True)
    _assert_states_equal(_base_weights(model), _base_state())
    return type(refusal.value)


def check_modules_to_save(method: str) -> None:
    model = get_peft_model(build_sd15_unet(), METHODS[method](modules_to_save=["conv_out"]))
    trained_copy = model.base_model.model.conv_out.modules_to_save["default"]
    assert {f"base_model.model.conv_out.modules_to_save.default.{name}" for name in ("weight", "bias")} <= _trainable(
        model
    )
    expected = build_sd15_unet()
    with torch.no_grad():
        trained_copy.weight.add_(0.05)
        expected.conv_out.weight.add_(0.05)
    assert torch.equal(run(model, _inputs()), run(expected, _inputs()))


#: diffusers' block-wise weights: the issue's example (every down block off).
BLOCK_WEIGHTS = {"down": 0.0, "mid": 1.0, "up": 1.0}


@torch.no_grad()
def _add_positive_change(model: nn.Module, adapter: str, scale: float) -> None:
    """Add ``scale`` times a seeded random change in [0, 0.05) to every parameter of ``adapter``.

    An adapter weight ``w`` scales each method's change of its parameters from the identity (a DiffFit gain ``g``
    acts as ``1 + w (g - 1)``, a delta as ``w d``), and SVDiff's change of the singular values,
    ``relu(s + d) - s``, which is ``d`` while ``s + d >= 0``: a positive change keeps it there. So the adapter made
    with ``scale = 1`` at weight ``w`` must equal the one made with ``scale = w`` at weight 1.
    """
    generator = torch.Generator().manual_seed(CHANGE_SEED)
    for parameter in _adapter_parameters(model, adapter).values():
        parameter.add_(scale * 0.05 * torch.rand(parameter.shape, generator=generator))


@functools.cache
def _lora_block_scales() -> dict[str, float]:
    """Module path -> the scale diffusers gives a LoRA there for `BLOCK_WEIGHTS`; the LoRA adapts every kind of
    module our methods adapt (projections, resnet convolutions, samplers, ``conv_in``, time embedding, ``conv_out``)."""
    targets = [*PROJECTIONS, "conv_in", "conv1", "conv2", "conv", "proj_in", "proj_out", "linear_1", "conv_out"]
    lora = build_sd15_unet()
    lora.add_adapter(_lora_config(targets), adapter_name="lora")
    lora.set_adapters("lora", BLOCK_WEIGHTS)
    return {path: module.scaling["lora"] for path, module in lora.named_modules() if hasattr(module, "scaling")}


def check_set_adapters(method: str) -> None:
    unet = build_sd15_unet()
    unet.add_adapter(METHODS[method](), adapter_name="ours")
    _add_positive_change(unet, "ours", scale=1.0)

    unet.set_adapters("ours", BLOCK_WEIGHTS)
    ours = {path: module.mc_scale["ours"] for path, module in unet.named_modules() if hasattr(module, "mc_scale")}
    lora = _lora_block_scales()
    shared = set(ours) & set(lora)
    assert {lora[path] for path in shared} == {0.0, 1.0}  # both weights occur: the comparison can fail
    assert {path: ours[path] for path in shared} == {path: lora[path] for path in shared}

    unet.set_adapters(["ours"], [0.5])
    at_half = run(unet, _inputs())
    unet.disable_adapters()  # diffusers' switch, beside PEFT's context manager (the named-adapters row)
    assert torch.equal(run(unet, _inputs()), _base_output())
    unet.enable_adapters()
    assert torch.equal(run(unet, _inputs()), at_half)
    _add_positive_change(unet, "ours", scale=-0.5)  # the same adapter with half its change, by hand
    unet.set_adapters(["ours"], [1.0])
    torch.testing.assert_close(run(unet, _inputs()), at_half, rtol=1e-4, atol=2e-5)
    assert (at_half - _base_output()).abs().max() > 1e-2  # the change is not lost in the tolerance


def check_fuse_unfuse(method: str) -> None:
    unet = build_sd15_unet()
    torch.manual_seed(ADAPTER_SEED)
    unet.add_adapter(METHODS[method](init_weights=False), adapter_name="ours")  # `_reference`'s values
    unet.fuse_lora()
    torch.testing.assert_close(run(unet, _inputs()), _reference_output(method), **MERGE_TOLERANCE)
    unet.unfuse_lora()
    _assert_states_equal(_base_weights(unet), _base_state())

    _add_lora(unet)
    unet.set_adapters(["ours", "lora"])
    adapted = run(unet, _inputs())
    for order in (["ours", "lora"], ["lora", "ours"]):
        for adapter in order:
            unet.fuse_lora(adapter_names=[adapter])
        # ours first gives W' + dW_lora, what the unfused layers compute; the other order applies ours to W + dW_lora
        if order[0] == "ours":
            torch.testing.assert_close(run(unet, _inputs()), adapted, **MERGE_TOLERANCE)
        unet.unfuse_lora()
        _assert_states_close(_base_weights(unet), _base_state())  # LoRA + LoRA: to float32 rounding too
    unet.unload_lora()
    _assert_states_close(unet.state_dict(), _base_state())


def check_added_after_a_lora(method: str) -> None:
    unet = build_sd15_unet()
    _add_lora(unet)
    keys = list(unet.state_dict())
    with pytest.raises(ValueError, match=r"add every \w+ adapter first.*or delete the other adapter first"):
        unet.add_adapter(METHODS[method](), adapter_name="ours")
    assert list(unet.state_dict()) == keys  # nothing injected


def check_load_adapter_any_name(method: str, saved_adapters: SavedAdapters) -> None:
    folder = saved_adapters.folders[method]
    unet = build_sd15_unet().requires_grad_(False)
    pm.load_adapter(unet, folder, adapter_name="0", is_trainable=True)
    # the adapter's own parameters: the file's keys with the adapter name after the container, as PEFT names them
    own = set()
    for key in load_file(f"{folder}/adapter_model.safetensors"):
        module, container, tensor = re.fullmatch(r"base_model\.model\.(.+?)\.(mc_[a-z_]+)((?:\.\w+)?)", key).groups()
        own.add(f"{module}.{container}.0{tensor}")
    assert _trainable(unet) == own
    assert torch.equal(run(unet, _inputs()), _reference_output(method))


def _gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(**_inputs()).sample.square().mean().backward()
    return {name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.requires_grad}


def check_gradient_checkpointing(method: str) -> None:
    model = _adapted(method)
    model.train()
    expected = _gradients(model)
    model.base_model.model.enable_gradient_checkpointing()
    checkpointed = _gradients(model)
    assert expected.keys() == checkpointed.keys() and all(gradient.abs().sum() > 0 for gradient in expected.values())
    for name, gradient in expected.items():
        torch.testing.assert_close(checkpointed[name], gradient, rtol=1e-4, atol=1e-6, msg=name)


def check_half_precision(method: str) -> None:
    for dtype, tolerance in ((torch.float16, 1e-2), (torch.bfloat16, 5e-2)):  # measured: 3.4e-3 and 2.4e-2
        unet = build_sd15_unet().to(dtype)
        torch.manual_seed(ADAPTER_SEED)
        model = get_peft_model(unet, METHODS[method](init_weights=False))
        assert {p.dtype for p in _adapter_parameters(model, "default").values()} == {torch.float32}  # as LoRA's
        inputs = {key: value.to(dtype) if value.is_floating_point() else value for key, value in _inputs().items()}
        output = run(model, inputs)
        assert output.dtype == dtype
        torch.testing.assert_close(output.float(), _reference_output(method), rtol=0, atol=tolerance)


def check_add_weighted_adapter(method: str) -> None:
    with pytest.raises(NotImplementedError, match=r"add_weighted_adapter is not implemented.*set_adapters"):
        _reference(method).add_weighted_adapter(["default"], [0.5], "half")


# -- the table ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One call, or a sequence of calls checked together.

    Args:
        call: the call(s), as the docs page shows them (markdown).
        check: a cell, ``cell(method)`` or ``cell(method, saved_adapters)``, or the node id of the test that covers
            the call in depth.
        ours: what each of the four methods does: "yes", or "refused: " and what the error says to do.
        lora: what PEFT's LoRA does, the reference.
        in_depth: node ids of tests in other modules that check the call in depth.
    """

    call: str
    check: Callable[..., None] | str
    ours: str = "yes"
    lora: str = "yes"
    in_depth: tuple[str, ...] = ()


TABLE: dict[str, Row] = {
    "named_adapters": Row(
        "`get_peft_model`, `add_adapter`, `set_peft_model_state_dict` (from `get_peft_model_state_dict`), "
        "`set_adapter`, `disable_adapter`, `delete_adapter`, `unload`",
        check_named_adapters,
        in_depth=("tests/test_adapter_under_lora.py::test_saved_keys_are_those_of_a_fresh_model",),
    ),
    "merges": Row(
        "`merge_adapter`, `unmerge_adapter`, `merge_and_unload(adapter_names=[...], safe_merge=True)`",
        check_merges,
        ours="yes; unmerged bit for bit",
        lora="yes; unmerged to float32 rounding",
        in_depth=("tests/test_adapters.py::test_identity_init_disabled_and_merged",),
    ),
    "modules_to_save": Row(
        '`modules_to_save=["conv_out"]`',
        check_modules_to_save,
        in_depth=("tests/test_modules_to_save.py::test_fresh_process_loads_the_saved_module",),
    ),
    "set_adapters": Row(
        '`set_adapters(names, weights)`, block-wise `set_adapters(name, {"down": 0, "mid": 1, "up": 1})`, '
        "`disable_adapters`, `enable_adapters`",
        check_set_adapters,
        in_depth=("tests/test_block_scales.py::test_block_wise_weights_equal_a_hand_scaled_adapter",),
    ),
    "fuse_unfuse": Row(
        "`fuse_lora`, `unfuse_lora`, `unload_lora`; alone, and with a LoRA added after ours, fused in either order",
        check_fuse_unfuse,
        in_depth=("tests/test_merge_composition.py::test_diffusers_fuse_unfuse_unload_beside_a_lora",),
    ),
    "added_after_a_lora": Row(
        "`add_adapter` on a UNet that already holds a LoRA",
        check_added_after_a_lora,
        ours="refused: add ours first, or delete the LoRA",
        in_depth=(
            "tests/test_adapter_errors.py::test_our_adapter_after_a_lora_says_to_add_ours_first_and_leaves_the_model_alone",
        ),
    ),
    "add_weighted_adapter": Row(
        "`add_weighted_adapter`",
        check_add_weighted_adapter,
        ours="refused: use `set_adapters` with weights, or merge one after another",
        in_depth=("tests/test_adapter_errors.py::test_add_weighted_adapter_names_the_method",),
    ),
    "gradient_checkpointing": Row(
        "`enable_gradient_checkpointing()`",
        check_gradient_checkpointing,
    ),
    "half_precision": Row(
        "fp16 and bf16 base models (adapter parameters stay float32)",
        check_half_precision,
    ),
    "torch_compile": Row(
        "`torch.compile(model, fullgraph=True)`",
        "tests/test_compile.py::test_compiles_to_one_graph_that_matches_eager",
    ),
    "load_adapter_any_name": Row(
        '`peft_memcontrol.load_adapter(unet, folder, adapter_name="0", is_trainable=True)`',
        check_load_adapter_any_name,
        in_depth=("tests/test_load_adapter_names.py::test_only_the_adapters_own_parameters_change_requires_grad",),
    ),
    "fresh_process": Row(
        "`save_pretrained`, then `PeftModel.from_pretrained` in a fresh process",
        check_fresh_process,
        ours="yes, bit for bit",
        in_depth=("tests/test_hub.py::test_fresh_process_loads_identical_outputs",),
    ),
}
CELLS = [(call, method) for call, row in TABLE.items() if callable(row.check) for method in METHODS]


@pytest.mark.parametrize(("call", "method"), CELLS)
def test_cell(call: str, method: str, saved_adapters: SavedAdapters) -> None:
    # every cell asks for `saved_adapters`, so that the fresh process starts with the first cell and runs beside
    # the others until the last row waits for it
    check = TABLE[call].check
    if "saved_adapters" in inspect.signature(check).parameters:
        check(method, saved_adapters=saved_adapters)
    else:
        check(method)


def _named_tests(row: Row) -> list[str]:
    return ([row.check] if isinstance(row.check, str) else []) + list(row.in_depth)


@pytest.mark.parametrize("node_id", sorted({node_id for row in TABLE.values() for node_id in _named_tests(row)}))
def test_named_test_exists(node_id: str) -> None:
    """A test the table names in another module exists there (the reference cannot rot)."""
    path, function = node_id.split("::")
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    assert function in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}, node_id


def _markdown_cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split(" | ")]


def _checked_by(row: Row) -> str:
    """The docs page's "checked by" cell: this module where a cell checks the row, then the modules it names."""
    paths = ([] if isinstance(row.check, str) else ["tests/test_conformance.py"]) + [
        node_id.split("::")[0] for node_id in _named_tests(row)
    ]
    return ", ".join(f"`{Path(path).name}`" for path in dict.fromkeys(paths))


def test_the_docs_page_shows_this_table() -> None:
    lines = [line for line in PAGE.read_text(encoding="utf-8").splitlines() if line.startswith("| ")]
    expected = [COLUMNS] + [
        [row.call, *[row.ours] * len(METHODS), row.lora, _checked_by(row)] for row in TABLE.values()
    ]
    assert [_markdown_cells(line) for line in lines] == expected
