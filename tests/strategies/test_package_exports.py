"""What ``strategies`` and ``strategies.rules`` export, and what importing them costs."""

from __future__ import annotations

import subprocess
import sys

import pytest

import strategies
from strategies.registry import PREAGGREGATORS, RULES

PLAIN = [
    "krum",
    "multikrum",
    "median",
    "trimmed_mean",
    "bulyan",
    "geomed",
    "centered_clipping",
    "norm_bound",
    "fltrust",
    "flame",
    "foolsgold",
    "pca_detect",
    "mean",
    "signsgd_majority",
]
# every registered rule and pre-aggregator class (the registry is the one list of them)
CLASSES = sorted({cls.__name__ for cls in [*RULES.values(), *PREAGGREGATORS.values()]} | {"Composed"})

stale_install = pytest.mark.skipif(
    getattr(strategies, "__file__", None) is None,
    reason="`strategies` resolved as a namespace package: the editable install predates "
    "strategies/__init__.py; re-run `pip install -e . --no-deps` (or run `python -m pytest`)",
)


@stale_install
def test_plain_functions_and_classes_are_exported() -> None:
    for name in PLAIN:
        assert callable(getattr(strategies, name)) and not isinstance(getattr(strategies, name), type)
    for name in CLASSES:
        assert isinstance(getattr(strategies, name), type)
    assert set(CLASSES) <= set(strategies.__all__) and set(PLAIN) <= set(strategies.__all__)


def test_config_targets_still_resolve_to_the_rule_modules() -> None:
    # Hydra walks attributes: strategies.rules.krum must stay the module, not the function
    from hydra._internal.utils import _locate

    for target in (
        "strategies.rules.krum.Krum",
        "strategies.rules.mean.Mean",
        "strategies.rules.preaggregators.Bucketing",
        "strategies.rules.flame.Flame",
    ):
        assert isinstance(_locate(target), type)


def test_what_importing_the_ground_floor_and_the_rules_costs() -> None:
    """One fresh interpreter: ``common.layout`` imports nothing of the project; the rules, their package
    exports and the registry import neither Flower nor Hydra."""
    from common.layout import Layout
    from strategies.rules import base

    assert base.Layout is Layout and strategies.Layout is Layout and strategies.rules.Layout is Layout
    code = (
        "import sys, common.layout\n"
        "project = {'common', 'strategies', 'server', 'clients', 'attacks', 'scripts', 'conf'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in project and m not in ('common', 'common.layout')))\n"
        "import strategies, strategies.rules, strategies.registry\n"
        "print('flwr' in sys.modules, 'hydra' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["[]", "False False"]
