"""The ``dp`` and ``leakage`` groups: what they build and the errors bad input gets, before anything starts."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module
from torch import nn

from common.dp_training import dp_compatible
from scripts.build import build_run
from scripts.config import ConfigError
from strategies.central_dp import CentralDP
from strategies.rules.median import Median


def build(*overrides: str):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return build_run(compose("config", overrides=list(overrides)))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dp=opacus", "dp.noise_multiplier=-1"], "noise_multiplier (sigma) must be >= 0, got -1.0"),
        (["dp=opacus", "dp.max_grad_norm=0"], "max_grad_norm (C) must be > 0, got 0.0"),
        (["dp=opacus", "dp.delta=1.5"], "delta must be in (0, 1), got 1.5"),
        (["dp=opacus", "dp.delta=0"], "delta must be in (0, 1), got 0.0"),
        (["dp=opacus", "dp.schedule=linear", "dp.noise_end=3"], "noise_end=3.0 must be in (0, noise_multiplier=1.0]"),
        (["dp=opacus", "dp.schedule=sawtooth"], "schedule='sawtooth' is unknown"),
        (["dp=opacus", "dp.grad_sample_mode=ew"], "use dp.grad_sample_mode=hooks"),
        (["dp=opacus", "+dp.clipping_norm=1"], "unknown key(s) ['clipping_norm'] in dp (dp=opacus)"),
        (["dp=opacus", "model._target_=torch.nn.Identity"], "has no trainable parameter"),
        (["dp=central_fixed", "dp.clipping_norm=0"], "clipping_norm must be in (0, inf"),
        (["dp=central_fixed", "dp.delta=2"], "delta"),
        (["dp=central_adaptive", "dp.noise_multiplier=0.5"], "raise clipped_count_stddev"),
        (["leakage=idlg", "leakage.rounds=[25]"], "lists round(s) [25] outside 1..federation.num_rounds=20"),
        (["leakage=idlg", "leakage.rounds=[]"], "leakage.rounds must be a non-empty list"),
        (["leakage=dlg", "leakage.target=wire"], "leakage.target='wire'"),
        (["leakage=dlg", "leakage.clients=6"], "leakage.clients=6 must be between 1 and"),
        (["leakage=dlg", "leakage.method=gradinversion"], "leakage.method='gradinversion' is unknown"),
        (["leakage=idlg", "leakage.iterations=abc"], "leakage.iterations must be an integer, got 'abc'"),
        (["leakage=idlg", "+leakage.steps=3"], "unknown key(s) ['steps'] in leakage"),
    ],
)
def test_bad_privacy_and_leakage_input_is_named_in_the_error(overrides, message, fmnist_root):
    with pytest.raises(ConfigError) as err:
        build(*overrides)
    assert message in str(err.value)


def test_opacus_runs_build_groupnorm_models_and_the_clients_schedule(fmnist_root):
    run = build("dp=opacus", "dp.schedule=staircase", "dp.noise_multiplier=4", "dp.noise_end=1", "dp.step_every=5")
    assert run.dp_sgd.schedule.horizon == 20 and run.dp_sgd.schedule.sigma(1) == 4.0
    assert run.dp_sgd.schedule.sigma(20) == pytest.approx(1.0) and run.central_dp is None
    for model in (run.new_model(), run.new_model(seed=0)):
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert "layer1.1.running_var" not in run.codec.layout.names + run.codec.buffer_names


def test_central_dp_wraps_the_configured_rule(fmnist_root):
    run = build("dp=central_fixed", "strategy=median")
    assert isinstance(run.rule, CentralDP) and run.dp_sgd is None
    plain = build("strategy=median")
    assert isinstance(plain.rule, Median) and any(isinstance(m, nn.BatchNorm2d) for m in plain.new_model().modules())


def test_leakage_settings_default_to_the_run(fmnist_root):
    run = build("leakage=idlg", "leakage.rounds=[3,1,3]", "leakage.target=step", "leakage.num_images=10")
    assert run.leakage.rounds == (1, 3) and run.leakage.target == "step" and run.leakage.num_images == 10
    assert build().leakage is None


class InPlaceOnALinearOutput(nn.Module):
    """Adds in place to a hooked layer's output: Opacus' hooks refuse it, static validation does not see it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x.flatten(1))
        out += 1.0
        return out


def test_a_model_opacus_cannot_train_is_refused_by_a_trial_step():
    with pytest.raises(ValueError, match="a trial DP-SGD step failed"):
        dp_compatible(InPlaceOnALinearOutput(), (1, 28, 28))
    dp_compatible(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), (1, 28, 28))  # a plain one passes


def test_match_noise_finds_the_constant_sigma_of_the_same_epsilon(capsys):
    from common.privacy import NoiseSchedule
    from scripts.match_noise import main, matched_constant_sigma, schedule_epsilon

    decaying = NoiseSchedule(kind="linear", start=2.0, end=0.7, horizon=10)
    target = schedule_epsilon(decaying, 0.05, 20, 10, 1e-5)
    sigma = matched_constant_sigma(target, 0.05, 20, 10, 1e-5)
    assert 0.7 < sigma < 2.0
    assert schedule_epsilon(NoiseSchedule(start=sigma), 0.05, 20, 10, 1e-5) == pytest.approx(target, rel=1e-4)
    main(["--schedule", "linear", "--start", "2.0", "--end", "0.7", "--rounds", "10", "--sample-rate", "0.05",
          "--steps", "20"])  # fmt: skip
    assert f"constant sigma {sigma:.4f}" in capsys.readouterr().out
