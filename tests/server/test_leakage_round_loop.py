"""Gradient leakage in the round loop, on the fake Grid: what the server observes, inverts, scores and writes.

Real MNIST, the sigmoid LeNet and the real ClientApp handlers. The inversions
here are short (the algorithms' convergence is tested in
``tests/attacks/test_leakage.py``); iDLG's label rule is exact whatever the
iteration budget, so every label must be right.
"""

from __future__ import annotations

import json
import math

import pytest
from fake_grid import federate

LEAK = ["dataset=mnist", "model=lenet", "leakage=idlg", "leakage.iterations=15", "leakage.restarts=1",
        "client.batch_size=1", "federation.num_rounds=2", "client.channels_last=false"]  # fmt: skip


def test_per_step_gradients_are_captured_by_the_attacked_clients_only_and_inverted(tmp_path, mnist_root):
    lines, summary, grid = federate(
        tmp_path, *LEAK, "leakage.target=step", "leakage.rounds=[2]", "leakage.num_images=2", "leakage.clients=2",
        "client.local_steps=5",
    )  # fmt: skip
    assert lines[1]["leakage"] is None  # not a listed round
    entries = json.loads((tmp_path / "leakage.json").read_text())
    sampled = lines[2]["sampled"]
    assert {e["client"] for e in entries} == set(sorted(sampled)[:2])  # the two lowest client ids sampled
    assert [e["step"] for e in entries if e["client"] == entries[0]["client"]] == [0, 1]
    for e in entries:
        assert e["round"] == 2 and e["method"] == "idlg" and e["target"] == "step"
        assert e["label_correct"] is True and 0 <= e["mse"] <= 1 and -1 <= e["ssim"] <= 1
        assert e["psnr"] == pytest.approx(-10 * math.log10(e["mse"]), rel=1e-4)
    leak = lines[2]["leakage"]
    assert leak["images"] == 4 and leak["label_accuracy"] == 1.0
    assert summary["leakage"]["2"] == leak
    assert (tmp_path / "leakage_round_2.png").stat().st_size > 5_000
    # only the attacked clients were asked to capture, in the listed round only
    asked = [m for m in grid.sent if any(k.startswith("leakage-capture-steps/") for k in m.content["config"])]
    assert len(asked) == 2 and all(m.content["config"]["server-round"] == 2 for m in asked)


def test_the_shared_update_of_one_fedsgd_step_is_inverted_against_the_clients_shard(tmp_path, mnist_root):
    lines, _, _ = federate(
        tmp_path, *LEAK, "leakage.target=update", "leakage.rounds=[1,2]", "client.local_steps=1",
        "leakage.iterations=40", "leakage.restarts=3",
        "client.momentum=0", "client.keep_optimizer_state=false", "client.lr_step=0",
    )  # fmt: skip
    entries = json.loads((tmp_path / "leakage.json").read_text())
    assert [e["round"] for e in entries] == [1, 2] and all(e["step"] == -1 for e in entries)
    # one step on one image: the update is -lr x that image's gradient; iDLG rebuilds it, the closest image of
    # the shard is the one the client trained on, and its label is the one iDLG read off the output layer
    assert all(e["mse"] < 1e-3 and e["label_correct"] for e in entries), entries
    assert lines[1]["leakage"]["images"] == lines[2]["leakage"]["images"] == 1
