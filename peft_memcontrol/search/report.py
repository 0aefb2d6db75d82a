"""What a search leaves on disk: the front (CSV and JSON), hypervolume per generation (CSV), a Pareto-front plot and a
hypervolume curve (PNG, with matplotlib), and the chosen masks as `MemControlConfig` folders; optionally a chosen mask
pushed to the Hub with the front in its model card.
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import HfApi

from .journal import atomic_write_json
from .result import FrontPoint, SearchResult


logger = logging.getLogger(__name__)


def _front_rows(result: SearchResult) -> list[dict[str, Any]]:
    rows = []
    for point in result.front:
        candidate = point.candidate
        row: dict[str, Any] = dict(point.scores)
        row["learning_rate"] = candidate.learning_rate
        row["genome"] = "".join(str(bit) for bit in candidate.bits)
        row["units_on"] = {method: [u for u, on in mask.items() if on] for method, mask in candidate.masks.items()}
        row["generation"] = point.record.get("generation")
        row["key"] = candidate.key
        rows.append(row)
    return rows


def write_front(result: SearchResult, output_dir: str) -> dict[str, str]:
    """``front.csv``, ``front.json`` and ``hypervolume.csv`` in ``output_dir``; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    rows = _front_rows(result)
    paths = {name: os.path.join(output_dir, name) for name in ("front.csv", "front.json", "hypervolume.csv")}
    columns = [*result.objectives, "learning_rate", "genome", "generation", "units_on"]
    with open(paths["front.csv"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "units_on": ";".join(f"{m}:{'+'.join(u)}" for m, u in row["units_on"].items())})
    atomic_write_json(
        paths["front.json"],
        {
            "objectives": result.objectives,
            "reference_point": result.reference_point,
            "hypervolume": result.hypervolume,
            "warnings": result.separation_warnings(),
            "references": result.references.to_dict() if result.references is not None else None,
            "units": list(result.space.units),
            "front": [
                {**row, "masks": point.candidate.masks, "genome": list(point.candidate.genome)}
                for row, point in zip(rows, result.front)
            ],
        },
    )
    with open(paths["hypervolume.csv"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["generation", "hypervolume", "evaluations", "cost", "seconds"])
        writer.writeheader()
        writer.writerows(result.history)
    return paths


def reference_records(result: SearchResult) -> dict[str, dict[str, Any]]:
    """The successful full-budget evaluations of the all-on and all-off masks, when the search ran them, by label."""
    found = {}
    for record in result.records:
        if record["status"] != "ok" or record["budget"] != 1.0:
            continue
        bits = record["genome"][: result.space.num_unit_genes]
        if all(bits):
            found.setdefault("all on", record)
        elif not any(bits):
            found.setdefault("all off", record)
    return found


def _plot_references(axes: Any, result: SearchResult, x: int, y: int) -> None:
    """The base model's point, and the knee's runs with error bars of one standard deviation of the noise."""
    references = result.references
    if references is None:
        return
    if references.base_model is not None:
        point = [references.base_model[result.objectives[x]], references.base_model[result.objectives[y]]]
        axes.scatter([point[0]], [point[1]], marker="*", s=80, color="C2", label="base model (not fine-tuned)")
    if len(references.runs) > 1:
        noise = references.noise()
        axes.scatter([run[x] for run in references.runs], [run[y] for run in references.runs], s=12, color="C1")
        axes.errorbar(
            [references.runs[0][x]],
            [references.runs[0][y]],
            xerr=[noise[result.objectives[x]]],
            yerr=[noise[result.objectives[y]]],
            color="C1",
            capsize=3,
            label=f"knee: {len(references.runs)} runs, noise s.d.",
        )


def plot_search(
    result: SearchResult, output_dir: str, fully_trained: Sequence[Mapping[str, float]] = ()
) -> dict[str, str]:
    """``front.png`` (every full-budget evaluation, the front highlighted, the base model and the knee's repeated runs
    when measured, and ringed, the candidates in ``fully_trained`` (their search scores by objective): those the
    proxy-fidelity check fine-tuned fully; first two objectives) and ``hypervolume.png``. Needs matplotlib
    (``pip install "peft-memcontrol[plots]"``)."""
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError('Plots need matplotlib: pip install "peft-memcontrol[plots]".') from error
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    x_name, y_name = result.objectives[0], result.objectives[min(1, len(result.objectives) - 1)]
    index = {name: i for i, name in enumerate(result.objectives)}
    evaluated = result.evaluated_values()
    paths = {name: os.path.join(output_dir, name) for name in ("front.png", "hypervolume.png")}
    figure, axes = plt.subplots(figsize=(5, 4))
    if evaluated:
        axes.scatter([v[index[x_name]] for v in evaluated], [v[index[y_name]] for v in evaluated], s=10, c="0.7")
    front = sorted(result.front, key=lambda p: p.scores[x_name])
    axes.plot([p.scores[x_name] for p in front], [p.scores[y_name] for p in front], "o-", color="C3", label="front")
    for label, record in reference_records(result).items():
        values = record["values"]
        axes.scatter([values[index[x_name]]], [values[index[y_name]]], marker="s", s=40, color="C0")
        axes.annotate(
            label,
            (values[index[x_name]], values[index[y_name]]),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    _plot_references(axes, result, index[x_name], index[y_name])
    if fully_trained:
        axes.scatter(
            [scores[x_name] for scores in fully_trained],
            [scores[y_name] for scores in fully_trained],
            s=110,
            facecolors="none",
            edgecolors="C4",
            linewidths=1.5,
            label=f"fully fine-tuned ({len(fully_trained)}, proxy fidelity)",
        )
    if result.separation_warnings():
        axes.set_title("objectives barely differ: no trade-off shown", fontsize=8, color="C3")
    axes.set_xlabel(f"{x_name} (lower is better)")
    axes.set_ylabel(f"{y_name} (lower is better)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(paths["front.png"], dpi=120)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(5, 3.5))
    axes.plot([h["cost"] for h in result.history], [h["hypervolume"] for h in result.history], "o-")
    axes.set_xlabel("cost (full-budget evaluations)")
    axes.set_ylabel("hypervolume")
    figure.tight_layout()
    figure.savefig(paths["hypervolume.png"], dpi=120)
    plt.close(figure)
    return paths


def choose_masks(
    result: SearchResult,
    max_quality: float | None = None,
    max_memorization: float | None = None,
) -> dict[str, FrontPoint]:
    """The knee, and, when bounds are given, the least-memorizing mask with quality <= ``max_quality`` and the
    best-quality mask with memorization <= ``max_memorization`` (first objective = memorization, second = quality).
    """
    if not result.front:
        return {}
    chosen = {"knee": result.knee()}
    if len(result.objectives) >= 2:
        if max_quality is not None and (point := result.least_memorization(max_quality)) is not None:
            chosen["least_memorization"] = point
        if max_memorization is not None and (point := result.best_quality(max_memorization)) is not None:
            chosen["best_quality"] = point
    return chosen


def save_chosen(result: SearchResult, chosen: dict[str, FrontPoint], output_dir: str) -> dict[str, str]:
    """Each chosen mask as a `MemControlConfig` folder (``adapter_config.json`` and model card) under
    ``output_dir/chosen/<name>``: load with ``PeftConfig.from_pretrained`` and pass to ``get_peft_model``."""
    folders = {}
    for name, point in chosen.items():
        if len(point.candidate.masks) != 1:
            logger.warning("Chosen mask %r mixes methods; it is kept in front.json only.", name)
            continue
        folder = os.path.join(output_dir, "chosen", name)
        result.to_config(point, chosen=name).save_pretrained(folder)
        folders[name] = folder
    return folders


def front_card_section(result: SearchResult) -> str:
    """Markdown: the search's front as a table, for a model card."""
    header = "| " + " | ".join([*result.objectives, "learning rate", "units on"]) + " |"
    lines = [header, "|" + "---|" * (len(result.objectives) + 2)]
    for point in result.front:
        on = sum(sum(mask.values()) for mask in point.candidate.masks.values())
        lr = f"{point.candidate.learning_rate:.3g}" if point.candidate.learning_rate else "-"
        values = [f"{point.scores[name]:.5g}" for name in result.objectives]
        lines.append("| " + " | ".join([*values, lr, str(on)]) + " |")
    return "## Pareto front of the mask search\n\n" + "\n".join(lines) + "\n"


def draw_plots(
    result: SearchResult, output_dir: str, fully_trained: Sequence[Mapping[str, float]] = ()
) -> dict[str, str]:
    """`plot_search`, or a warning and no plots without matplotlib (the search's other outputs do not need it)."""
    try:
        return plot_search(result, output_dir, fully_trained)
    except ImportError as error:
        logger.warning("%s Skipping the plots.", error)
        return {}


def write_search_outputs(
    result: SearchResult,
    output_dir: str,
    max_quality: float | None = None,
    max_memorization: float | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Everything a search leaves: front files, plots (skipped with a warning without matplotlib), chosen masks.
    Objectives that do not separate the candidates are warned about (logged, and in ``front.json``)."""
    for warning in result.separation_warnings():
        logger.warning(warning)
    paths: dict[str, Any] = write_front(result, output_dir)
    if plots:
        paths.update(draw_plots(result, output_dir))
    paths["chosen"] = save_chosen(result, choose_masks(result, max_quality, max_memorization), output_dir)
    return paths


def push_mask_to_hub(
    result: SearchResult,
    point: FrontPoint,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
) -> str:
    """Upload a chosen mask's `MemControlConfig` with a model card that shows the whole front; returns the commit URL.

    The repository then holds a mask, not trained weights: ``PeftConfig.from_pretrained(repo_id)`` gives the config
    to fine-tune with (``get_peft_model(unet, config)``).
    """
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as folder:
        write_mask_card(result, point, folder)
        info = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload MemControl mask")
    return str(info)


def write_mask_card(result: SearchResult, point: FrontPoint, folder: str) -> str:
    """Write the point's config and a model card with the front into ``folder`` (what `push_mask_to_hub` uploads)."""
    result.to_config(point).save_pretrained(folder)
    readme = os.path.join(folder, "README.md")
    with open(readme, encoding="utf-8") as handle:
        text = handle.read()
    with open(readme, "w", encoding="utf-8") as handle:
        handle.write(text.rstrip() + "\n\n" + front_card_section(result))
    return readme
