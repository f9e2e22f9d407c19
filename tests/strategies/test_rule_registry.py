"""The registry of user-facing strategy names agrees with ``conf/strategy/`` and with the rule contract."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf
from rule_cases import DETECTORS

from strategies.registry import PREAGGREGATORS, RULES

CONF = Path(__file__).resolve().parents[2] / "conf" / "strategy"
YAMLS = sorted(CONF.glob("*.yaml"))


def test_the_config_folder_is_where_the_test_looks() -> None:
    assert len(YAMLS) >= 15, CONF


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.stem)
def test_every_strategy_yaml_targets_its_registered_class(path: Path) -> None:
    assert path.stem in RULES, f"conf/strategy/{path.name} has no entry in strategies.registry.RULES"
    target = OmegaConf.load(path)["_target_"]
    assert get_object(target) is RULES[path.stem], (path.name, target)


def test_every_registered_name_has_a_yaml() -> None:
    assert sorted(RULES) == sorted(p.stem for p in YAMLS)


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_registered_rule_follows_the_contract(name: str) -> None:
    cls = RULES[name]
    assert isinstance(cls.detects, bool), name
    assert cls.detects is (name in DETECTORS), name
    assert callable(getattr(cls, "check_clients", None)) and callable(cls), name


def test_preaggregators_are_registered_with_their_interface() -> None:
    assert sorted(PREAGGREGATORS) == ["bucketing", "nnm"]
    for cls in PREAGGREGATORS.values():
        assert callable(getattr(cls, "output_size", None)) and callable(cls)
