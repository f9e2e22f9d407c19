"""Every configured rule with a context that lets it run (shared by the property tests).

Not a test module (no ``test_`` prefix); imported by the tests next to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from strategies.rules.base import Layout, RoundContext
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
from strategies.rules.preaggregators import Composed, NearestNeighborMixing
from strategies.rules.signsgd import SignSGDMajority
from strategies.rules.trimmed_mean import TrimmedMean

N = 11  # enough for f = 2 everywhere (Bulyan needs 4f + 3 = 11)
F = 2
D = 16  # "conv.weight" (4,) + "fc.weight" (3, 4)
LAYOUT = Layout(names=("conv.weight", "fc.weight"), shapes=(torch.Size([4]), torch.Size([3, 4])), offsets=(0, 4))


@dataclass
class Case:
    name: str
    make: Callable[[], object]
    stateful: bool = False


DETECTORS = {"fltrust", "flame", "foolsgold", "pca_detect"}  # the only rules that fill ``flagged``


CASES = [
    Case("mean", lambda: Mean()),
    Case("krum", lambda: Krum(f=F)),
    Case("multikrum", lambda: MultiKrum(f=F)),
    Case("multikrum_m3", lambda: MultiKrum(f=F, m=3)),
    Case("median", lambda: Median()),
    Case("trimmed_mean", lambda: TrimmedMean(beta=0.2)),
    Case("bulyan", lambda: Bulyan(f=F)),
    Case("bulyan_multikrum", lambda: Bulyan(f=F, selection="multikrum")),
    Case("geomed", lambda: GeoMed(max_iter=50)),
    Case("centered_clipping", lambda: CenteredClipping(tau=1.0, iterations=3), stateful=True),
    Case("norm_bound", lambda: NormBound(max_norm=1.0, sigma=0.01)),
    Case("fltrust", lambda: FLTrust()),
    Case("flame", lambda: Flame(noise_lambda=0.001)),
    Case("foolsgold", lambda: FoolsGold(), stateful=True),
    Case("pca_detect", lambda: PCADetect(source=1, start_round=1)),
    Case("signsgd_majority", lambda: SignSGDMajority(lr=0.01)),
    Case("nnm_krum", lambda: Composed(Krum(f=F), [NearestNeighborMixing(f=F)])),
    Case("nnm_median", lambda: Composed(Median(), [NearestNeighborMixing(f=F)])),
]


def context_for(
    updates: torch.Tensor, server_round: int = 1, ids: list[int] | None = None, seed: int = 0
) -> RoundContext:
    """A full round context: layout, a server update, a seeded generator, client ids."""
    n, d = updates.shape
    server_update = torch.linspace(-1.0, 1.0, d, dtype=updates.dtype, device=updates.device)
    return RoundContext(
        server_round=server_round,
        weights=torch.full((n,), 1.0 / n, dtype=updates.dtype),
        layout=LAYOUT,
        global_vector=torch.zeros(d, dtype=updates.dtype, device=updates.device),
        server_update=server_update,
        generator=torch.Generator().manual_seed(seed),
        client_ids=list(range(n)) if ids is None else ids,
    )


def honest_updates(n: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Similar updates (a shared direction plus noise), as honest clients send."""
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(-0.5, 1.0, d, dtype=torch.float64)
    return (base + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)).to(dtype)
