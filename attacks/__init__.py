"""Poisoning attacks on federated learning (pure torch, no Flower).

Every attack class declares its kind (``kind = "data" | "update" |
"colluding"``), which fixes its interface:

* data poisoning, ``(x, y) -> (x, y)`` on a client: :mod:`attacks.label_flip`,
  :mod:`attacks.backdoor`;
* update poisoning, ``update -> update`` on a client: :mod:`attacks.update`;
* colluding (omniscient), ``honest (h, d) -> malicious (m, d)``, applied by a
  server-side wrapper in simulation: :mod:`attacks.colluding_stats` (ALIE,
  IPM), :mod:`attacks.colluding_search` (Min-Max, Min-Sum), :mod:`attacks.fang`;
  a round in which one cannot be formed raises :class:`CollusionInfeasible`.

:mod:`attacks.threat` says who is malicious, when and how often (Tolpegin et
al. 2020); :mod:`attacks.registry` maps the user-facing names to the classes.
"""

from attacks._colluding import CollusionInfeasible
from attacks.backdoor import DBA, Backdoor, BadNets, Blended, backdoor_test_set
from attacks.colluding_search import MinMax, MinSum
from attacks.colluding_stats import ALIE, IPM
from attacks.fang import FangKrum, FangTrimmedMean
from attacks.label_flip import TargetedLabelFlip, UntargetedLabelFlip
from attacks.registry import ATTACKS, KINDS, kind_of
from attacks.threat import ThreatModel, draw_malicious, resolve_num_malicious
from attacks.update import GaussianNoise, Scaling, SignFlip, model_replacement_boost

__all__ = [
    "ALIE",
    "ATTACKS",
    "DBA",
    "IPM",
    "KINDS",
    "Backdoor",
    "BadNets",
    "Blended",
    "CollusionInfeasible",
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
    "kind_of",
    "model_replacement_boost",
    "resolve_num_malicious",
]
