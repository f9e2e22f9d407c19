"""The ``dp`` and ``leakage`` sections of a run: their schema and checks.

``dp`` (one of ``conf/dp/``): ``off``; ``opacus`` (client-side DP-SGD with a
noise schedule, :mod:`common.dp_training`); ``central_fixed`` and
``central_adaptive`` (server-side clipping and noise around any rule,
:mod:`strategies.central_dp`). ``leakage`` (one of ``conf/leakage/``): ``none``
or a gradient-inversion attack run by the server on what it observes
(:mod:`server.leakage`). Every failure is a :class:`~scripts.config.ConfigError`
naming the key and the fix, raised before anything expensive starts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from common.dp_training import DpSgd
from common.privacy import NoiseSchedule
from scripts.config import ConfigError, Federation, typed_section

DP_MODES = ("off", "opacus", "central_fixed", "central_adaptive")
LEAKAGE_METHODS = ("none", "dlg", "idlg", "inverting_gradients")
LEAKAGE_TARGETS = ("update", "step")

_OPACUS_KEYS = {"mode", "noise_multiplier", "schedule", "noise_end", "horizon", "step_every", "max_grad_norm",
                "clipping", "dynamic_statistic", "dynamic_min", "dynamic_max", "delta", "epsilon_budget",
                "grad_sample_mode"}  # fmt: skip
_CENTRAL_KEYS = {"mode", "noise_multiplier", "clipping_norm", "delta", "target_quantile", "clip_norm_lr",
                 "clipped_count_stddev"}  # fmt: skip


def dp_mode(section: dict[str, Any]) -> str:
    """The ``dp.mode`` of a section (YAML's bare ``off`` reads as ``False``)."""
    mode = section.get("mode", "off")
    mode = "off" if mode is False or mode is None else str(mode)
    if mode not in DP_MODES:
        raise ConfigError(f"dp.mode={mode!r} is unknown; pick dp=off, opacus, central_fixed or central_adaptive")
    return mode


def _number(section: dict[str, Any], key: str, *, optional: bool = False) -> float | None:
    value = section.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"dp.{key} must be a number, got {value!r}")
    return float(value)


def _unknown(section: dict[str, Any], known: set[str], mode: str) -> None:
    extra = sorted(set(section) - known)
    if extra:
        raise ConfigError(f"unknown key(s) {extra} in dp (dp={mode}); known keys: {sorted(known)}")


def client_dp(section: dict[str, Any], fed: Federation) -> DpSgd | None:
    """The clients' DP-SGD settings for ``dp=opacus`` (``None`` otherwise)."""
    mode = dp_mode(section)
    if mode != "opacus":
        return None
    _unknown(section, _OPACUS_KEYS, mode)
    horizon = section.get("horizon")
    schedule = NoiseSchedule(
        kind=str(section.get("schedule", "constant")),
        start=_number(section, "noise_multiplier"),
        end=_number(section, "noise_end", optional=True),
        horizon=fed.num_rounds if horizon is None else int(horizon),
        step_every=int(section.get("step_every", 10)),
    )
    dp = DpSgd(
        schedule=schedule,
        max_grad_norm=_number(section, "max_grad_norm"),
        delta=_number(section, "delta"),
        clipping=str(section.get("clipping", "fixed")),
        dynamic_statistic=str(section.get("dynamic_statistic", "max")),
        dynamic_min=_number(section, "dynamic_min"),
        dynamic_max=_number(section, "dynamic_max"),
        epsilon_budget=_number(section, "epsilon_budget", optional=True),
        grad_sample_mode=str(section.get("grad_sample_mode", "hooks")),
    )
    try:
        dp.check()
    except ValueError as err:
        raise ConfigError(f"dp (dp=opacus): {err}") from None
    if dp.grad_sample_mode != "hooks":
        raise ConfigError(
            f"dp.grad_sample_mode={dp.grad_sample_mode} fails on the empty batches Poisson sampling produces "
            "(Opacus supports them in hooks mode only); use dp.grad_sample_mode=hooks"
        )
    return dp


