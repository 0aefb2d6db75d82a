"""The demo's verdicts: Pareto dominance of the searched mask, in one seed and across seeds, checked by brute force."""

from __future__ import annotations

import json
import random

from peft_memcontrol.demo.report import dominated_by, seeds_verdict, verdict, write_seeds_report


SEARCHED, FULL = "MemControl (searched mask)", "full fine-tuning"


def row(method, kid, extracted, amd, fid=100.0, replication=0.0):
    return {
        "method": method,
        "kid": kid,
        "kid_se": 0.01,
        "extracted": extracted,
        "amd": amd,
        "fid": fid,
        "replication": replication,
        "trainable_share": 0.004,
    }


def test_dominance_matches_a_brute_force_definition():
    rng = random.Random(0)
    for _ in range(200):
        names = [FULL, "SVDiff (all slots)", "DiffFit (all slots)", SEARCHED]
        rows = [row(n, rng.choice([0.1, 0.2, 0.3]), rng.choice([0, 1, 2]), rng.choice([0.2, 0.3])) for n in names]
        mine = rows[-1]
        expected = []
        for other in rows[:-1]:
            pairs = [
                (other["kid"], mine["kid"]),
                (other["extracted"], mine["extracted"]),
                (-other["amd"], -mine["amd"]),
            ]
            if all(a <= b for a, b in pairs) and any(a < b for a, b in pairs):
                expected.append(other["method"])
        assert dominated_by(rows, SEARCHED) == expected


def test_verdict_names_the_dominating_rows_and_quality_within_noise():
    rows = [row(FULL, 0.20, 2, 0.20), row("SVDiff (all slots)", 0.10, 0, 0.30), row(SEARCHED, 0.205, 0, 0.25)]
    text = verdict(rows, SEARCHED)
    assert text.startswith(f"{SEARCHED} memorizes less than {FULL}")
    assert "at indistinguishable quality" in text  # KID 0.205 vs 0.20, standard errors 0.01
    assert text.endswith("Pareto-dominated (KID, extracted, AMD) by: SVDiff (all slots).")


def test_seeds_report_aggregates_and_counts(tmp_path):
    per_seed = {
        0: [row(FULL, 0.20, 2, 0.20), row("SVDiff (all slots)", 0.10, 0, 0.30), row(SEARCHED, 0.25, 0, 0.25)],
        1: [row(FULL, 0.22, 1, 0.21), row("SVDiff (all slots)", 0.30, 0, 0.20), row(SEARCHED, 0.21, 0, 0.26)],
        2: [row(FULL, 0.22, 0, 0.21), row("SVDiff (all slots)", 0.30, 0, 0.20), row(SEARCHED, 0.21, 0, 0.26)],
    }
    text = seeds_verdict(per_seed, SEARCHED)
    assert "memorizes less than full fine-tuning in 3 and is Pareto-dominated by another row" in text
    assert "(KID, extracted, AMD) in 1." in text
    # a seed where full fine-tuning copies nothing says little about memorization: the verdict says so
    assert "Full fine-tuning extracted a memorized image in 2 of the 3 seeds: in the others" in text
    assert "Full fine-tuning extracted a memorized image in 2 of the 2 seeds." in seeds_verdict(
        {seed: per_seed[seed] for seed in (0, 1)}, SEARCHED
    )
    paths = write_seeds_report(str(tmp_path), {seed: {"rows": rows} for seed, rows in per_seed.items()}, SEARCHED)
    with open(paths["results.md"]) as handle:
        report = handle.read()
    kids = [0.25, 0.21, 0.21]
    mean = sum(kids) / 3
    spread = (sum((k - mean) ** 2 for k in kids) / 2) ** 0.5  # n - 1 = 2
    assert f"| {SEARCHED} | {mean:.4g} ± {spread:.2g} |" in report
    assert (
        "- seed 0: MemControl (searched mask) dominated by SVDiff (all slots); full fine-tuning extracted 2." in report
    )
    assert "- seed 1: MemControl (searched mask) not dominated; full fine-tuning extracted 1." in report
    assert "- seed 2: MemControl (searched mask) not dominated; full fine-tuning extracted 0." in report
    with open(paths["summary.json"]) as handle:
        assert json.load(handle)["verdict"] == text
