"""One run's objects, built once from its config: the only place a config becomes objects.

:func:`build_run` checks a composed Hydra config completely, before any data is
decoded into clients, any Ray worker or any Flower process starts (unknown keys,
bad values, impossible combinations, missing data fail here with a message that
names the key, the value and the fix), resolves what the config leaves open (the
data root, the PCA defense's layer and source class, the malicious set) and
returns a :class:`Run`. The runner hands that same object to the engine, and the
in-process ServerApp uses it as is; a process that only has the resolved config
(a ClientApp, a deployed ServerApp) rebuilds its :class:`Run` from it once
(:func:`run_from_json`), lazily, only what it uses.
"""

from __future__ import annotations

import copy
import json
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from attacks._colluding import KNOWLEDGE
from attacks.registry import ATTACKS, kind_of
from attacks.threat import ThreatModel, resolve_num_malicious
from common.data import DatasetSpec, DatasetTensors, load_dataset, prepare_dataset, spec_of
from common.dp_training import DpSgd, dp_compatible
from common.models import output_layer_name
from common.params import ModelCodec
from common.runtime import resolve_device
from scripts.config import (
    TOP_LEVEL_KEYS,
    AdapterSettings,
    ClientSettings,
    ConfigError,
    EvaluationSettings,
    Federation,
    OutputSettings,
    check_client,
    check_device,
    check_evaluation,
    check_federation,
    instantiate_component,
    typed_section,
)
from scripts.privacy import LeakageSettings, central_dp, client_dp, leakage_settings
from strategies.central_dp import CentralDP
from strategies.registry import RULES
from strategies.rules.base import RuleConfigError
from strategies.rules.preaggregators import Composed

#: keys of an ``attack`` section that describe the threat model, not the attack (conf/base/threat.yaml)
THREAT_KEYS = ("name", "num_malicious", "fraction", "start_round", "end_round", "availability", "malicious_clients")


