"""The demo's report folder: results table (markdown and CSV), transfer table, nearest-neighbour picture, summary.

``results.md`` / ``results.csv``: one row per method on the main domain (the paper's Table 1 in miniature);
``transfer.md`` / ``transfer.csv``: the searched mask against full fine-tuning on the transfer domain;
``nearest.png``: for the most-copied memorized prompts, the training image beside each method's most repeated
generation (the extraction attack's representative) with its tiled-L2 distance;
``search/``: the search's front (``front.png`` is the Pareto-front plot), journal and chosen masks;
``summary.json``: everything above as JSON, with the config.
"""

from __future__ import annotations

import csv
import json
import os
import textwrap
from collections.abc import Sequence
from typing import Any

from ..evaluation.table import Column, markdown_table


#: Table columns: (key, header, format). ``time_s`` varies between runs; every other column is seeded.
COLUMNS: list[Column] = [
    ("method", "method", "{}"),
    ("trainable_share", "trainable share", "{:.3%}"),
    ("fid", "FID ↓", "{:.2f}"),
    ("amd", "AMD ↑", "{:.4f}"),
    ("extracted", "extracted ↓", "{:d}"),
    ("flagged", "flagged ↓", "{:d}"),
    ("replication", "replication ↓", "{:.2f}"),
    ("noise_norm", "noise norm ↓", "{:.4f}"),
    ("time_s", "train time (s)", "{:.0f}"),
]


def write_csv(rows: Sequence[dict[str, Any]], path: str) -> str:
    """Rows as CSV, every scalar column (full precision)."""
    columns = list(rows[0].keys()) if rows else [key for key, _, _ in COLUMNS]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def nearest_picture(
    records: dict[str, list[dict[str, Any]]], path: str, num_prompts: int = 4, reference: str | None = None
) -> str:
    """Draw, for the ``num_prompts`` memorized prompts that ``reference`` (default: the first method) copies most
    closely, the training image nearest to its generation and every method's representative generation for that
    prompt, labelled with its distance to the nearest memorized image (red: counted as extracted)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    methods = list(records)
    reference = reference or methods[0]
    order = sorted(range(len(records[reference])), key=lambda i: records[reference][i]["distance"])[:num_prompts]
    columns = 1 + len(methods)
    figure, axes = plt.subplots(len(order), columns, figsize=(1.3 * columns, 1.55 * len(order) + 0.5), squeeze=False)
    for row, index in enumerate(order):
        training = records[reference][index]["training"]
        panels = [("nearest training image", training, None)]
        panels += [(name, records[name][index]["generation"], records[name][index]) for name in methods]
        for column, (name, image, record) in enumerate(panels):
            axis = axes[row][column]
            axis.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(textwrap.fill(name, 16), fontsize=7)
            if record is not None:
                label = f"d={record['distance']:.2f}" + (" copy" if record["extracted"] else "")
                axis.set_xlabel(label, fontsize=7, color="C3" if record["extracted"] else "black")
            else:
                axis.set_xlabel(textwrap.fill(records[reference][index]["prompt"], 22), fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def verdict(rows: Sequence[dict[str, Any]], searched: str, full: str = "full fine-tuning") -> str:
    """One honest sentence: does the searched mask memorize less than full fine-tuning, and at what quality?"""
    by_name = {row["method"]: row for row in rows}
    if searched not in by_name or full not in by_name:
        return ""
    mine, base = by_name[searched], by_name[full]
    less = (mine["extracted"], -mine["amd"]) < (base["extracted"], -base["amd"])
    more = (mine["extracted"], -mine["amd"]) > (base["extracted"], -base["amd"])
    fid_word = "better" if mine["fid"] < base["fid"] else "worse"
    if less:
        head = f"{searched} memorizes less than {full}"
    elif more:
        head = f"{searched} does NOT memorize less than {full}: it memorizes more"
    else:
        head = f"{searched} does NOT memorize less than {full} (same extraction count and AMD)"
    return (
        f"{head} (extracted {mine['extracted']} vs {base['extracted']}, AMD {mine['amd']:.4f} vs {base['amd']:.4f}), "
        f"at {fid_word} FID ({mine['fid']:.2f} vs {base['fid']:.2f}), training {mine['trainable_share']:.3%} of "
        "the UNet."
    )


def write_report(
    output_dir: str,
    rows: list[dict[str, Any]],
    transfer_rows: list[dict[str, Any]],
    records: dict[str, list[dict[str, Any]]],
    config: dict[str, Any],
    search: dict[str, Any],
    searched: str,
    elapsed: float,
) -> dict[str, str]:
    """Write every report file into ``output_dir``; returns their paths by name."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {
        "results.csv": write_csv(rows, os.path.join(output_dir, "results.csv")),
        "transfer.csv": write_csv(transfer_rows, os.path.join(output_dir, "transfer.csv")),
    }
    paths["nearest.png"] = nearest_picture(records, os.path.join(output_dir, "nearest.png"))
    main_verdict = verdict(rows, searched)
    transfer_verdict = verdict(transfer_rows, searched)
    text = [
        "# MemControl demo",
        "",
        f"Preset `{config['preset']}`, seed {config['seed']}, {elapsed:.0f} s in all. Fine-tuned on the "
        f"{config['domain']} ({config['num_memorization']} images duplicated {config['memorization_repeats']} times), "
        f"{config['max_train_steps']} steps of batch {config['train_batch_size']} per method. Arrows: which way is "
        "less memorization (AMD, extracted, flagged, replication, noise norm) or better quality (FID). "
        "Training times vary between runs; every other number is seeded.",
        "",
        markdown_table(rows, COLUMNS),
        main_verdict,
        "",
        f"Searched mask ({search['method']}, knee of the front, learning rate {search['learning_rate']:.3g}): "
        f"{search['units_on']} of {search['num_units']} units on: {', '.join(search['on']) or 'none'}.",
        "",
        f"## Transfer to {config['transfer_domain']} (mask unchanged)",
        "",
        markdown_table(transfer_rows, COLUMNS),
        transfer_verdict,
        "",
        "## Pictures",
        "",
        "![nearest](nearest.png)",
        "",
        "![front](search/front.png)",
        "",
    ]
    paths["results.md"] = os.path.join(output_dir, "results.md")
    with open(paths["results.md"], "w", encoding="utf-8") as handle:
        handle.write("\n".join(text))
    paths["transfer.md"] = os.path.join(output_dir, "transfer.md")
    with open(paths["transfer.md"], "w", encoding="utf-8") as handle:
        handle.write(markdown_table(transfer_rows, COLUMNS) + "\n" + transfer_verdict + "\n")
    paths["summary.json"] = os.path.join(output_dir, "summary.json")
    with open(paths["summary.json"], "w", encoding="utf-8") as handle:
        json.dump(
            {
                "results": rows,
                "transfer": transfer_rows,
                "search": search,
                "verdict": {"main": main_verdict, "transfer": transfer_verdict},
                "config": config,
                "seconds": elapsed,
            },
            handle,
            indent=2,
        )
    return paths
