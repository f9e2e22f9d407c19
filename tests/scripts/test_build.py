"""``build_run``: configuration errors fail before any data, Ray or Flower process starts; objects built once."""

import subprocess
import sys

import pytest
from hydra import compose, initialize_config_module

from common.data import DataMissingError
from scripts.build import build_run
from scripts.config import ConfigError


def validate(cfg) -> dict:
    return build_run(cfg).cfg


def composed(*overrides: str):
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_default_config_validates(fmnist_root):
    resolved = validate(composed())
    assert resolved["federation"] == {
        "num_clients": 50, "clients_per_round": 5, "num_rounds": 20, "round_timeout": 600, "connect_timeout": 120,
        "enrol_batch": None,
    }  # fmt: skip
    assert resolved["client"]["batch_size"] == 4 and resolved["client"]["lr"] == 0.001
    assert resolved["dataset"]["root"] == fmnist_root


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["federation.clients_per_round=60"], "clients_per_round=60 must be between 1 and federation.num_clients=50"),
        (["client.lr=-0.1"], "client.lr must be > 0, got -0.1"),
        (["client.batch_size=0"], "client.batch_size must be >= 1, got 0"),
        (
            ["dataset.name=imagenet"],
            "unknown dataset 'imagenet'; known datasets: ['cifar10', 'fashion_mnist', 'mnist']",
        ),
        (["+federation.num_client=3"], "unknown key(s) ['num_client'] in federation"),
        (["+foo=1"], "unknown top-level key(s) ['foo']"),
        (["device=gpu"], "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        (["strategy.weighted=maybe"], "weighted must be true or false, got 'maybe'"),
        (["strategy.on_failure=ignore"], "strategy.on_failure must be raise or skip"),
        (["engine.client_cpus=0"], "engine.client_cpus must be a whole number >= 1"),
        (["engine.client_cpus=0.5"], "engine.client_cpus must be a whole number >= 1"),
        (["attack=label_flip", "attack.target=6"], "source and target must differ, got source=6, target=6"),
        (["attack=label_flip", "attack.share=1.5"], "share must be in [0, 1], got share=1.5"),
        (["attack=label_flip", "attack.num_malicious=51"], "got num_malicious=51; lower it or raise num_clients"),
        (["attack=badnets", "attack.num_malicious=null", "attack.fraction=1.2"], "got fraction=1.2"),
        (["attack=label_flip", "attack.source=12"], "attack.source=12 is not a class of this dataset (0..9)"),
        (["attack=alie", "engine=deployment"], "attack=alie with attack.knowledge=omniscient needs every honest"),
        (["attack=alie", "attack.num_malicious=30"], "s = floor(n/2 + 1) - m = -4 <= 0"),
        (["attack=label_flip", "window=late", "attack.num_malicious=48"], "k=5 > 2 benign clients"),
        (["strategy=krum", "strategy.f=2"], "krum needs n > 2f + 2 replies, got n=5 with f=2"),
        (["strategy=bulyan"], "bulyan needs n >= 4f + 3 replies, got n=5 with f=1"),
        (["strategy=trimmed_mean", "strategy.beta=0.5"], "beta must be in [0, 0.5), got beta=0.5"),
        (["strategy=fltrust", "strategy.root_size=0"], "needs a clean root set: set strategy.root_size >= 1"),
        (["strategy=trimmed_mean", "federation.clients_per_round=4"], "int(0.8) = 0 values from each side at n=4"),
        (["strategy=pca_detect"], "strategy.source is null and the attack has no source class"),
        (["strategy=pca_detect", "strategy.source=3", "attack=label_flip"], "strategy.source=3 but attack.source=6"),
        (["strategy._target_=strategies.rules.base.Aggregate"], "is not a registered strategy"),
        (["attack=label_flip", "attack._target_=attacks.threat.ThreatModel"], "is not a registered attack"),
        (["evaluation.on_divergence=ignore"], "evaluation.on_divergence must be stop or continue"),
        (["+evaluation.every=2"], "unknown key(s) ['every'] in evaluation"),
    ],
)
def test_bad_values_are_named_in_the_error(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(composed(*overrides))
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["partition=dirichlet", "partition.alpha=0"], "partition.alpha must be > 0, got 0"),
        (["partition.samples_per_client=5000"], "exceeds the 60000 training samples"),
    ],
)
def test_bad_partitions_are_named_in_the_error_once_the_labels_are_read(overrides, message, fmnist_root):
    with pytest.raises(ConfigError) as err:
        validate(composed(*overrides))
    assert message in str(err.value)


