import pytest
import torch
from torch import nn

from common.data import SPECS
from common.training import confusion_matrix
from server.evaluate import metrics_from_confusion


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
