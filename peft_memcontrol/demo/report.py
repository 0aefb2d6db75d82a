"""The demo's report folder: results table (markdown and CSV), transfer table, nearest-neighbour picture, summary.

``results.md`` / ``results.csv``: one row per method on the main domain (the paper's Table 1 in miniature);
``transfer.md`` / ``transfer.csv``: the searched mask against full fine-tuning on the transfer domain;
``nearest.png``: for the most-copied memorized prompts, the training image beside each method's most repeated
generation (the extraction attack's representative) with its tiled-L2 distance;
``search/``: the search's front (``front.png`` is the Pareto-front plot), journal and chosen masks;
``summary.json``: everything above as JSON, with the config and the calibration of each domain.

Every table is followed by the calibration its thresholds came from (the copy threshold of replication and MiFID with
its false-positive and detection rates, and what the extraction threshold can see) and a verdict in words: does the
searched mask memorize less than full fine-tuning, and is it Pareto-dominated by any baseline?
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from typing import Any

from ..evaluation.pictures import nearest_picture
from ..evaluation.table import Column, markdown_table


#: Table columns: (key, header, format). ``time_s`` varies between runs; every other column is seeded.
COLUMNS: list[Column] = [
    ("method", "method", "{}"),
    ("trainable_share", "trainable share", "{:.3%}"),
    ("fid", "FID ↓", "{:.2f}"),
    ("kid", "KID ↓", "{:.4f}"),
    ("kid_se", "KID s.e.", "{:.4f}"),
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


def dominated_by(rows: Sequence[dict[str, Any]], name: str) -> list[str]:
    """The rows that Pareto-dominate row ``name`` on quality (KID, lower is better) and memorization (extracted,
    lower, and AMD, higher): no worse on all three and better on one."""
    by_name = {row["method"]: row for row in rows}
    mine = by_name[name]

    def no_worse(row: dict[str, Any]) -> bool:
        return row["kid"] <= mine["kid"] and row["extracted"] <= mine["extracted"] and row["amd"] >= mine["amd"]

    def better(row: dict[str, Any]) -> bool:
        return row["kid"] < mine["kid"] or row["extracted"] < mine["extracted"] or row["amd"] > mine["amd"]

    return [row["method"] for row in rows if row["method"] != name and no_worse(row) and better(row)]


def verdict(rows: Sequence[dict[str, Any]], searched: str, full: str = "full fine-tuning") -> str:
    """An honest verdict in words: does the searched mask memorize less than full fine-tuning, at what quality, and
    does any other row do better on both counts?"""
    by_name = {row["method"]: row for row in rows}
    if searched not in by_name or full not in by_name:
        return ""
    mine, base = by_name[searched], by_name[full]
    less = (mine["extracted"], -mine["amd"]) < (base["extracted"], -base["amd"])
    more = (mine["extracted"], -mine["amd"]) > (base["extracted"], -base["amd"])
    if less:
        head = f"{searched} memorizes less than {full}"
    elif more:
        head = f"{searched} does NOT memorize less than {full}: it memorizes more"
    else:
        head = f"{searched} does NOT memorize less than {full} (same extraction count and AMD)"
    gap = mine["kid"] - base["kid"]
    spread = (mine["kid_se"] ** 2 + base["kid_se"] ** 2) ** 0.5
    quality = "worse" if gap > 0 else "better"
    if abs(gap) <= 2 * spread:
        quality = "indistinguishable"
    text = (
        f"{head} (extracted {mine['extracted']} vs {base['extracted']}, AMD {mine['amd']:.4f} vs {base['amd']:.4f}), "
        f"at {quality} quality (KID {mine['kid']:.4f} ± {mine['kid_se']:.4f} vs {base['kid']:.4f} ± "
        f"{base['kid_se']:.4f}; FID {mine['fid']:.2f} vs {base['fid']:.2f}), training {mine['trainable_share']:.3%} "
        "of the UNet."
    )
    dominating = dominated_by(rows, searched)
    if dominating:
        return text + f" It is Pareto-dominated (KID, extracted, AMD) by: {', '.join(dominating)}."
    return text + " No other row is better on both quality (KID) and memorization (extracted, AMD)."


def calibration_lines(calibration: dict[str, Any] | None) -> list[str]:
    """The calibration's report lines as a markdown list (nothing when there is none)."""
    if not calibration:
        return []
    return [
        "Thresholds of this table, measured on its data:",
        "",
        *(f"- {line}" for line in calibration["description"]),
    ]


