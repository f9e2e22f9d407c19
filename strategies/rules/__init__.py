"""Pure aggregation rules over stacked update deltas (see ``base`` for the contract).

Each rule comes as a plain function (``krum(updates, f=...)``) and as a small
configured class (``Krum(f=...)``, called with ``(updates, context)``).

This package exports the classes (and the functions whose names differ from
their module's). The functions named like their modules (``krum``, ``median``,
``trimmed_mean``, ``bulyan``, ``geomed``, ``centered_clipping``,
``norm_bound``, ``fltrust``, ``flame``, ``foolsgold``, ``pca_detect``,
``mean``) are exported one level up, ``from strategies import krum``, or from
their module, ``from strategies.rules.krum import krum``. Re-exporting them
here would rebind ``strategies.rules.krum`` from the module to the function,
and Hydra's ``_target_: strategies.rules.krum.Krum`` lookups walk those
attributes, so every config target would break.
"""

from strategies.rules.base import Aggregate, Layout, RoundContext, RuleConfigError
from strategies.rules.bulyan import Bulyan
from strategies.rules.centered_clipping import CenteredClipping
from strategies.rules.flame import Flame
from strategies.rules.fltrust import FLTrust
from strategies.rules.foolsgold import FoolsGold
from strategies.rules.geomed import GeoMed
from strategies.rules.krum import Krum, MultiKrum, multikrum
from strategies.rules.mean import Mean
from strategies.rules.median import Median
from strategies.rules.norm_bound import NormBound
from strategies.rules.pca_detect import PCADetect
from strategies.rules.preaggregators import (
    Bucketing,
    Composed,
    NearestNeighborMixing,
    bucketing,
    nearest_neighbor_mixing,
)
from strategies.rules.signsgd import SignSGDMajority, signsgd_majority
from strategies.rules.trimmed_mean import TrimmedMean

__all__ = [
    "Aggregate",
    "Bucketing",
    "Bulyan",
    "CenteredClipping",
    "Composed",
    "FLTrust",
    "Flame",
    "FoolsGold",
    "GeoMed",
    "Krum",
    "Layout",
    "Mean",
    "Median",
    "MultiKrum",
    "NearestNeighborMixing",
    "NormBound",
    "PCADetect",
    "RoundContext",
    "RuleConfigError",
    "SignSGDMajority",
    "TrimmedMean",
    "bucketing",
    "multikrum",
    "nearest_neighbor_mixing",
    "signsgd_majority",
]