def test_fraction_is_used_when_num_malicious_is_null_and_the_set_is_seeded(fmnist_root):
    a = validate(composed("attack=label_flip", "attack.num_malicious=null", "attack.fraction=0.2"))
    b = validate(composed("attack=label_flip", "attack.num_malicious=10", "seed=1"))
    assert len(a["attack"]["malicious_clients"]) == 10
    assert a["attack"]["malicious_clients"] != list(range(10))
    assert a["attack"]["malicious_clients"] != b["attack"]["malicious_clients"]
    assert validate(composed("attack=none"))["attack"]["malicious_clients"] == []


def test_every_strategy_and_attack_option_composes_with_a_valid_federation(fmnist_root):
    from pathlib import Path

    conf = Path(__file__).resolve().parents[2] / "conf"
    for option in sorted(p.stem for p in (conf / "strategy").glob("*.yaml")):
        validate(composed(f"strategy={option}", "federation.clients_per_round=10", "attack=label_flip"))
    for option in sorted(p.stem for p in (conf / "attack").glob("*.yaml")):
        validate(composed(f"attack={option}", "federation.clients_per_round=10"))


def test_the_pca_defense_watches_the_attacked_class_and_the_model_output_layer(fmnist_root):
    resolved = validate(composed("strategy=pca_detect", "attack=label_flip", "attack.source=4", "attack.target=6"))
    assert resolved["strategy"]["source"] == 4
    assert resolved["strategy"]["layer"] == "fc.weight"


def test_the_run_objects_are_built_once_and_kept(fmnist_root):
    run = build_run(composed("attack=label_flip", "strategy=krum", "federation.clients_per_round=10"))
    assert run.rule is run.rule and run.attack is run.attack and run.partitions is run.partitions
    assert list(run.threat.malicious) == run.cfg["attack"]["malicious_clients"]
    assert run.codec.layout.names[-1] == "fc.bias"
    assert not any("running" in name for name in run.codec.layout.names)


def test_missing_data_offline_names_the_expected_files(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(DataMissingError) as err:
        validate(composed(f"dataset.root={tmp_path / 'empty'}"))
    text = str(err.value)
    assert "dataset 'fashion_mnist' not found" in text
    assert str(tmp_path / "empty" / "FashionMNIST" / "raw" / "train-images-idx3-ubyte.gz") in text
    assert "POISONLAB_DATA" in text


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scripts.run", *args], capture_output=True, text=True, timeout=timeout)


def test_cli_unknown_group_option_lists_the_available_ones(tmp_path):
    out = run_cli("strategy=no_such_rule", f"hydra.run.dir={tmp_path}")
    assert out.returncode != 0
    assert "Could not find 'strategy/no_such_rule'" in out.stderr
    assert "Available options in 'strategy'" in out.stderr and "fedavg" in out.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_cli_bad_value_exits_2_before_ray_starts(tmp_path):
    out = run_cli("federation.clients_per_round=51", f"hydra.run.dir={tmp_path}")
    assert out.returncode == 2
    assert "configuration error: federation.clients_per_round=51" in out.stderr
    assert "Ray" not in out.stdout + out.stderr and "run folder" not in out.stdout
    assert not (tmp_path / "metrics.jsonl").exists()
