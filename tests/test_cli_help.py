"""``import peft_memcontrol``, ``--help`` and the flag errors of ``memcontrol`` and of the launch script import no
torch, and the package still registers its methods with PEFT whoever imports PEFT, and in which order.

Each check runs in a fresh interpreter: what a process has imported is the point. Wall time is measured in
``benchmarks/help_time.py``, not asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from peft import get_peft_model

from peft_memcontrol.constants import METHOD_NAMES, OBJECTIVE_NAMES
from peft_memcontrol.search.objectives import BUILTIN_OBJECTIVES
from peft_memcontrol.tuners import METHODS, SVDiffConfig

from helpers.models import build_sd15_unet, sd15_inputs


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(REPO, "examples", "train_text_to_image_memcontrol.py")


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, TESTS]), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_the_command_lines_choices_are_the_implemented_names():
    assert tuple(METHODS) == METHOD_NAMES == ("svdiff", "difffit", "masked_attention")
    assert tuple(BUILTIN_OBJECTIVES) == OBJECTIVE_NAMES
    assert all(BUILTIN_OBJECTIVES[name].__name__ == name for name in OBJECTIVE_NAMES)


def test_help_and_flag_errors_come_without_torch(tmp_path):
    """``memcontrol search`` and the launch script: help, a bad flag and refused values, files and folders."""
    no_metadata = str(tmp_path)
    missing_mask = str(tmp_path / "mask.json")
    code = f"""
import contextlib, io, json, runpy, sys
import peft_memcontrol
from peft_memcontrol.cli import main
outcome = {{"after_import": sorted(m for m in ("torch", "peft", "diffusers") if m in sys.modules)}}
train = runpy.run_path({SCRIPT!r}, run_name="launch_script")["main"]
for name, command, argv in [
    ("help", main, ["search", "--help"]),
    ("bad_choice", main, ["search", "--objectives", "copy_similarity", "no_such_objective"]),
    ("noise_runs", main, ["search", "--noise_runs", "0"]),
    ("fidelity", main, ["search", "--fidelity_train_steps", "0"]),
    ("train_help", train, ["--help"]),
    ("train_bad_flag", train, ["--no_such_flag"]),
    ("train_no_metadata", train, ["--train_data_dir", {no_metadata!r}]),
    ("train_missing_mask", train, ["--method", "memcontrol", "--mask", {missing_mask!r}]),
    ("train_epochs", train, ["--num_train_epochs", "0"]),
    ("train_held_out", train, ["--memorization_check_steps", "5", "--memorization_held_out_dir", {missing_mask!r}]),
    ("train_held_out_bare", train, ["--memorization_check_steps", "5", "--memorization_held_out_dir", {no_metadata!r}]),
]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = command(argv)
        except SystemExit as stop:
            status = stop.code
    outcome[name] = [status, out.getvalue(), err.getvalue()]
