"""Central evaluation of the global model: accuracy, loss, per-class precision and recall."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def metrics_from_confusion(cm: Tensor) -> dict[str, Any]:
    """Accuracy and per-class precision / recall from a confusion matrix.

    Parameters
    ----------
    cm : Tensor
        ``(k, k)`` counts, rows = true class, columns = predicted class.

    Returns
    -------
    dict
        ``accuracy``; ``per_class_recall`` and ``per_class_precision`` (lists
        indexed by class; a class never predicted has precision 0, a class
        absent from the test set has recall 0); ``confusion`` (nested list).
    """
    cm = cm.to(torch.float64)
    diag = cm.diagonal()
    true_counts = cm.sum(dim=1)
    predicted = cm.sum(dim=0)
    recall = torch.where(true_counts > 0, diag / true_counts.clamp(min=1), torch.zeros_like(diag))
    precision = torch.where(predicted > 0, diag / predicted.clamp(min=1), torch.zeros_like(diag))
    total = float(cm.sum())
    return {
        "accuracy": float(diag.sum()) / total if total else 0.0,
        "per_class_recall": [round(float(v), 6) for v in recall],
        "per_class_precision": [round(float(v), 6) for v in precision],
        "confusion": cm.to(torch.long).tolist(),
    }


def targeted_metrics(per_class_recall: list[float], source: int, target: int) -> dict[str, float]:
    """Tolpegin et al.'s attack metrics from per-class recall.

    ``source_recall`` (the main metric of a targeted label flip), ``target_recall``
    and ``other_recall``: the mean recall of every class but the source and the
    target, which should not move under a targeted attack.
    """
    others = [r for c, r in enumerate(per_class_recall) if c not in (source, target)]
    return {
        "source_recall": per_class_recall[source],
        "target_recall": per_class_recall[target],
        "other_recall": sum(others) / len(others) if others else 0.0,
    }


def detection_scores(
    participants: list[int], flagged: list[int], malicious: set[int], *, scored: bool = True
) -> dict[str, Any]:
    """Score a round's flagged set against the truth, among the replies the rule saw.

    Only a detecting rule that was active in a round that was not skipped is
    scored (``scored``); otherwise every field is ``None``, so a rule that does
    not detect (Krum, the median) never shows a TPR of 0.

    Returns ``tp``, ``fp``, ``fn``, ``tn``, ``tpr`` (share of the malicious
    participants flagged; ``None`` when none took part), ``fpr`` (share of the
    benign participants flagged; ``None`` when none took part) and
    ``precision`` (``None`` when nothing was flagged).
    """
    keys = ("tp", "fp", "fn", "tn", "tpr", "fpr", "precision")
    if not scored:
        return dict.fromkeys(keys)
    present = set(participants)
    bad = present & malicious
    good = present - malicious
    hit = set(flagged) & present
    tp, fp = len(hit & bad), len(hit & good)
    return {
        "tp": tp,
        "fp": fp,
        "fn": len(bad) - tp,
        "tn": len(good) - fp,
        "tpr": tp / len(bad) if bad else None,
        "fpr": fp / len(good) if good else None,
        "precision": tp / (tp + fp) if (tp + fp) else None,
    }