class Run:
    """The objects of one run, each built on first use and then kept.

    Parameters
    ----------
    cfg : dict
        The resolved run config (what :func:`build_run` returns as ``run.cfg``).
    """

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg

    @property
    def seed(self) -> int:
        return int(self.cfg["seed"])

    @cached_property
    def federation(self) -> Federation:
        return typed_section(self.cfg["federation"], Federation, "federation")

    @cached_property
    def client(self) -> ClientSettings:
        return typed_section(self.cfg["client"], ClientSettings, "client")

    @cached_property
    def evaluation(self) -> EvaluationSettings:
        section = dict(self.cfg["evaluation"])
        section["batch_size"] = section.get("batch_size") or 0
        return typed_section(section, EvaluationSettings, "evaluation")

    @cached_property
    def output(self) -> OutputSettings:
        return typed_section(self.cfg["output"], OutputSettings, "output")

    @cached_property
    def spec(self) -> DatasetSpec:
        return spec_of(self.cfg["dataset"]["name"])

    @cached_property
    def dataset(self) -> DatasetTensors:
        """The dataset as tensors (decoded once per process, cached in ``common.data``)."""
        return load_dataset(self.cfg["dataset"]["name"], self.cfg["dataset"]["root"])

    @cached_property
    def partitions(self) -> list[np.ndarray]:
        """Index arrays of every client's training samples."""
        partitioner = instantiate_component(self.cfg["partition"], "partition")
        labels = self.dataset.train_y.numpy()
        return partitioner(labels, self.federation.num_clients, self.seed)

    @cached_property
    def partition_sizes(self) -> list[int]:
        return [int(len(p)) for p in self.partitions]

    @cached_property
    def device(self) -> torch.device:
        return resolve_device(self.cfg["device"])

    @cached_property
    def _template(self) -> nn.Module:
        return self._instantiate_model()

    def _instantiate_model(self) -> nn.Module:
        spec = self.spec
        model = instantiate_component(
            self.cfg["model"], "model", num_classes=spec.num_classes, in_channels=spec.channels, image_size=spec.size
        )
        if self.dp_sgd is None:
            return model
        try:
            return dp_compatible(model, (spec.channels, spec.size, spec.size))
        except ValueError as err:
            raise ConfigError(f"dp=opacus with model {self.cfg['model'].get('_target_')}: {err}") from None

    def new_model(self, *, seed: int | None = None) -> nn.Module:
        """The configured model: initialised from ``seed``, else a copy of one cached template.

        Clients overwrite every weight with the global model at once, so they
        copy the template instead of paying for instantiation on every message.
        """
        if seed is None:
            return copy.deepcopy(self._template)
        torch.manual_seed(seed)
        return self._instantiate_model()

    @cached_property
    def dp_sgd(self) -> DpSgd | None:
        """The clients' DP-SGD settings (``dp=opacus``), else ``None``."""
        return client_dp(self.cfg["dp"], self.federation)

    @cached_property
    def central_dp(self) -> dict[str, Any] | None:
        """Server-side DP settings (``dp=central_*``), else ``None``."""
        return central_dp(self.cfg["dp"])

    @cached_property
    def leakage(self) -> LeakageSettings | None:
        """The run's gradient-leakage attack (``leakage``), else ``None``."""
        return leakage_settings(self.cfg.get("leakage") or {"method": "none"}, self.federation)

    @cached_property
    def codec(self) -> ModelCodec:
        return ModelCodec.of_model(self._template)

    @cached_property
    def adapter(self) -> AdapterSettings:
        return AdapterSettings.split(self.cfg["strategy"])[0]

    @cached_property
    def rule(self) -> Any:
        """The aggregation rule with its pre-aggregators, inside central DP when on (one per run: stateful)."""
        rule = build_rule(self.cfg["strategy"])
        if self.central_dp is None:
            return rule
        try:
            return CentralDP(rule, **self.central_dp)
        except RuleConfigError as err:
            raise ConfigError(f"dp ({self.cfg['dp'].get('mode')}): {err}") from None

    @cached_property
    def attack(self) -> Any | None:
        return build_attack(self.cfg["attack"])

    @cached_property
    def attack_kind(self) -> str | None:
        return None if self.attack is None else kind_of(self.attack)

    @cached_property
    def threat(self) -> ThreatModel:
        return build_threat(self.cfg["attack"], self.federation.num_clients, self.seed)

    @cached_property
    def colluders_on_clients(self) -> bool:
        """Whether the malicious clients compute the run's colluding attack themselves (a deployment).

        True for a colluding attack on an engine whose class says
        ``colluders_on_clients`` (``engine=deployment``: the malicious
        SuperNodes share their benign updates through the attacker service);
        the ServerApp then installs no server-side wrapper. Read from the
        engine's class, so no process builds an engine it does not run.
        """
        if self.attack_kind != "colluding":
            return False
        return bool(getattr(get_object(self.cfg["engine"]["_target_"]), "colluders_on_clients", False))

    @cached_property
    def engine(self) -> Any:
        return instantiate_component(self.cfg["engine"], "engine")


@lru_cache(maxsize=4)
def run_from_json(text: str) -> Run:
    """The :class:`Run` of a resolved config carried as JSON (cached: every message carries the same text)."""
    return Run(json.loads(text))


def build_rule(section: dict[str, Any]) -> Any:
    """The rule of a ``strategy`` section, behind its pre-aggregators when it has any."""
    adapter, rule_section = AdapterSettings.split(section)
    _check_registered(rule_section, RULES, "strategy", "strategies/registry.py")
    rule = instantiate_component(rule_section, "strategy")
    if not adapter.preaggregators:
        return rule
    try:
        return Composed(rule, preaggregators=[instantiate(p, _convert_="all") for p in adapter.preaggregators])
    except Exception as err:
        raise ConfigError(f"strategy.preaggregators: {err}") from err


def build_attack(section: dict[str, Any]) -> Any | None:
    """The attack of an ``attack`` section (``None`` for ``attack=none``)."""
    if "_target_" not in section:
        return None
    _check_registered(section, ATTACKS, "attack", "attacks/registry.py")
    return instantiate_component({k: v for k, v in section.items() if k not in THREAT_KEYS}, "attack")


def _check_registered(section: dict[str, Any], registry: dict[str, type], group: str, where: str) -> None:
    """A component's ``_target_`` must be one of its registry's classes (one catalogue of names)."""
    target = section.get("_target_")
    try:
        cls = get_object(target)
    except Exception as err:
        raise ConfigError(f"{group}._target_={target!r} cannot be imported: {err}") from None
    if cls not in registry.values():
        raise ConfigError(
            f"{group}._target_={target!r} is not a registered {group}; register it in {where} "
            f"(known: {sorted(registry)})"
        )


