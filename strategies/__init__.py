"""Aggregation strategies: pure rules (``strategies.rules``) and, separately, the Flower adapter.

This package is kept light: importing it pulls in torch and numpy only, never
Flower (the adapter lives in ``strategies.robust`` and is imported explicitly).
"""

from strategies.rules import (
    Aggregate,
    Bucketing,
    Bulyan,
    CenteredClipping,
    Composed,
    Flame,
    FLTrust,
    FoolsGold,
    GeoMed,
    Krum,
    Layout,
    Mean,
    Median,
    MultiKrum,
    NearestNeighborMixing,
    NormBound,
    PCADetect,
    RoundContext,
    RuleConfigError,
    SignSGDMajority,
    TrimmedMean,
    bucketing,
    multikrum,
    nearest_neighbor_mixing,
)
from strategies.rules.bulyan import bulyan
from strategies.rules.centered_clipping import centered_clipping
from strategies.rules.flame import flame
from strategies.rules.fltrust import fltrust
from strategies.rules.foolsgold import foolsgold
from strategies.rules.geomed import geomed
from strategies.rules.krum import krum
from strategies.rules.mean import mean
from strategies.rules.median import median
from strategies.rules.norm_bound import norm_bound
from strategies.rules.pca_detect import pca_detect
from strategies.rules.signsgd import signsgd_majority
from strategies.rules.trimmed_mean import trimmed_mean

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
    "bulyan",
    "centered_clipping",
    "flame",
    "fltrust",
    "foolsgold",
    "geomed",
    "krum",
    "mean",
    "median",
    "multikrum",
    "nearest_neighbor_mixing",
    "norm_bound",
    "pca_detect",
    "signsgd_majority",
    "trimmed_mean",
]
