"""The attack registry against ``conf/attack/``: one name, one yaml, one class, one kind."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hydra.utils import get_object

from attacks import ATTACKS, KINDS, kind_of

CONF = Path(__file__).resolve().parents[2] / "conf" / "attack"
YAMLS = {p.stem: p for p in sorted(CONF.glob("*.yaml"))}
EXPECTED_KINDS = {
    "label_flip": "data",
    "untargeted_flip": "data",
    "badnets": "data",
    "blended": "data",
    "dba": "data",
    "sign_flip": "update",
    "gaussian_noise": "update",
    "scaling": "update",
    "alie": "colluding",
    "ipm": "colluding",
    "min_max": "colluding",
    "min_sum": "colluding",
    "fang_krum": "colluding",
    "fang_trimmed_mean": "colluding",
}


def _load(name: str) -> dict:
    return yaml.safe_load(YAMLS[name].read_text())


def test_the_config_group_is_there() -> None:
    assert "none" in YAMLS and len(YAMLS) > 1


@pytest.mark.parametrize("name", sorted(set(YAMLS) - {"none"}))
def test_every_yaml_target_resolves_to_the_registered_class(name: str) -> None:
    assert name in ATTACKS, f"conf/attack/{name}.yaml has no entry in attacks.registry.ATTACKS"
    assert get_object(_load(name)["_target_"]) is ATTACKS[name]


def test_none_has_no_target() -> None:
    assert "_target_" not in _load("none")


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_registry_name_has_a_yaml(name: str) -> None:
    assert name in YAMLS, f"ATTACKS[{name!r}] has no conf/attack/{name}.yaml"


@pytest.mark.parametrize("name", sorted(YAMLS))
def test_every_yaml_name_is_its_file_stem(name: str) -> None:
    assert _load(name)["name"] == name


def test_every_registered_class_declares_its_kind() -> None:
    assert set(ATTACKS) == set(EXPECTED_KINDS)
    for name, cls in ATTACKS.items():
        assert kind_of(cls) in KINDS
        assert kind_of(cls) == EXPECTED_KINDS[name], name


def test_kind_of_an_instance_is_its_class_kind() -> None:
    assert kind_of(ATTACKS["ipm"]()) == "colluding"
    assert kind_of(ATTACKS["sign_flip"]()) == "update"
    assert kind_of(ATTACKS["label_flip"](source=1, target=2)) == "data"


def test_kind_of_a_class_without_a_kind_names_it() -> None:
    class NoKind:
        pass

    class BadKind:
        kind = "server"

    with pytest.raises(ValueError, match="NoKind"):
        kind_of(NoKind())
    with pytest.raises(ValueError, match=r"BadKind.*kind='server'"):
        kind_of(BadKind)
