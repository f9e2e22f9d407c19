"""The typed schema of a run and its validation.

:func:`validate` checks a composed Hydra config completely, before any data is
decoded into clients, any Ray worker or any Flower process starts: unknown keys,
bad values and impossible combinations fail here with a message that names the
key, the value and the fix. It returns the plain-dict config that travels to the
ServerApp and the ClientApps (as Flower run config and message config).
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf

from common.training import LocalTraining

TOP_LEVEL_KEYS = {
    "dataset", "model", "partition", "federation", "strategy", "attack", "dp", "engine",
    "seed", "device", "client", "evaluation", "output", "output_dir",
}  # fmt: skip
ADAPTER_KEYS = ("preaggregators", "on_failure", "root_size")


class ConfigError(ValueError):
    """A run configuration that cannot work; the message says what to change."""


@dataclass(frozen=True)
class Federation:
    """Who takes part and for how long (``federation`` group)."""

    num_clients: int = 50
    clients_per_round: int = 5
    num_rounds: int = 20
    round_timeout: float = 600.0
    connect_timeout: float = 120.0


@dataclass(frozen=True)
class ClientSettings(LocalTraining):
    """Local training plus the client's execution settings (``client`` section)."""

    channels_last: bool = True


def typed_section(section: Any, cls: type, where: str) -> Any:
    """Build dataclass ``cls`` from a config section, rejecting unknown keys and wrong types."""
    data = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else dict(section)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; known keys: {sorted(known)}")
    out = {}
    for name, value in data.items():
        default = getattr(cls(), name)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.{name} must be true or false, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where}.{name} must be an integer, got {value!r}")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}.{name} must be a number, got {value!r}")
            value = float(value)
        out[name] = value
    return cls(**out)


def check_federation(fed: Federation) -> None:
    """Raise :class:`ConfigError` for an impossible federation."""
    if fed.num_clients < 1:
        raise ConfigError(f"federation.num_clients must be >= 1, got {fed.num_clients}")
    if not 1 <= fed.clients_per_round <= fed.num_clients:
        raise ConfigError(
            f"federation.clients_per_round={fed.clients_per_round} must be between 1 and "
            f"federation.num_clients={fed.num_clients}; lower clients_per_round or raise num_clients"
        )
    if fed.num_rounds < 1:
        raise ConfigError(f"federation.num_rounds must be >= 1, got {fed.num_rounds}")
    if fed.round_timeout <= 0 or fed.connect_timeout <= 0:
        raise ConfigError("federation.round_timeout and connect_timeout must be > 0 seconds")


def check_client(client: ClientSettings) -> None:
    """Raise :class:`ConfigError` for impossible local-training settings."""
    if not client.lr > 0:
        raise ConfigError(f"client.lr must be > 0, got {client.lr}; e.g. client.lr=0.001")
    if not 0 <= client.momentum < 1:
        raise ConfigError(f"client.momentum must be in [0, 1), got {client.momentum}")
    if client.weight_decay < 0:
        raise ConfigError(f"client.weight_decay must be >= 0, got {client.weight_decay}")
    if client.batch_size < 1:
        raise ConfigError(f"client.batch_size must be >= 1, got {client.batch_size}")
    if client.epochs < 1:
        raise ConfigError(f"client.epochs must be >= 1, got {client.epochs}")
    if client.lr_step < 0 or not 0 < client.lr_gamma <= 1:
        raise ConfigError(
            f"client.lr_step must be >= 0 and client.lr_gamma in (0, 1], got {client.lr_step}, {client.lr_gamma}"
        )


