"""``attack.knowledge``: validated before anything starts, carried to the ServerApp with what it needs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_module

from attacks import ALIE
from scripts.build import build_run, run_from_json
from scripts.config import ConfigError

COLLUDING = ["alie", "ipm", "min_max", "min_sum", "fang_krum", "fang_trimmed_mean"]


def composed(*overrides: str):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["attack=alie", "attack.knowledge=full"],
            "attack.knowledge='full' is not one of ['omniscient', 'partial']",
        ),
        (["attack=fang_krum", "attack.knowledge=null"], "attack.knowledge=None is not one of ['omniscient', 'partial"),
        (
            ["attack=label_flip", "+attack.knowledge=partial"],
            "attack.knowledge='partial' applies to colluding attacks only",
        ),
        (["attack=sign_flip", "+attack.knowledge=omniscient"], "attack=sign_flip is an update attack"),
        (["+attack.knowledge=partial"], "attack=none is no attack"),
        (
            ["attack=ipm", "engine=deployment"],
            "attack=ipm with attack.knowledge=omniscient needs every honest update of the round, which only the "
            "simulation engine's server-side wrapper sees; engine=deployment runs colluding attacks on the "
            "malicious SuperNodes themselves",
        ),
        (["attack=fang_krum", "engine=deployment"], "set attack.knowledge=partial (or use engine=simulation)"),
        (
            ["attack=alie", "attack.knowledge=partial", "engine=deployment", "engine.attacker_window=600"],
            "engine.attacker_window=600.0 must be below federation.round_timeout=600",
        ),
        (
            ["attack=alie", "attack.knowledge=partial", "engine=deployment", "engine.attacker_window=0"],
            "engine.attacker_window must be > 0 seconds, got 0",
        ),
    ],
)
def test_bad_knowledge_is_a_config_error_naming_the_key_and_the_values(overrides, message):
    with pytest.raises(ConfigError) as err:
        build_run(composed(*overrides))
    assert message in str(err.value)


@pytest.mark.parametrize("name", COLLUDING)
@pytest.mark.parametrize("knowledge", ["omniscient", "partial"])
def test_every_colluding_attack_takes_either_knowledge(name, knowledge, fmnist_root):
    run = build_run(composed(f"attack={name}", f"attack.knowledge={knowledge}", "attack.num_malicious=2"))
    assert run.attack.knowledge == knowledge and run.cfg["attack"]["knowledge"] == knowledge
    # the ServerApp rebuilds the attack from the resolved config: same knowledge there
    assert run_from_json(json.dumps(run.cfg)).attack.knowledge == knowledge


@pytest.mark.parametrize("name", COLLUDING)
def test_a_deployment_runs_every_colluding_attack_on_its_clients_with_partial_knowledge(name, fmnist_root):
    run = build_run(composed(f"attack={name}", "attack.knowledge=partial", "attack.num_malicious=2",
                             "engine=deployment"))  # fmt: skip
    assert run.colluders_on_clients  # the malicious SuperNodes compute it; the ServerApp installs no wrapper
    rebuilt = run_from_json(json.dumps(run.cfg))  # what the ServerApp and every ClientApp build from the run config
    assert rebuilt.colluders_on_clients and rebuilt.attack.knowledge == "partial"
    simulated = build_run(composed(f"attack={name}", "attack.knowledge=partial", "attack.num_malicious=2"))
    assert not simulated.colluders_on_clients
    assert not build_run(composed("attack=sign_flip", "engine=deployment")).colluders_on_clients


def test_the_default_is_omniscient(fmnist_root):
    assert build_run(composed("attack=min_max", "attack.num_malicious=2")).attack.knowledge == "omniscient"


def test_partial_alie_carries_the_federation_z_to_the_serverapp(fmnist_root):
    run = build_run(composed("attack=alie", "attack.knowledge=partial", "attack.num_malicious=5"))
    z = ALIE.z_max(50, 5)  # n = 50 clients, m = 5 malicious (Baruch et al.'s z_max)
    assert run.attack.z == pytest.approx(z) and run.cfg["attack"]["z"] == pytest.approx(z)
    rebuilt = run_from_json(json.dumps(run.cfg)).attack
    assert rebuilt.knowledge == "partial" and rebuilt.z == run.attack.z
    # a fixed z is kept as given
    fixed = build_run(composed("attack=alie", "attack.knowledge=partial", "attack.num_malicious=5", "attack.z=0.3"))
    assert fixed.attack.z == 0.3 and fixed.cfg["attack"]["z"] == 0.3


def test_cli_bad_knowledge_exits_2_before_anything_starts(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "scripts.run", "attack=alie", "attack.knowledge=full", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "configuration error: attack.knowledge='full' is not one of ['omniscient', 'partial']" in out.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("knowledge", ["omniscient", "partial"])
def test_alies_federation_wide_z_reaches_the_serverapps_rebuilt_attack(knowledge, fmnist_root):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose("config", overrides=["attack=alie", f"attack.knowledge={knowledge}", "attack.num_malicious=10",
                                           "federation.num_rounds=1"])  # fmt: skip
    run = build_run(cfg)
    z = ALIE.z_max(50, 10)  # n = 50 clients, m = 10 malicious, 5 sampled per round
    assert run.attack.z == pytest.approx(z)
    rebuilt = run_from_json(json.dumps(run.cfg)).attack  # what the ServerApp builds from the run config
    assert rebuilt.z == pytest.approx(z) and rebuilt.knowledge == knowledge
