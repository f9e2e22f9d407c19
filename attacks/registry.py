"""Every attack by its user-facing name, and the kind of an attack.

The names are the file names of ``conf/attack/`` (``attack=<name>`` on the
command line); the configs build attacks through their ``_target_`` (a test
checks that each one names the class registered here). The kind says where an
attack runs: ``data`` (``(x, y) -> (x, y)``) and ``update`` (``update ->
update``) on the malicious client itself; ``colluding`` (honest updates ->
malicious updates) in the simulation's server-side wrapper.
"""

from __future__ import annotations

from typing import Any

from attacks.backdoor import DBA, BadNets, Blended
from attacks.colluding_search import MinMax, MinSum
from attacks.colluding_stats import ALIE, IPM
from attacks.fang import FangKrum, FangTrimmedMean
from attacks.label_flip import TargetedLabelFlip, UntargetedLabelFlip
from attacks.update import GaussianNoise, Scaling, SignFlip

KINDS: tuple[str, ...] = ("data", "update", "colluding")

ATTACKS: dict[str, type] = {
    "label_flip": TargetedLabelFlip,
    "untargeted_flip": UntargetedLabelFlip,
    "badnets": BadNets,
    "blended": Blended,
    "dba": DBA,
    "sign_flip": SignFlip,
    "gaussian_noise": GaussianNoise,
    "scaling": Scaling,
    "alie": ALIE,
    "ipm": IPM,
    "min_max": MinMax,
    "min_sum": MinSum,
    "fang_krum": FangKrum,
    "fang_trimmed_mean": FangTrimmedMean,
}


def kind_of(attack: Any) -> str:
    """The ``kind`` class attribute of an attack (an instance or its class): one of :data:`KINDS`.

    Raises
    ------
    ValueError
        When the class declares no ``kind``, or one outside :data:`KINDS`; the message names the class.
    """
    cls = attack if isinstance(attack, type) else type(attack)
    kind = getattr(cls, "kind", None)
    if kind not in KINDS:
        raise ValueError(
            f"cannot tell the kind of attack {cls.__name__}: give it a class attribute "
            f"kind: ClassVar[str] = 'data' | 'update' | 'colluding' (got kind={kind!r})"
        )
    return kind