def check_device(device: str) -> None:
    """Accept ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(device)):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")


def instantiate_component(section: Any, where: str, **kwargs: Any) -> Any:
    """Instantiate a ``_target_`` section, turning any failure into a :class:`ConfigError`."""
    from hydra.utils import instantiate

    if "_target_" not in section:
        raise ConfigError(f"{where} has no _target_; pick one of the files in conf/{where}/")
    target = section["_target_"]
    try:
        from hydra.utils import get_object

        obj = get_object(target)
        accepted = inspect.signature(obj).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        extra = {k: v for k, v in kwargs.items() if takes_any or k in accepted}
        return instantiate(section, **extra, _convert_="all")
    except ConfigError:
        raise
    except Exception as err:
        cause = err.__cause__ or err
        raise ConfigError(f"{where} ({target}): {cause}") from err


def check_attack(cfg: DictConfig, num_classes: int, fed: Federation, engine: Any) -> list[int]:
    """Build the attack and the threat model once; return the malicious client ids."""
    from attacks.configured import bind_to_population, build_attack, build_threat, kind_of
    from server.engines import Simulation

    section = OmegaConf.to_container(cfg.attack, resolve=True)
    assert isinstance(section, dict)
    try:
        attack = build_attack(section)
        threat = build_threat(section, fed.num_clients, int(cfg.seed))
        threat.check_clients_per_round(fed.clients_per_round)
        if attack is not None and threat.num_malicious:
            bind_to_population(attack, threat)
    except ValueError as err:
        raise ConfigError(f"attack: {err}") from None
    if attack is None:
        return []
    for name in ("source", "target"):
        value = getattr(attack, name, None)
        if value is not None and not 0 <= value < num_classes:
            raise ConfigError(f"attack.{name}={value} is not a class of this dataset (0..{num_classes - 1})")
    if kind_of(attack) == "colluding" and not isinstance(engine, Simulation):
        raise ConfigError(
            f"attack={section.get('name')} is an omniscient colluding attack that only the simulation engine "
            "can run (it needs every honest update of the round); use engine=simulation"
        )
    return list(threat.malicious)


def validate(cfg: DictConfig) -> dict[str, Any]:
    """Check a composed run config completely and return it as a plain dict.

    Raises
    ------
    ConfigError
        On any unknown key, bad value or impossible combination.
    common.data.DataMissingError
        When the dataset is not on disk and cannot be downloaded.
    """
    from common.data import prepare_dataset, spec_of
    from strategies.robust import build_rule

    unknown = sorted(set(cfg) - TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {unknown}; known: {sorted(TOP_LEVEL_KEYS)}")
    if not isinstance(cfg.get("seed"), int) or cfg.seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {cfg.get('seed')!r}")
    check_device(cfg.device)
    for section, known in (("evaluation", {"batch_size"}), ("output", {"plots"})):
        extra = sorted(set(cfg[section]) - known)
        if extra:
            raise ConfigError(f"unknown key(s) {extra} in {section}; known keys: {sorted(known)}")
    eval_batch = cfg.evaluation.get("batch_size")
    if eval_batch is not None and (not isinstance(eval_batch, int) or eval_batch < 1):
        raise ConfigError(f"evaluation.batch_size must be a positive integer or null (auto), got {eval_batch!r}")
    fed = typed_section(cfg.federation, Federation, "federation")
    check_federation(fed)
    check_client(typed_section(cfg.client, ClientSettings, "client"))
    try:
        spec = spec_of(cfg.dataset.name)
    except ValueError as err:
        raise ConfigError(f"dataset.name: {err}") from None
    if set(cfg.dataset) - {"name", "root"}:
        raise ConfigError(f"unknown key(s) {sorted(set(cfg.dataset) - {'name', 'root'})} in dataset")
    if cfg.dp.get("enabled", False):
        raise ConfigError("dp.enabled=true is not available in this version; use dp=off")

    model = instantiate_component(
        cfg.model, "model", num_classes=spec.num_classes, in_channels=spec.channels, image_size=spec.size
    )
    strategy = OmegaConf.to_container(cfg.strategy, resolve=True)
    assert isinstance(strategy, dict)
    if "layer" in strategy and strategy["layer"] is None:
        from common.models import output_layer_name

        strategy["layer"] = output_layer_name(model)
    root_size = strategy.get("root_size", 0)
    if not isinstance(root_size, int) or root_size < 0:
        raise ConfigError(f"strategy.root_size must be a non-negative integer, got {root_size!r}")
    del model
    partitioner = instantiate_component(cfg.partition, "partition")
    rule = build_rule(strategy)
    if getattr(rule, "needs_server_update", False) and root_size < 1:
        raise ConfigError(f"strategy {strategy['_target_']} needs a clean root set: set strategy.root_size >= 1")
    try:
        rule.check_clients(fed.clients_per_round)
    except ValueError as err:
        raise ConfigError(f"strategy: {err} (federation.clients_per_round={fed.clients_per_round})") from None
    if strategy.get("on_failure", "raise") not in ("raise", "skip"):
        raise ConfigError(f"strategy.on_failure must be raise or skip, got {strategy.get('on_failure')!r}")
    engine = instantiate_component(cfg.engine, "engine")
    malicious = check_attack(cfg, spec.num_classes, fed, engine)

    root = prepare_dataset(cfg.dataset.name, cfg.dataset.root)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    resolved["dataset"]["root"] = str(root)
    resolved["strategy"] = strategy
    resolved["attack"]["malicious_clients"] = malicious
    try:
        from common.data import load_dataset

        labels = load_dataset(cfg.dataset.name, str(root)).train_y.numpy()
        partitioner(labels, fed.num_clients, int(cfg.seed))
    except ValueError as err:
        raise ConfigError(f"partition: {err}") from None
    del engine
    return resolved
