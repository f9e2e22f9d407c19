"""TensorBoard event files of a run (``output.tensorboard=true``), read back with TensorBoard's own reader."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from fake_grid import federate, make_run, scaled
from flwr.app import Error
from flwr.common.constant import ErrorCode
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.util import tensor_util

from scripts.config import ConfigError
from server.tensorboard_log import TensorBoardLog

FMNIST = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def series(acc: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def expected(lines, key, *, rounds_from=0):
    """``(round, value)`` of every line from ``rounds_from`` on whose ``key`` is a finite number."""
    return [
        (x["round"], x[key])
        for x in lines
        if x["round"] >= rounds_from and isinstance(x.get(key), int | float) and math.isfinite(x[key])
    ]


def assert_series(acc, tag, want):
    got = series(acc, tag)
    assert [s for s, _ in got] == [s for s, _ in want], tag
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6, abs=1e-7), tag


PCA = ["strategy=pca_detect", "strategy.start_round=1", "strategy.min_rows=4"]


def test_every_round_s_scalars_equal_metrics_jsonl(tmp_path, fmnist_root):
    lines, _, _ = federate(tmp_path, "output.tensorboard=true", "attack=label_flip", "attack.num_malicious=1",
                           *PCA, "federation.num_rounds=3")  # fmt: skip
    acc = events(tmp_path)
    rounds = [0, 1, 2, 3]
    assert [x["round"] for x in lines] == rounds
    for tag, key in {
        "test/accuracy": "accuracy",
        "test/loss": "loss",
        "attack/source_recall": "source_recall",
        "attack/target_recall": "target_recall",
        "attack/other_recall": "other_recall",
    }.items():
        assert [s for s, _ in series(acc, tag)] == rounds, tag  # one per round, the initial model's too
        assert_series(acc, tag, expected(lines, key))
    assert_series(acc, "train/loss", expected(lines, "train_loss", rounds_from=1))
    assert_series(acc, "time/seconds_per_round", expected(lines, "seconds", rounds_from=1))
    for key in ("tpr", "fpr", "precision"):  # only where the round's detection was scored
        assert_series(acc, f"detection/{key}", expected(lines, key))
    assert [s for s, _ in series(acc, "detection/fpr")] == [1, 2, 3]
    for key in ("flagged", "excluded", "rejected", "failed", "withheld"):
        assert_series(acc, f"clients/{key}", [(x["round"], len(x[key])) for x in lines[1:]])
    # per-class recall, one tag per class, named after Fashion-MNIST's classes
    for c, name in enumerate(FMNIST):
        assert_series(acc, f"per_class_recall/{name}", [(x["round"], x["per_class_recall"][c]) for x in lines])
    assert not any(t.startswith(("privacy/", "leakage/", "attack/asr")) for t in acc.Tags()["scalars"])
    (text,) = acc.Tensors("run/text_summary")
    description = text.tensor_proto.string_val[0].decode()
    assert "dataset: fashion_mnist" in description and "attack: label_flip (source Shirt -> target T-shirt/top)" in (
        description
    )


def test_diverged_rounds_write_no_score_and_counts_stay_real(tmp_path, fmnist_root):
    # round 1: client 3 crashes, the others reply the trained model times 1e30 (finite rows, non-finite logits);
    # round 2: every client trains from that model to NaN, all four replies are rejected and the round skipped
    crash = Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "<class 'ValueError'>:<'the batch is empty'>")
    lines, _, _ = federate(tmp_path, "output.tensorboard=true", "evaluation.on_divergence=continue",
                           "strategy.on_failure=skip", plan={(1, 3): crash, (1, None): scaled(1e30)})  # fmt: skip
    assert [x["diverged"] for x in lines] == [False, True, True]
    acc = events(tmp_path)
    assert_series(acc, "test/accuracy", [(0, lines[0]["accuracy"])])  # nothing for the diverged rounds, no 0
    assert_series(acc, "test/loss", [(0, lines[0]["loss"])])
    assert [s for s, _ in series(acc, "per_class_recall/Shirt")] == [0]
    assert_series(acc, "clients/failed", [(1, 1), (2, 0)])
    assert_series(acc, "clients/rejected", [(1, 0), (2, 4)])
    assert_series(acc, "train/loss", expected(lines, "train_loss", rounds_from=1))
    assert [s for s, _ in series(acc, "time/seconds_per_round")] == [1, 2]
    assert lines[1]["failed"] == {"3": "ValueError: the batch is empty"}


def test_a_sweep_shows_each_job_as_its_own_run(tmp_path):
    sweep = tmp_path / "multirun" / "2026-01-01" / "10-00-00"
    for job, accuracy in (("0", 0.25), ("1", 0.75)):
        log = TensorBoardLog(sweep / job, class_names=("a", "b"))
        log.write({"round": 0, "accuracy": accuracy, "per_class_recall": [1.0, None]})
        log.close()
    # what `tensorboard --logdir multirun/<sweep>` loads: one run per folder holding event files
    mux = EventMultiplexer()
    mux.AddRunsFromDirectory(str(sweep))
    mux.Reload()
    assert sorted(mux.Runs()) == ["0/tensorboard", "1/tensorboard"]
    assert [float(tensor_util.make_ndarray(e.tensor_proto)) for e in mux.Tensors("1/tensorboard", "test/accuracy")] == [
        0.75
    ]
    tags = mux.Runs()["0/tensorboard"]["tensors"]
    assert "per_class_recall/a" in tags and "per_class_recall/b" not in tags  # a null recall is not written


def test_a_missing_tensorboard_package_fails_validation_with_the_install_command(tmp_path, fmnist_root, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError
    monkeypatch.delitem(sys.modules, "torch.utils.tensorboard", raising=False)
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[tensorboard\]"'):
        make_run(tmp_path, "output.tensorboard=true")
    make_run(tmp_path, "output.tensorboard=false")  # not needed when off