def build_threat(section: dict[str, Any], num_clients: int, seed: int) -> ThreatModel:
    """The run's threat model; ``attack=none`` gives an empty malicious set.

    ``num_malicious`` wins over ``fraction`` (used only when ``num_malicious`` is
    null). A resolved config carries the drawn set as ``malicious_clients``.
    """
    if "_target_" not in section:
        return ThreatModel(num_clients=num_clients, malicious=[])
    count = section.get("num_malicious")
    m = resolve_num_malicious(
        num_clients, num_malicious=count, fraction=section.get("fraction") if count is None else None
    )
    window = {k: section.get(k) for k in ("start_round", "end_round", "availability")}
    if "malicious_clients" in section:
        malicious = list(section["malicious_clients"])
        if len(malicious) != m:
            raise ValueError(f"attack.malicious_clients has {len(malicious)} ids but {m} were asked for")
        return ThreatModel(num_clients=num_clients, malicious=malicious, **window)
    return ThreatModel.from_seed(num_clients=num_clients, seed=seed, num_malicious=m, **window)


def bind_to_population(attack: Any, threat: ThreatModel) -> Any:
    """Fix population-level parameters of an attack from the threat model.

    ALIE without an explicit ``z`` takes Baruch et al.'s ``z_max`` for the whole
    federation (``n`` clients of which ``m`` are malicious), as in the paper,
    rather than recomputing it from each round's sample (a round in which the
    sampled attackers are a majority would leave it undefined).
    """
    alie = ATTACKS["alie"]
    if isinstance(attack, alie) and attack.z is None and threat.num_malicious:
        return alie(z=alie.z_max(threat.num_clients, threat.num_malicious), knowledge=attack.knowledge)
    return attack


def _check_top_level(cfg: DictConfig) -> None:
    unknown = sorted(set(cfg) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}; known: {sorted(TOP_LEVEL_KEYS)}")
    if not isinstance(cfg.get("seed"), int) or cfg.seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {cfg.get('seed')!r}")
    check_device(cfg.device)
    if set(cfg.dataset) - {"name", "root"}:
        raise ConfigError(f"unknown key(s) {sorted(set(cfg.dataset) - {'name', 'root'})} in dataset")
    try:
        spec_of(cfg.dataset.name)
    except ValueError as err:
        raise ConfigError(f"dataset.name: {err}") from None


