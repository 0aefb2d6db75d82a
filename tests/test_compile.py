"""torch.compile of the methods' three layer classes on the tiny SD-1.5 UNet (MemControl uses the same layers).

Each adapted UNet must compile to one graph (no graph break, no recompilation on a second call), the graph must not
decompose any weight (the SVD factors are computed when the adapter is created, not per call), and the compiled
outputs and adapter gradients must equal eager ones. The graphs run as traced (no code generation), which keeps the
tests fast on a CPU and checks exactly what Dynamo captured.
"""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from torch import nn

from peft_memcontrol import DiffFitConfig, MaskedAttentionConfig, SVDiffConfig

from helpers.models import build_sd15_unet, sd15_inputs


# PEFT's LoRA r=4, the reference, also compiles to one graph here (measured; not repeated in every test run), and
# MemControl adapts through these same layers (SVDiff's by default).
CONFIGS = {
    "svdiff": lambda: SVDiffConfig(init_weights=False),
    "difffit": lambda: DiffFitConfig(init_weights=False),
    "masked_attention": lambda: MaskedAttentionConfig(init_weights=False),
}
#: Operators that would mean a weight is decomposed inside the compiled graph.
DECOMPOSITIONS = ("svd", "eigh", "linalg")


class GraphRecorder:
    """A ``torch.compile`` backend that keeps every graph Dynamo captures and runs it as traced."""

    def __init__(self) -> None:
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, graph: torch.fx.GraphModule, example_inputs: list[torch.Tensor]):
        self.graphs.append(graph)
        return graph.forward

    def operators(self) -> set[str]:
        return {
            str(node.target)
            for graph in self.graphs
            for node in graph.graph.nodes
            if node.op in ("call_function", "call_method")
        }


def _sample_and_gradients(
    model: nn.Module, forward: nn.Module, inputs: dict
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``forward``'s output sample and the gradients of ``model``'s trainable parameters for a fixed scalar loss."""
    model.zero_grad(set_to_none=True)
    sample = forward(**inputs).sample
    sample.square().mean().backward()
    gradients = {
        name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.requires_grad
    }
    return sample.detach(), gradients


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_compiles_to_one_graph_that_matches_eager(method):
    torch._dynamo.reset()
    model = get_peft_model(build_sd15_unet(), CONFIGS[method]())
    inputs, other_inputs = sd15_inputs(seed=1), sd15_inputs(seed=2)
    eager_sample, eager_gradients = _sample_and_gradients(model, model, inputs)
    assert eager_gradients and all(gradient.abs().sum() > 0 for gradient in eager_gradients.values())

    recorder = GraphRecorder()
    compiled = torch.compile(model, backend=recorder, fullgraph=True)  # a graph break raises, naming its cause
    sample, gradients = _sample_and_gradients(model, compiled, inputs)
    other_sample = compiled(**other_inputs).sample.detach()  # same shapes and grad mode: no new graph

    assert len(recorder.graphs) == 1, f"{len(recorder.graphs)} graphs: the second call recompiled"
    decompositions = sorted(op for op in recorder.operators() if any(word in op for word in DECOMPOSITIONS))
    assert not decompositions, f"the compiled graph decomposes weights: {decompositions}"
    torch.testing.assert_close(sample, eager_sample, rtol=1e-5, atol=1e-5)
    for name, gradient in gradients.items():
        torch.testing.assert_close(gradient, eager_gradients[name], rtol=1e-5, atol=1e-5, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(other_sample, model(**other_inputs).sample, rtol=1e-5, atol=1e-5)
