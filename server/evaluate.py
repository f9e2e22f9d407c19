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