def _resolve_strategy(strategy: dict[str, Any], attack: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """Fill the PCA defense's open keys: ``layer`` from the model, ``source`` from the attack."""
    if "layer" in strategy and strategy["layer"] is None:
        strategy["layer"] = output_layer_name(model)
    if "source" in strategy:
        attack_source = attack.get("source") if "_target_" in attack else None
        if strategy["source"] is None:
            if attack_source is None:
                raise ConfigError(
                    "strategy.source is null and the attack has no source class to take it from: "
                    "set strategy.source=<the class to watch>"
                )
            strategy["source"] = attack_source
        elif attack_source is not None and strategy["source"] != attack_source:
            raise ConfigError(
                f"strategy.source={strategy['source']} but attack.source={attack_source}: the defense would watch "
                "another class than the one attacked; drop strategy.source (it follows the attack) or make them equal"
            )
    return strategy


def _check_knowledge(section: dict[str, Any]) -> None:
    """``attack.knowledge``: one of :data:`attacks._colluding.KNOWLEDGE`, and only on a colluding attack."""
    if "knowledge" not in section:
        return
    value = section["knowledge"]
    if value not in KNOWLEDGE:
        raise ConfigError(
            f"attack.knowledge={value!r} is not one of {list(KNOWLEDGE)}: 'omniscient' computes a colluding attack "
            "from every honest update of the round, 'partial' only from the colluders' own benign updates"
        )
    try:
        kind = kind_of(get_object(section["_target_"])) if "_target_" in section else None
    except Exception:  # noqa: BLE001 (an unimportable or kind-less _target_ is reported when the attack is built)
        return
    if kind != "colluding":
        what = {"data": "a data attack", "update": "an update attack"}.get(kind or "", "no attack")
        raise ConfigError(
            f"attack.knowledge={value!r} applies to colluding attacks only (alie, ipm, min_max, min_sum, fang_krum, "
            f"fang_trimmed_mean); attack={section.get('name')} is {what}"
        )


def _check_attack(run: Run, section: dict[str, Any]) -> None:
    fed = run.federation
    _check_knowledge(section)
    try:
        threat = run.threat
        threat.check_clients_per_round(fed.clients_per_round)
        attack = run.attack
        if attack is not None and threat.num_malicious:
            run.__dict__["attack"] = attack = bind_to_population(attack, threat)
    except ConfigError:
        raise
    except ValueError as err:
        raise ConfigError(f"attack: {err}") from None
    if attack is None:
        return
    for name in ("source", "target"):
        value = getattr(attack, name, None)
        if value is not None and not 0 <= value < run.spec.num_classes:
            raise ConfigError(f"attack.{name}={value} is not a class of this dataset (0..{run.spec.num_classes - 1})")
    if isinstance(attack, ATTACKS["alie"]) and attack.z is not None:
        # ALIE's z is the federation's (n, m) bound (bind_to_population), never the round's: the ServerApp, which
        # rebuilds the attack from this config in its own process, must get that value, not recompute it
        section["z"] = attack.z
    if run.attack_kind == "colluding":
        _check_colluding_engine(run, section, getattr(attack, "knowledge", "omniscient"))


def _check_colluding_engine(run: Run, section: dict[str, Any], knows: str) -> None:
    """A colluding attack needs an engine that runs it, and on the clients (a deployment) partial knowledge."""
    name, engine = section.get("name"), run.engine
    if not getattr(engine, "runs_colluding_attacks", False):
        raise ConfigError(
            f"attack={name} is a colluding attack that engine {type(engine).__name__} cannot run; use "
            "engine=simulation (its server-side wrapper computes it) or engine=deployment attack.knowledge=partial "
            "(the malicious SuperNodes compute it through the attacker service)"
        )
    if not run.colluders_on_clients:
        return
    if knows != "partial":
        raise ConfigError(
            f"attack={name} with attack.knowledge={knows} needs every honest update of the round, which only the "
            "simulation engine's server-side wrapper sees; engine=deployment runs colluding attacks on the "
            "malicious SuperNodes themselves, from the benign updates they share through the attacker service: "
            "set attack.knowledge=partial (or use engine=simulation)"
        )
    window = getattr(engine, "attacker_window", None)
    if window is not None and window >= run.federation.round_timeout:
        raise ConfigError(
            f"engine.attacker_window={window} must be below federation.round_timeout="
            f"{run.federation.round_timeout}: the colluders wait that long for each other before they reply"
        )


def build_run(cfg: DictConfig) -> Run:
    """Check a composed run config completely and build its :class:`Run`.

    Raises
    ------
    ConfigError
        On any unknown key, bad value or impossible combination.
    common.data.DataMissingError
        When the dataset is not on disk and cannot be downloaded.
    """
    _check_top_level(cfg)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    run = Run(resolved)
    check_federation(run.federation)
    check_client(run.client)
    check_evaluation(run.evaluation)
    if run.output.tensorboard:  # the event files need the tensorboard package: fail before the run starts
        from server.tensorboard_log import TensorBoardMissing, summary_writer_class

        try:
            summary_writer_class()
        except TensorBoardMissing as err:
            raise ConfigError(str(err)) from None
    fed = run.federation
    run.dp_sgd, run.central_dp, run.leakage  # noqa: B018 (privacy and leakage sections checked before the model)

    resolved["strategy"] = _resolve_strategy(dict(resolved["strategy"]), resolved["attack"], run._template)
    adapter = run.adapter
    try:
        rule = run.rule
        rule.check_clients(fed.clients_per_round)
    except RuleConfigError as err:
        raise ConfigError(f"strategy: {err} (federation.clients_per_round={fed.clients_per_round})") from None
    if getattr(rule, "needs_server_update", False) and adapter.root_size < 1:
        target = resolved["strategy"]["_target_"]
        raise ConfigError(f"strategy {target} needs a clean root set: set strategy.root_size >= 1")
    run.engine  # noqa: B018 (an engine checks its own settings when built)
    _check_attack(run, resolved["attack"])
    resolved["attack"]["malicious_clients"] = list(run.threat.malicious)
    if hasattr(run.engine, "check_run"):  # an engine that serves a given federation checks the run fits it
        try:
            run.engine.check_run(resolved)
        except ValueError as err:
            raise ConfigError(f"engine: {err}") from None

    resolved["dataset"]["root"] = str(prepare_dataset(cfg.dataset.name, cfg.dataset.root))
    try:
        run.partitions  # noqa: B018 (partitioning can fail on the real labels)
    except ValueError as err:
        raise ConfigError(f"partition: {err}") from None
    return run
