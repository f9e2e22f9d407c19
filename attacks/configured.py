"""From an ``attack`` config section to a threat model and an attack object.

An ``attack`` section mixes two things: the threat model (``num_malicious`` or
``fraction``, ``start_round``, ``end_round``, ``availability``) and the attack
itself (``_target_`` and its keyword-only hyper-parameters). ``attack=none`` has
no ``_target_``. The attack's kind decides where it runs:

* ``data`` (``(x, y) -> (x, y)``) and ``update`` (``update -> update``) run on the
  malicious client itself, in simulation and in a deployment alike;
* ``colluding`` (honest updates -> malicious updates) is omniscient: it runs in a
  server-side wrapper that only the simulation has.
"""

from __future__ import annotations

from typing import Any

from attacks.threat import ThreatModel, resolve_num_malicious

THREAT_KEYS = ("name", "num_malicious", "fraction", "start_round", "end_round", "availability", "malicious_clients")
KINDS = {"attacks.data": "data", "attacks.update": "update", "attacks.colluding": "colluding"}


def kind_of(attack: Any) -> str:
    """``data``, ``update`` or ``colluding``: a ``kind`` attribute, else the defining module."""
    kind = getattr(attack, "kind", None) or KINDS.get(type(attack).__module__)
    if kind not in ("data", "update", "colluding"):
        raise ValueError(
            f"cannot tell the kind of attack {type(attack).__name__}: give it a class attribute "
            "kind = 'data' | 'update' | 'colluding'"
        )
    return kind


def build_attack(section: dict[str, Any]) -> Any | None:
    """Instantiate the attack of an ``attack`` section (``None`` for ``attack=none``)."""
    from common.config import instantiate_component

    if "_target_" not in section:
        return None
    return instantiate_component({k: v for k, v in section.items() if k not in THREAT_KEYS}, "attack")


def build_threat(section: dict[str, Any], num_clients: int, seed: int) -> ThreatModel:
    """The run's threat model; ``attack=none`` gives an empty malicious set.

    ``num_malicious`` wins over ``fraction`` when both are set (``fraction`` is used
    only when ``num_malicious`` is null).
    """
    if "_target_" not in section:
        return ThreatModel(num_clients=num_clients, malicious=[])
    count = section.get("num_malicious")
    m = resolve_num_malicious(
        num_clients,
        num_malicious=count,
        fraction=section.get("fraction") if count is None else None,
    )
    if "malicious_clients" in section:
        malicious = list(section["malicious_clients"])
        if len(malicious) != m:
            raise ValueError(f"attack.malicious_clients has {len(malicious)} ids but {m} were asked for")
        return ThreatModel(
            num_clients=num_clients,
            malicious=malicious,
            start_round=section.get("start_round"),
            end_round=section.get("end_round"),
            availability=section.get("availability"),
        )
    return ThreatModel.from_seed(
        num_clients=num_clients,
        seed=seed,
        num_malicious=m,
        start_round=section.get("start_round"),
        end_round=section.get("end_round"),
        availability=section.get("availability"),
    )


def bind_to_population(attack: Any, threat: ThreatModel) -> Any:
    """Fix population-level parameters of an attack from the threat model.

    ALIE without an explicit ``z`` takes Baruch et al.'s ``z_max`` for the whole
    federation (``n`` clients of which ``m`` are malicious), as in the paper,
    rather than recomputing it from each round's sample (a round in which the
    sampled attackers are a majority would leave it undefined).
    """
    from attacks.colluding import ALIE

    if isinstance(attack, ALIE) and attack.z is None:
        return ALIE(z=ALIE.z_max(threat.num_clients, threat.num_malicious))
    return attack