outcome["imported"] = sorted(m for m in ("torch", "peft", "diffusers") if m in sys.modules)
print(json.dumps(outcome))
"""
    result = _python(code)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout.splitlines()[-1])
    assert outcome["after_import"] == [] and outcome["imported"] == []
    status, help_text, _ = outcome["help"]
    assert status == 0 and "--objectives" in help_text
    # argparse wraps the help; the choices are listed in order
    flat = " ".join(help_text.split())
    assert f"choose from {', '.join(OBJECTIVE_NAMES)}" in flat
    assert "{" + ",".join(METHOD_NAMES) + "}" in flat
    status, _, error = outcome["bad_choice"]
    assert status == 2 and "invalid choice: 'no_such_objective'" in error
    assert outcome["noise_runs"][0] == 2
    assert "--noise_runs must be at least 1, got 0." in outcome["noise_runs"][2]
    assert outcome["fidelity"][0] == 2
    assert "--fidelity_train_steps must be at least 1, got 0." in outcome["fidelity"][2]
    status, help_text, _ = outcome["train_help"]
    flat = " ".join(help_text.split())
    assert status == 0 and "--memorization_check_steps" in flat  # a flag of the script's own
    assert "--noise_norm_threshold" in flat  # a flag made from TrainingConfig's fields
    assert "{" + ",".join((*METHOD_NAMES, "memcontrol", "lora", "full")) + "}" in flat
    status, _, error = outcome["train_bad_flag"]
    assert status == 2 and "unrecognized arguments: --no_such_flag" in error
    status, _, error = outcome["train_no_metadata"]
    assert status == 2 and f"error: {no_metadata} has no metadata.jsonl or metadata.csv" in error
    assert "--train_csv" in error  # the message names the flag for a CSV of another name
    assert outcome["train_missing_mask"][0] == 2
    assert f"error: --mask {missing_mask} does not exist." in outcome["train_missing_mask"][2]
    assert outcome["train_epochs"][0] == 2
    assert "error: num_train_epochs must be at least 1, got 0." in outcome["train_epochs"][2]
    # the memorization monitor's held-out folder is checked before the model loads, not when the first check runs
    assert outcome["train_held_out"][0] == 2
    assert f"error: --memorization_held_out_dir {missing_mask} does not exist." in outcome["train_held_out"][2]
    status, _, error = outcome["train_held_out_bare"]
    assert status == 2 and f"error: {no_metadata} has no metadata.jsonl" in error and "--train_csv" not in error


def test_python_m_runs_the_command():
    """``python -m peft_memcontrol.cli`` (runpy asks the module's loader for its code) prints the help."""
    result = _python(
        "import runpy, sys\nsys.argv = ['memcontrol', '--help']\nrunpy.run_module('peft_memcontrol.cli', run_name='__main__')"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "{search,demo,report}" in result.stdout


@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory):
    """A saved SVDiff adapter with non-zero spectral shifts, and the adapted UNet's output on fixed inputs."""
    folder = str(tmp_path_factory.mktemp("adapter"))
    model = get_peft_model(build_sd15_unet(), SVDiffConfig())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator))
        output = model(**sd15_inputs()).sample
        base = model.get_base_model()
        with model.disable_adapter():
            base_output = base(**sd15_inputs()).sample
    assert not torch.allclose(output, base_output, atol=1e-4)  # the adapter changes the output
    model.save_pretrained(folder)
    return folder, output


IMPORT_ORDERS = {
    # PEFT is already imported
    "peft first": "import peft\nimport peft_memcontrol\nfrom diffusers import UNet2DConditionModel\n",
    # diffusers imports PEFT halfway through its own modules; the package alone imports no torch
    "peft by diffusers": "import sys, peft_memcontrol\nassert 'torch' not in sys.modules\n"
    "from diffusers import UNet2DConditionModel\n",
}


@pytest.mark.slow  # two interpreters that import torch, diffusers and PEFT
def test_importing_the_package_registers_its_methods_whoever_imports_peft(saved_adapter):
    """``PeftModel.from_pretrained`` of a saved adapter, without touching the package's names, when PEFT was imported
    before the package (registered at once) and when diffusers imports it halfway through its own modules after the
    package (registered by the import hook once diffusers' import is done)."""
    folder, expected = saved_adapter
    for order, imports in IMPORT_ORDERS.items():
        output_file = os.path.join(folder, f"{order.replace(' ', '_')}.pt")
        code = (
            f"{imports}import torch\nfrom peft import PeftModel\n"
            "from helpers.models import build_sd15_unet, sd15_inputs\n"
            f"model = PeftModel.from_pretrained(build_sd15_unet(), {folder!r})\n"
            "print(model.peft_config['default'].peft_type.value)\n"
            "with torch.no_grad():\n"
            f"    torch.save(model(**sd15_inputs()).sample, {output_file!r})\n"
        )
        result = _python(code)
        assert result.returncode == 0, f"{order}: {result.stderr[-3000:]}"
        assert result.stdout.split()[-1] == "MC_SVDIFF", order
        torch.testing.assert_close(torch.load(output_file), expected, msg=order)