def central_dp(section: dict[str, Any]) -> dict[str, Any] | None:
    """Keyword arguments of ``strategies.central_dp.CentralDP`` for ``dp=central_*`` (``None`` otherwise)."""
    mode = dp_mode(section)
    if not mode.startswith("central"):
        return None
    _unknown(section, _CENTRAL_KEYS, mode)
    kwargs: dict[str, Any] = {
        "noise_multiplier": _number(section, "noise_multiplier"),
        "clipping_norm": _number(section, "clipping_norm"),
        "delta": _number(section, "delta"),
        "adaptive": mode == "central_adaptive",
    }
    if kwargs["adaptive"]:
        kwargs["target_quantile"] = _number(section, "target_quantile")
        kwargs["clip_norm_lr"] = _number(section, "clip_norm_lr")
        kwargs["clipped_count_stddev"] = _number(section, "clipped_count_stddev", optional=True)
    return kwargs


@dataclass(frozen=True)
class LeakageSettings:
    """A gradient-inversion attack of the run (``leakage`` group).

    Attributes
    ----------
    method : {"dlg", "idlg", "inverting_gradients"}
    target : {"update", "step"}
        ``update``: the server inverts a client's shared update (Wei, Liu et
        al.'s type 0). ``step``: per-step gradients inside local training
        (type 2), captured on the client and inverted by the server.
    rounds : tuple of int
        The rounds in which the attack is attempted.
    clients : int
        Participants attacked per listed round (the lowest client ids sampled).
    num_images : int
        ``step``: steps inverted per attacked client (each with its batch);
        ``update``: images reconstructed from each update.
    iterations, lr, tv_weight, restarts :
        The optimiser of the inversion.
    init : {"rand", "randn"}
        The dummy images' start in pixel space: U(0, 1) or N(0, 1) (the papers').
    line_search : {None, "strong_wolfe"}
        L-BFGS line search of DLG and iDLG.
    """

    method: str = "none"
    target: str = "update"
    rounds: tuple[int, ...] = (1,)
    clients: int = 1
    num_images: int = 1
    iterations: int = 300
    lr: float = 1.0
    tv_weight: float = 0.2
    restarts: int = 1
    init: str = "rand"
    line_search: str | None = None


def leakage_settings(section: dict[str, Any], fed: Federation) -> LeakageSettings | None:
    """The run's leakage attack (``None`` for ``leakage=none``), checked against the federation."""
    method = section.get("method", "none")
    if method not in LEAKAGE_METHODS:
        raise ConfigError(f"leakage.method={method!r} is unknown; pick one of {list(LEAKAGE_METHODS)}")
    if method == "none":
        return None
    settings = typed_section(section, LeakageSettings, "leakage")  # unknown keys and wrong types
    rounds = settings.rounds
    if not isinstance(rounds, list | tuple) or not rounds or not all(isinstance(r, int) for r in rounds):
        raise ConfigError(f"leakage.rounds must be a non-empty list of rounds, got {rounds!r}; e.g. leakage.rounds=[1]")
    late = [r for r in rounds if not 1 <= r <= fed.num_rounds]
    if late:
        raise ConfigError(
            f"leakage.rounds={list(rounds)} lists round(s) {late} outside 1..federation.num_rounds={fed.num_rounds}; "
            "drop them or raise federation.num_rounds"
        )
    settings = replace(settings, rounds=tuple(sorted(set(rounds))))
    if settings.target not in LEAKAGE_TARGETS:
        raise ConfigError(f"leakage.target={settings.target!r}: use update (the shared update) or step (type 2)")
    for key in ("clients", "num_images", "iterations", "restarts"):
        if getattr(settings, key) < 1:
            raise ConfigError(f"leakage.{key} must be >= 1, got {getattr(settings, key)}")
    if not 1 <= settings.clients <= fed.clients_per_round:
        raise ConfigError(
            f"leakage.clients={settings.clients} must be between 1 and federation.clients_per_round="
            f"{fed.clients_per_round}"
        )
    if settings.init not in ("rand", "randn"):
        raise ConfigError(f"leakage.init={settings.init!r}: use rand (U(0, 1)) or randn (N(0, 1))")
    if settings.line_search not in (None, "strong_wolfe"):
        raise ConfigError(f"leakage.line_search={settings.line_search!r}: use null or strong_wolfe")
    if settings.lr <= 0 or settings.tv_weight < 0:
        raise ConfigError(f"leakage.lr must be > 0 and leakage.tv_weight >= 0, got {settings.lr}, {settings.tv_weight}")
    return settings
