"""The one list of user-facing strategy names and the rule class behind each.

A name is the file stem of its config in ``conf/strategy/`` (``strategy=krum``
composes ``conf/strategy/krum.yaml``), and :data:`RULES` maps it to the class
that yaml's ``_target_`` instantiates; :data:`PREAGGREGATORS` does the same for
the pre-aggregators a strategy can list under ``preaggregators``. Runs are still
built by Hydra ``_target_`` instantiation only (this is no dispatch table); the
registry is the catalogue for code that needs the names (tests, summaries) or a
rule's kind (``RULES[name].detects``), so no caller keeps its own list.

Importing it costs what ``strategies.rules`` costs (torch, numpy): no Flower,
no Hydra.
"""

from __future__ import annotations

from strategies.rules.bulyan import Bulyan
from strategies.rules.centered_clipping import CenteredClipping
from strategies.rules.flame import Flame
from strategies.rules.fltrust import FLTrust
from strategies.rules.foolsgold import FoolsGold
from strategies.rules.geomed import GeoMed
from strategies.rules.krum import Krum, MultiKrum
from strategies.rules.mean import Mean
from strategies.rules.median import Median
from strategies.rules.norm_bound import NormBound
from strategies.rules.pca_detect import PCADetect
from strategies.rules.preaggregators import Bucketing, NearestNeighborMixing
from strategies.rules.signsgd import SignSGDMajority
from strategies.rules.trimmed_mean import TrimmedMean

RULES: dict[str, type] = {
    "fedavg": Mean,
    "fedavg_weighted": Mean,
    "krum": Krum,
    "multikrum": MultiKrum,
    "median": Median,
    "trimmed_mean": TrimmedMean,
    "bulyan": Bulyan,
    "geomed": GeoMed,
    "centered_clipping": CenteredClipping,
    "norm_bound": NormBound,
    "fltrust": FLTrust,
    "flame": Flame,
    "foolsgold": FoolsGold,
    "pca_detect": PCADetect,
    "signsgd_majority": SignSGDMajority,
}
"""Strategy name (``conf/strategy/<name>.yaml``) -> rule class."""

PREAGGREGATORS: dict[str, type] = {
    "bucketing": Bucketing,
    "nnm": NearestNeighborMixing,
}
"""Pre-aggregator name (the name its errors use) -> class."""

__all__ = ["PREAGGREGATORS", "RULES"]
