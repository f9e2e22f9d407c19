"""The simulation engine (Flower's simulation SuperLink, ``flwr run``) against the round loop run in this process.

``poisonlab.run`` drives a real simulation: a ``flower-superlink --simulation``
that poisonlab starts and stops, the run submitted with ``flwr run``, the
ServerApp and the Ray ClientApps in Flower's simulation process. With the same
seed it must give the same rounds as the ServerApp's round loop run here on the
fake Grid with the same ClientApp handlers (what the engine ran in-process
before it took Flower's supported path): same clients sampled, same accuracy,
same final model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import poisonlab
from scripts.flower_run import marked_processes
from tests.server.fake_grid import SMALL, federate, final_model, lines_of

OVERRIDES = [*SMALL, "attack=sign_flip", "attack.num_malicious=1", "seed=5"]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory, fmnist_root):
    folder = tmp_path_factory.mktemp("api")
    return poisonlab.run(OVERRIDES, folder=folder)


def test_the_python_api_returns_the_summary_and_folder(simulated):
    assert simulated["status"] == "complete" and simulated["rounds_completed"] == 2
    folder = Path(simulated["folder"])
    lines = lines_of(folder)
    assert simulated["final_accuracy"] == lines[-1]["accuracy"]
    assert "attack=sign_flip" in (folder / ".hydra" / "overrides.yaml").read_text()
    assert "Starting Flower Simulation" in (folder / "run.log").read_text()


def test_the_simulation_engine_gives_the_in_process_round_loops_numbers(simulated, tmp_path):
    engine_lines = lines_of(Path(simulated["folder"]))
    local_lines, _, _ = federate(tmp_path, "attack=sign_flip", "attack.num_malicious=1", "seed=5")
    assert [r["round"] for r in engine_lines] == [0, 1, 2]
    for ours, ref in zip(engine_lines, local_lines, strict=True):
        assert ours.get("sampled") == ref.get("sampled")
        assert ours.get("malicious_in_round") == ref.get("malicious_in_round")
        assert ours["accuracy"] == ref["accuracy"]
        assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    ours_model, ref_model = final_model(Path(simulated["folder"])), final_model(tmp_path)
    for name, tensor in ref_model.items():
        torch.testing.assert_close(ours_model[name], tensor, rtol=1e-5, atol=1e-6)


def test_no_process_of_the_run_is_left(simulated):
    home = Path(simulated["folder"]) / "flower" / "home"
    assert marked_processes("FLWR_HOME", str(home)) == []  # every process of the run inherited FLWR_HOME


def test_a_bad_override_raises_the_command_lines_config_error_before_anything_starts(tmp_path):
    with pytest.raises(poisonlab.ConfigError, match="federation.num_rounds must be >= 1"):
        poisonlab.run(["federation.num_rounds=0"], folder=tmp_path / "run")
    with pytest.raises(poisonlab.ConfigError, match="Could not find 'strategy/nope'"):
        poisonlab.run(["strategy=nope"], folder=tmp_path / "run")
    assert not (tmp_path / "run").exists()
