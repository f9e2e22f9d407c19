"""The typed schema of a run's plain sections and their checks.

The sections that are not components (``federation``, ``client``,
``evaluation``, ``output``, the strategy adapter's keys) are dataclasses here;
:func:`typed_section` builds one from a config section, rejecting unknown keys
and wrong types. Components (model, partition, rule, attack, engine) are
instantiated by :mod:`scripts.build`, which runs every check of a run before
anything expensive starts. Every failure is a :class:`ConfigError` whose message
names the key, the value and the fix.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, fields
from typing import Any

from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from common.training import LocalTraining

TOP_LEVEL_KEYS = {
    "dataset", "model", "partition", "federation", "strategy", "attack", "dp", "leakage", "engine",
    "seed", "device", "client", "evaluation", "output", "output_dir", "resume",
}  # fmt: skip


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
    enrol_batch: int | None = None


@dataclass(frozen=True)
class ClientSettings(LocalTraining):
    """Local training plus the client's execution settings (``client`` section).

    ``fused``: a node's group of clients trains in one vectorised step
    (:mod:`common.fused_training`) when the model allows it and no client of
    the group uses DP-SGD or a leakage capture; ``auto``: on a GPU only.
    """

    channels_last: bool = True
    fused: bool | str = "auto"


@dataclass(frozen=True)
class EvaluationSettings:
    """Central evaluation (``evaluation`` section).

    ``batch_size`` 0 means auto (256 on CPU, 4096 on CUDA). ``on_divergence``:
    what a run does after a round whose global model gives non-finite logits or
    loss (the round is recorded as ``diverged`` and never scored): ``stop``
    ends the run there (status ``diverged``), ``continue`` goes on.
    ``fold_batchnorm``: evaluate a copy of the global model with each BatchNorm
    folded into the layer before it (:func:`common.training.inference_copy`;
    the same model up to float rounding, evaluated faster); ``false`` evaluates
    the model as it is.
    """

    batch_size: int = 0
    on_divergence: str = "stop"
    fold_batchnorm: bool = True


@dataclass(frozen=True)
class OutputSettings:
    """Run outputs (``output`` section).

    ``plots``: write the PNG plots at the end. ``tensorboard``: also write
    TensorBoard event files (``<run folder>/tensorboard/``), one scalar per
    round and metric (needs the ``tensorboard`` extra). ``verbose``: show
    Flower's, Ray's and the libraries' logs on the console too (they always go
    to ``run.log`` in the run folder). ``checkpoint``: the ServerApp's
    checkpoint after every round, which ``poisonlab resume=<run folder>``
    continues from (``server.checkpoint``).
    """

    plots: bool = True
    tensorboard: bool = False
    verbose: bool = False
    checkpoint: bool = True


@dataclass(frozen=True)
class AdapterSettings:
    """The strategy keys that configure the adapter around the rule, not the rule itself.

    Every ``strategy`` option has them (``conf/base/strategy_adapter.yaml``);
    ``root_size`` only where the rule needs a clean root set (FLTrust).
    """

    preaggregators: tuple = ()
    on_failure: str = "raise"
    root_size: int = 0

    @classmethod
    def split(cls, section: dict[str, Any]) -> tuple[AdapterSettings, dict[str, Any]]:
        """Separate the adapter's keys from the rule's in a ``strategy`` section."""
        mine = {f.name for f in fields(cls)}
        adapter = {k: v for k, v in section.items() if k in mine}
        rule = {k: v for k, v in section.items() if k not in mine}
        settings = cls(
            preaggregators=tuple(adapter.get("preaggregators") or ()),
            on_failure=adapter.get("on_failure", "raise"),
            root_size=adapter.get("root_size", 0),
        )
        if settings.on_failure not in ("raise", "skip"):
            raise ConfigError(f"strategy.on_failure must be raise or skip, got {settings.on_failure!r}")
        if isinstance(settings.root_size, bool) or not isinstance(settings.root_size, int) or settings.root_size < 0:
            raise ConfigError(f"strategy.root_size must be a non-negative integer, got {settings.root_size!r}")
        return settings, rule


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
    if fed.enrol_batch is not None and fed.enrol_batch < 0:
        raise ConfigError(f"federation.enrol_batch must be >= 0 (0: every SuperNode at once), got {fed.enrol_batch}")
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
    if client.fused not in (True, False, "auto"):
        raise ConfigError(f"client.fused must be auto, true or false, got {client.fused!r}")
    if client.local_steps < 0:
        raise ConfigError(f"client.local_steps must be >= 0 (0: whole epochs), got {client.local_steps}")
    if client.lr_step < 0 or not 0 < client.lr_gamma <= 1:
        raise ConfigError(
            f"client.lr_step must be >= 0 and client.lr_gamma in (0, 1], got {client.lr_step}, {client.lr_gamma}"
        )


def check_device(device: str) -> None:
    """Accept ``auto``, ``cpu``, ``cuda`` or ``cuda:N``."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(device)):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")


def check_evaluation(evaluation: EvaluationSettings) -> None:
    """Raise :class:`ConfigError` for impossible evaluation settings."""
    if evaluation.batch_size < 0:
        raise ConfigError(f"evaluation.batch_size must be >= 1 or null (auto), got {evaluation.batch_size}")
    if evaluation.on_divergence not in ("stop", "continue"):
        raise ConfigError(f"evaluation.on_divergence must be stop or continue, got {evaluation.on_divergence!r}")


def instantiate_component(section: Any, where: str, **kwargs: Any) -> Any:
    """Instantiate a ``_target_`` section, turning any failure into a :class:`ConfigError`."""
    if "_target_" not in section:
        raise ConfigError(f"{where} has no _target_; pick one of the files in conf/{where}/")
    target = section["_target_"]
    try:
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
