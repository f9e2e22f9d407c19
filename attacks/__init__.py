"""Poisoning attacks on federated learning (pure torch, no Flower).

Four kinds, each with an explicit interface:

* :mod:`attacks.threat` — who is malicious, when, how often (Tolpegin et al. 2020);
* :mod:`attacks.data` — data poisoning, ``(x, y) -> (x, y)`` on a client;
* :mod:`attacks.update` — update poisoning, ``update -> update`` on a client;
* :mod:`attacks.colluding` — omniscient colluding attacks, ``honest (h, d) ->
  malicious (m, d)``, applied by a server-side wrapper in simulation.
"""

from attacks.colluding import ALIE, IPM, FangKrum, FangTrimmedMean, MinMax, MinSum
from attacks.data import (
    DBA,
    Backdoor,
    BadNets,
    Blended,
    TargetedLabelFlip,
    UntargetedLabelFlip,
    backdoor_test_set,
)
from attacks.threat import ThreatModel, draw_malicious, resolve_num_malicious
from attacks.update import GaussianNoise, Scaling, SignFlip, model_replacement_boost

__all__ = [
    "ALIE",
    "DBA",
    "IPM",
    "Backdoor",
    "BadNets",
    "Blended",
    "FangKrum",
    "FangTrimmedMean",
    "GaussianNoise",
    "MinMax",
    "MinSum",
    "Scaling",
    "SignFlip",
    "TargetedLabelFlip",
    "ThreatModel",
    "UntargetedLabelFlip",
    "backdoor_test_set",
    "draw_malicious",
    "model_replacement_boost",
    "resolve_num_malicious",
]
