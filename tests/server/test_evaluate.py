import pytest
import torch
from torch import nn

from common.data import SPECS
from common.training import confusion_matrix
from server.evaluate import detection_scores, metrics_from_confusion, targeted_metrics


def test_metrics_from_a_hand_computed_confusion_matrix():
    # rows: true class, columns: predicted
    cm = torch.tensor([[5, 1, 0], [2, 3, 1], [0, 0, 0]])
    m = metrics_from_confusion(cm)
    assert m["accuracy"] == pytest.approx(8 / 12)
    assert m["per_class_recall"] == pytest.approx([5 / 6, 3 / 6, 0.0])
    # class 2 predicted once, never right; class 0 predicted 7 times, 5 right
    assert m["per_class_precision"] == pytest.approx([5 / 7, 3 / 4, 0.0])
    assert m["confusion"] == cm.tolist()


class FixedPredictor(nn.Module):
    """Predicts the class stored in the first pixel (scaled back to an int)."""

    def forward(self, x):
        pred = (x[:, 0, 0, 0] * 255).round().long()
        return nn.functional.one_hot(pred, 10).float() * 10


def test_confusion_matrix_counts_true_against_predicted_in_batches():
    y = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 2, 0, 2])
    x = torch.zeros(7, 1, 28, 28, dtype=torch.uint8)
    x[:, 0, 0, 0] = predicted.to(torch.uint8)
    cm, loss = confusion_matrix(FixedPredictor(), x, y, spec=SPECS["fashion_mnist"], batch_size=3)
    expected = torch.zeros(10, 10, dtype=torch.long)
    for t, p in zip(y.tolist(), predicted.tolist(), strict=True):
        expected[t, p] += 1
    assert torch.equal(cm, expected)
    # logits are 10 on the predicted class, 0 elsewhere: CE = log(1 + 9 e^-10) when right, 10 + that when wrong
    right = torch.log1p(9 * torch.exp(torch.tensor(-10.0))).item()
    assert loss == pytest.approx((5 * right + 2 * (10 + right)) / 7, rel=1e-5)


def test_targeted_metrics_split_source_target_and_the_rest():
    recall = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.1, 0.3, 0.2, 1.0]
    m = targeted_metrics(recall, source=6, target=0)
    assert m == {"source_recall": 0.1, "target_recall": 0.9, "other_recall": pytest.approx(4.5 / 8)}


def test_detection_scores_count_only_the_rounds_participants():
    # participants 1..6; malicious overall {2, 5, 9}; flagged {2, 3, 9 (not a participant)}
    s = detection_scores([1, 2, 3, 4, 5, 6], [2, 3, 9], {2, 5, 9})
    assert s == {"tp": 1, "fp": 1, "fn": 1, "tn": 3, "tpr": 0.5, "fpr": 0.25, "precision": 0.5}
    none = detection_scores([1, 3], [], {2})
    assert none == {"tp": 0, "fp": 0, "fn": 0, "tn": 2, "tpr": None, "fpr": 0.0, "precision": None}


def test_rounds_that_are_not_scored_carry_no_detection_numbers():
    # a non-detecting rule, an inactive defense or a skipped round: never a TPR of 0
    s = detection_scores([1, 2, 3], [], {2}, scored=False)
    assert s == dict.fromkeys(("tp", "fp", "fn", "tn", "tpr", "fpr", "precision"))
