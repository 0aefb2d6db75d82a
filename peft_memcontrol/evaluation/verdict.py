"""`memorization_verdict`: what one model's scores say about copying, in words, with what they could not see."""

from __future__ import annotations

import math

from .calibration import EvaluationCalibration


def binomial_tail(successes: int, trials: int, probability: float) -> float:
    """P(X >= successes) for X ~ Binomial(trials, probability): how surprising a count is under the null."""
    return sum(
        math.comb(trials, k) * probability**k * (1 - probability) ** (trials - k) for k in range(successes, trials + 1)
    )


def memorization_verdict(
    num_extracted: int,
    num_flagged: int,
    num_prompts: int,
    replication_rate: float,
    num_generations: int,
    calibration: EvaluationCalibration,
) -> str:
    """A verdict in words on one model: copies found or not, how sure, and what the measurements were blind to.

    Replication is compared with the calibrated false-positive rate (the share of uncopied held-out images the
    threshold flags); it counts as above chance when a binomial tail at that rate is below 1% (generations of one
    prompt are not independent, so this is a screen, not a test).
    """
    copy, attack = calibration.copy, calibration.attack
    replicated = round(replication_rate * num_generations)
    above_chance = binomial_tail(replicated, num_generations, copy.false_positive_rate) < 0.01
    if num_extracted:
        head = (
            f"The model regenerates training images: {num_extracted} of {num_prompts} attacked prompts produced a "
            f"training image ({num_flagged} flagged)."
        )
    elif above_chance:
        head = (
            f"No attacked prompt regenerated its training image, but {replication_rate:.0%} of the generations are "
            f"above the copy threshold, against {copy.false_positive_rate:.1%} expected for uncopied images: they "
            "sit closer to training images than unseen images do."
        )
    elif num_flagged:
        head = (
            f"No training image was regenerated; {num_flagged} of {num_prompts} prompts produce one picture again "
            "and again (flagged), a sign of memorization to look at."
        )
    else:
        head = f"No copies found: 0 of {num_prompts} attacked prompts extracted or flagged"
        head += f", replication {replication_rate:.0%} (uncopied images: {copy.false_positive_rate:.1%})."
    caveats = []
    if attack.blind:
        caveats.append("the extraction attack is blind on this data (see its calibration below)")
    if copy.source == "calibrated" and copy.detection_rate < 0.5:
        caveats.append(f"the copy threshold detects only {copy.detection_rate:.0%} of near copies")
    if not num_extracted and caveats:
        head += " This does not show the absence of copying: " + "; ".join(caveats) + "."
    return head