def fidelity_section(fidelity: dict[str, Any] | None) -> list[str]:
    """The report's proxy-fidelity section: the sampled masks' inner-loop and full scores, and the correlations."""
    if not fidelity:
        return []
    candidates = fidelity["candidates"]
    objectives = list(candidates[0]["proxy"]) if candidates else []
    header = [
        "searched mask",
        "role",
        *(f"inner `{name}`" for name in objectives),
        "full KID",
        "full AMD",
        "full extracted",
    ]
    lines = [
        "## Does the search's inner loop rank masks like the full fine-tune?",
        "",
        "The search ranks masks by a short training on a proxy set; these searched masks were also fine-tuned like "
        "every row above and scored the same way.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|---|" + "---:|" * (len(header) - 2),
    ]
    for row in candidates:
        proxy = [f"{row['proxy'][name]:.4f}" for name in objectives]
        full = [f"{row['full']['kid']:.4f}", f"{row['full']['amd']:.4f}", f"{row['full']['extracted']:d}"]
        lines.append("| " + " | ".join([row["key"], row["role"], *proxy, *full]) + " |")
    return [*lines, "", fidelity["markdown"], ""]


def write_report(
    output_dir: str,
    rows: list[dict[str, Any]],
    transfer_rows: list[dict[str, Any]],
    records: dict[str, list[dict[str, Any]]],
    config: dict[str, Any],
    search: dict[str, Any],
    searched: str,
    elapsed: float,
    calibrations: dict[str, dict[str, Any]] | None = None,
    fidelity: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Write every report file into ``output_dir``; returns their paths by name."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {
        "results.csv": write_csv(rows, os.path.join(output_dir, "results.csv")),
        "transfer.csv": write_csv(transfer_rows, os.path.join(output_dir, "transfer.csv")),
    }
    paths["nearest.png"] = nearest_picture(records, os.path.join(output_dir, "nearest.png"))
    calibrations = calibrations or {}
    main_verdict = verdict(rows, searched)
    transfer_verdict = verdict(transfer_rows, searched)
    main_calibration = calibration_lines(calibrations.get(config["domain"]))
    transfer_calibration = calibration_lines(calibrations.get(config["transfer_domain"]))
    text = [
        "# MemControl demo",
        "",
        f"Preset `{config['preset']}`, seed {config['seed']}, {elapsed:.0f} s in all. Fine-tuned on the "
        f"{config['domain']} ({config['num_memorization']} images duplicated {config['memorization_repeats']} times), "
        f"{config['max_train_steps']} steps of batch {config['train_batch_size']} per method. Arrows: which way is "
        "less memorization (AMD, extracted, flagged, replication, noise norm) or better quality (FID, KID). "
        "Training times vary between runs; every other number is seeded. FID on this many images is mostly bias; "
        "KID (unbiased, with its jackknife standard error) is the quality measure the verdict uses.",
        "",
        markdown_table(rows, COLUMNS),
        main_verdict,
        "",
        *main_calibration,
        "",
        f"Searched mask ({search['method']}, knee of the front, learning rate {search['learning_rate']:.3g}): "
        f"{search['units_on']} of {search['num_units']} units on: {', '.join(search['on']) or 'none'}.",
        "",
        f"## Transfer to {config['transfer_domain']} (mask unchanged)",
        "",
        markdown_table(transfer_rows, COLUMNS),
        transfer_verdict,
        "",
        *transfer_calibration,
        "",
        *fidelity_section(fidelity),
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
        handle.write(
            "\n".join([markdown_table(transfer_rows, COLUMNS), transfer_verdict, "", *transfer_calibration, ""])
        )
    paths["summary.json"] = os.path.join(output_dir, "summary.json")
    with open(paths["summary.json"], "w", encoding="utf-8") as handle:
        json.dump(
            {
                "results": rows,
                "transfer": transfer_rows,
                "search": search,
                "verdict": {"main": main_verdict, "transfer": transfer_verdict},
                "calibration": calibrations,
                "fidelity": fidelity,
                "config": config,
                "seconds": elapsed,
            },
            handle,
            indent=2,
        )
    return paths


#: Columns of the seeds table: (key, header); each is shown as mean ± standard deviation over the seeds.
SEED_COLUMNS = [
    ("kid", "KID ↓"),
    ("fid", "FID ↓"),
    ("amd", "AMD ↑"),
    ("extracted", "extracted ↓"),
    ("replication", "replication ↓"),
]


def _mean_and_spread(values: Sequence[float]) -> str:
    mean = sum(values) / len(values)
    spread = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return f"{mean:.4g} ± {spread:.2g}"


def seeds_verdict(per_seed: dict[int, list[dict[str, Any]]], searched: str, full: str = "full fine-tuning") -> str:
    """The verdict across seeds, in words: in how many seeds the searched mask memorizes less than full fine-tuning
    (extracted, then AMD) and in how many it is Pareto-dominated by another row (`dominated_by`)."""
    count = len(per_seed)
    less = dominated = copying = 0
    for rows in per_seed.values():
        by_name = {row["method"]: row for row in rows}
        mine, base = by_name[searched], by_name[full]
        less += (mine["extracted"], -mine["amd"]) < (base["extracted"], -base["amd"])
        dominated += bool(dominated_by(rows, searched))
        copying += base["extracted"] > 0
    text = (
        f"Across {count} seeds, {searched} memorizes less than {full} in {less} and is Pareto-dominated by another "
        f"row (KID, extracted, AMD) in {dominated}. {full.capitalize()} extracted a memorized image in {copying} of "
        f"the {count} seeds"
    )
    if copying < count:
        text += ": in the others the setting did not make it copy, and memorization is compared by AMD alone there"
    text += "."
    if dominated == count:
        text += " On this evidence the search does not earn its place here: a baseline is as good on both counts."
    elif dominated == 0 and less == count:
        text += " It is never dominated and always memorizes less than full fine-tuning."
    return text


def write_seeds_report(
    output_dir: str, summaries: dict[int, dict[str, Any]], searched: str, full: str = "full fine-tuning"
) -> dict[str, str]:
    """``results.md`` and ``summary.json`` of a run over several seeds: per method the mean ± standard deviation of
    each score, per seed whether the searched mask is dominated, and the verdict in words."""
    per_seed = {seed: summary["rows"] for seed, summary in summaries.items()}
    methods = [row["method"] for row in next(iter(per_seed.values()))]
    lines = [
        "# MemControl demo over seeds",
        "",
        f"Seeds {', '.join(map(str, summaries))}; each seed's full report is in `seed-<seed>/`. Mean ± standard "
        "deviation over the seeds:",
        "",
        "| method | " + " | ".join(header for _, header in SEED_COLUMNS) + " |",
        "|---|" + "---:|" * len(SEED_COLUMNS),
    ]
    for method in methods:
        rows = [next(row for row in seed_rows if row["method"] == method) for seed_rows in per_seed.values()]
        cells = [_mean_and_spread([float(row[key]) for row in rows]) for key, _ in SEED_COLUMNS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += ["", seeds_verdict(per_seed, searched, full), ""]
    for seed, rows in per_seed.items():
        dominating = dominated_by(rows, searched)
        status = f"dominated by {', '.join(dominating)}" if dominating else "not dominated"
        copied = next(row["extracted"] for row in rows if row["method"] == full)
        lines.append(f"- seed {seed}: {searched} {status}; {full} extracted {copied}.")
    os.makedirs(output_dir, exist_ok=True)
    paths = {
        "results.md": os.path.join(output_dir, "results.md"),
        "summary.json": os.path.join(output_dir, "summary.json"),
    }
    with open(paths["results.md"], "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    with open(paths["summary.json"], "w", encoding="utf-8") as handle:
        json.dump(
            {
                "seeds": {str(seed): summary for seed, summary in summaries.items()},
                "verdict": seeds_verdict(per_seed, searched, full),
            },
            handle,
            indent=2,
        )
    return paths
