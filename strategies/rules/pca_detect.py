"""PCA-based detection of label-flipping participants (Tolpegin, Truex, Gursoy and
Liu, ESORICS 2020, "Data poisoning attacks against federated learning systems").

From round ``start_round`` on, for each update take the row of the output
layer's weight matrix (``layer``, shape ``(classes, features)``) that feeds the
``source`` class, standardise each of the ``features`` dimensions across the
clients (zero mean, unit variance; a constant dimension is left at 0), project
onto the first two principal components, and split the projection into two
groups with a deterministic 2-means. Label flippers form a separate group in
the paper's plots.

As in the paper, the configured rule (:class:`PCADetect`) stacks the rows of
every participant of the recent rounds (``history_rounds``) with the current
round's before clustering; a single round of 5 participants is too few points
to split. The paper only plots the projection; to *score* it, this rule flags
the current round's members of the smaller group when the two groups are well
separated and aggregates the rest with the unweighted mean (the paper's FedAvg
variant). Criterion (not from the
paper, documented here): with ``c_1, c_2`` the group centroids and ``W`` the
within-group sum of squared distances in the 2-D projection,

    separation = ||c_1 - c_2|| / sqrt(W / (n - 2))

i.e. the distance between the centroids in units of the pooled within-group
standard deviation; flag the smaller group only if ``separation >=
min_separation`` and it is a strict minority. Calibration (computed here on
pure Gaussian noise, 128 features): the separation of a 2-means split has
median about 1.4 and stayed below 2.2 for n = 5 to 1000 clients; a single
dominant principal direction pushes it towards 2.65 (the 1-D value) as n
grows. With ``min_separation = 4``, a group shifted by 3 noise standard
deviations per feature was flagged exactly in 30 of 30 draws from n = 5 on.
The configured rule's default, ``min_separation = 2.65``, is that 1-D
ceiling, and it is also where stacked rounds of real honest Fashion-MNIST
training stop (see :class:`PCADetect`). :func:`pca_detect` takes ``min_separation``
explicitly, with no default.

The PCA defense is a detector (``detects = True``): ``flagged`` is this
round's members of the separated minority. It reports ``active = False`` when
it did not run as itself and returned the plain mean instead: before
``start_round``, while fewer than ``min_rows`` rows are stacked, and when fewer
than 3 rows could be clustered. Equal group sizes or a degenerate projection
flag nothing (the defense ran and found no minority). With ``history_rounds =
h``, at most ``n * (h + 1)`` rows are ever stacked, so
:meth:`PCADetect.check_clients` refuses an ``n`` at which that stays below
``min_rows``: the defense would never leave its plain-mean warm-up.

2-means: the first centre is the point farthest from the centroid, the second
the point farthest from the first (lowest index on exact ties), then Lloyd
iterations to a fixed point; sign flips of the principal axes and row order do
not change the groups.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from strategies.rules._common import everyone, finish, float_param, int_param, weighted_sum
from strategies.rules.base import Aggregate, Layout, RoundContext, RuleConfigError, check_updates


def source_rows(updates: Tensor, layout: Layout, layer: str, source: int) -> Tensor:
    """``(n, features)``: row ``source`` of tensor ``layer`` in every update, as float64."""
    try:
        cols = layout.slice_of(layer)
    except KeyError as err:
        raise RuleConfigError(f"pca_detect: {err.args[0]}") from None
    shape = layout.shapes[layout.names.index(layer)]
    if len(shape) != 2:
        raise RuleConfigError(f"pca_detect: layer {layer!r} must be a (classes, features) matrix, got {tuple(shape)}")
    if not 0 <= source < shape[0]:
        raise RuleConfigError(f"pca_detect: source={source} is not a class of {layer!r} with {shape[0]} rows")
    if cols.stop > updates.shape[1]:
        raise RuleConfigError(f"pca_detect: layout needs d >= {cols.stop}, updates have d={updates.shape[1]}")
    block = updates[:, cols].reshape(updates.shape[0], shape[0], shape[1])
    return block[:, source, :].to(torch.float64)


def project_2d(rows: Tensor) -> Tensor:
    """Standardise each column and project onto (at most) the first two principal components."""
    z = rows - rows.mean(dim=0)
    sd = rows.std(dim=0, unbiased=False)
    z = z / torch.where(sd > 0, sd, torch.ones_like(sd))
    u, s, _ = torch.linalg.svd(z, full_matrices=False)
    k = min(2, s.shape[0])
    return u[:, :k] * s[:k]


def two_means(points: Tensor, max_iter: int = 100) -> tuple[Tensor, Tensor]:
    """Deterministic 2-means: ``(labels (n,) long, centres (2, c))`` (see module docstring)."""
    first = int(torch.argmax((points - points.mean(dim=0)).square().sum(dim=1)))
    second = int(torch.argmax((points - points[first]).square().sum(dim=1)))
    centres = points[[first, second]].clone()
    labels = torch.zeros(points.shape[0], dtype=torch.long, device=points.device)
    for step in range(max_iter):
        d0 = (points - centres[0]).square().sum(dim=1)
        d1 = (points - centres[1]).square().sum(dim=1)
        new = (d1 < d0).long()  # exact ties go to the first centre
        if step > 0 and bool((new == labels).all()):
            break
        labels = new
        if bool((labels == 0).all()) or bool((labels == 1).all()):
            break
        centres = torch.stack([points[labels == 0].mean(dim=0), points[labels == 1].mean(dim=0)])
    return labels, centres


def _separation(points: Tensor, labels: Tensor, centres: Tensor) -> float:
    n = points.shape[0]
    gap = float(torch.linalg.vector_norm(centres[0] - centres[1]))
    within = float((points - centres[labels]).square().sum())
    if within <= 0:
        return math.inf if gap > 0 else 0.0
    return gap / math.sqrt(within / max(n - 2, 1))


def pca_detect(
    updates: Tensor,
    *,
    layout: Layout,
    source: int,
    layer: str = "fc.weight",
    min_separation: float,
    history: Tensor | None = None,
) -> Aggregate:
    """Flag the minority PCA cluster of the source-class output rows; average the rest.

    Parameters
    ----------
    updates : Tensor
        ``(n, d)`` update deltas.
    layout : Layout
        Where ``layer`` lives in the flat vector.
    source : int
        The class whose output row is inspected.
    layer : str
        Name of the output layer's weight matrix.
    min_separation : float
        Centroid distance in pooled within-group standard deviations needed
        to flag (> 0); no default (see the module docstring for calibration).
    history : Tensor, optional
        ``(h, features)`` source rows of earlier participants (Tolpegin et al. stack
        every participant of every round from round 10 on). They are clustered
        together with this round's rows; only this round's rows can be flagged.

    Returns
    -------
    Aggregate
        Unweighted mean of the unflagged rows; ``active = False`` (and the
        plain mean) when fewer than 3 rows, history included, are stacked.
    """
    source = int_param("pca_detect", "source", source, minimum=0)
    min_separation = float_param("pca_detect", "min_separation", min_separation, low=0.0, low_open=True)
    n = check_updates(updates)
    rows = source_rows(updates, layout, layer, source)
    if history is not None and history.numel():
        rows = torch.cat([history.to(rows), rows])
    flagged = torch.zeros(n, dtype=torch.bool, device=updates.device)
    info: dict[str, float] = {"separation": 0.0, "minority_size": 0.0, "stacked_rows": float(rows.shape[0])}
    clustered = rows.shape[0] >= 3
    if clustered:
        points = project_2d(rows)
        labels, centres = two_means(points)
        sizes = torch.bincount(labels, minlength=2)
        if int(sizes.min()) > 0 and int(sizes[0]) != int(sizes[1]):
            small = int(torch.argmin(sizes))
            sep = _separation(points, labels, centres)
            info.update(separation=sep, minority_size=float(sizes[small]))
            if sep >= min_separation:
                flagged = (labels[-n:] == small).to(updates.device)
    keep = ~flagged
    coef = keep.to(updates.dtype) / int(keep.sum())
    return Aggregate(
        vector=finish(weighted_sum(updates, coef), updates),
        weights=coef,
        selected=everyone(n, updates.device)[keep],
        flagged=everyone(n, updates.device)[flagged],
        info=info,
        active=clustered,
    )


class PCADetect:
    """Tolpegin et al.'s PCA defense as a configured rule (see :func:`pca_detect`).

    Parameters
    ----------
    source : int
        Source class of the suspected label flip.
    layer : str
        Output layer weight matrix; default ``"fc.weight"`` (the Fashion-MNIST CNN).
    start_round : int
        First round that detects (the paper: 10); before it the rule is
        inactive (``active = False``): plain mean, nothing flagged.
    min_separation : float
        Separation threshold; default 2.65 (see the module docstring and below).
    history_rounds : int
        Rounds of earlier participants' rows clustered with the current round's
        (Tolpegin et al. stack all participants from round 10 on; a window keeps
        the stack at a bounded size). 0 clusters each round on its own.
    min_rows : int
        Stacked rows (this round's and the window's) needed to cluster (>= 3);
        below it the rule is inactive: plain mean, nothing flagged.

    Notes
    -----
    Calibration on real Fashion-MNIST (paper A's setup: 50 clients, 5 per
    round, batch 4, lr 0.001; 30 rounds, a 20-round window; seeds 0, 1, 2;
    ``+experiment=pca_defense``). Per round alone, the 2-means split of 5
    points never separates. Stacked, without attackers (60 active rounds,
    nothing flagged): separation 1.25-1.8 in most rounds, but 4 of 60 rounds
    reached 2.1-3.0 (a small cluster of 2-4 honest outliers), so the earlier
    default 2.0 raised an alarm in 6.7 % of honest rounds. With 10 of 50
    malicious (6 -> 0): 2.2-3.8, rising as rows stack (1.7-3.1 in rounds
    11-14). Rounds above the threshold, honest / attacked: 2.0: 6.7 % / 90 %;
    2.4: 3.3 % / 85 %; 2.65: 1.7 % / 80 %; 3.0: 0 % / 62 %. Default 2.65, the
    1-D null ceiling: with it, the attacked runs measured TPR 0.84, FPR 0.004,
    precision 0.98 (rounds 11-30, 3 seeds) and kept source recall at 0.63
    (0.38-0.45 undefended, 0.63 clean); the honest-only false-positive rate is
    in the README. ``history_rounds=20``; the rule stays inactive until
    ``min_rows`` rows are stacked.
    """

    detects: ClassVar[bool] = True

    def __init__(
        self,
        *,
        source: int,
        layer: str = "fc.weight",
        start_round: int = 10,
        min_separation: float = 2.65,
        history_rounds: int = 20,
        min_rows: int = 10,
    ) -> None:
        self.source = int_param("pca_detect", "source", source, minimum=0)
        if not isinstance(layer, str) or not layer:
            raise RuleConfigError(f"pca_detect: layer must be a tensor name, got {layer!r}")
        self.layer = layer
        self.start_round = int_param("pca_detect", "start_round", start_round, minimum=1)
        self.min_separation = float_param("pca_detect", "min_separation", min_separation, low=0.0, low_open=True)
        self.history_rounds = int_param("pca_detect", "history_rounds", history_rounds, minimum=0)
        self.min_rows = int_param("pca_detect", "min_rows", min_rows, minimum=3)
        self._history: list[tuple[int, Tensor]] = []

    def check_clients(self, n: int) -> None:
        """Refuse ``n`` when ``n`` replies a round, over ``history_rounds + 1`` rounds, never stack ``min_rows``.

        At that ``n`` every round would be the plain-mean warm-up. The check
        assumes ``n`` replies in each stacked round: a round with fewer valid
        replies after larger ones may have had enough rows stacked.
        """
        if n < 1:
            raise RuleConfigError(f"pca_detect needs at least 1 reply, got n={n}")
        most = n * (self.history_rounds + 1)
        if most < self.min_rows:
            raise RuleConfigError(
                f"pca_detect with n={n} replies a round and history_rounds={self.history_rounds} stacks at most "
                f"n * (history_rounds + 1) = {most} rows, below min_rows={self.min_rows}: it would never cluster "
                f"and always return the plain mean; raise strategy.history_rounds, sample more clients per round, "
                f"or lower strategy.min_rows (>= 3)"
            )

    def __call__(self, updates: Tensor, context: RoundContext | None = None) -> Aggregate:
        ctx = context if context is not None else RoundContext()
        n = check_updates(updates)
        if ctx.server_round < self.start_round:
            return _inactive_mean(updates, {"separation": 0.0, "minority_size": 0.0})
        if ctx.layout is None:
            raise RuleConfigError("pca_detect needs the model layout in context.layout, got None")
        rows = source_rows(updates, ctx.layout, self.layer, self.source)  # validates layer and source
        past = [old for r, old in self._history if ctx.server_round - r <= self.history_rounds]
        history = torch.cat(past) if past else None
        if self.history_rounds > 0:
            self._history = [(r, old) for r, old in self._history if ctx.server_round - r < self.history_rounds]
            self._history.append((ctx.server_round, rows.cpu()))
        stacked = n + (0 if history is None else history.shape[0])
        if stacked < self.min_rows:
            return _inactive_mean(updates, {"separation": 0.0, "minority_size": 0.0, "stacked_rows": float(stacked)})
        return pca_detect(
            updates,
            layout=ctx.layout,
            source=self.source,
            layer=self.layer,
            min_separation=self.min_separation,
            history=history,
        )


def _inactive_mean(updates: Tensor, info: dict[str, float]) -> Aggregate:
    """The plain mean, nothing flagged, marked ``active=False`` (the defense did not run)."""
    n = updates.shape[0]
    coef = torch.full((n,), 1.0 / n, dtype=updates.dtype, device=updates.device)
    return Aggregate(
        vector=finish(weighted_sum(updates, coef), updates),
        weights=coef,
        selected=everyone(n, updates.device),
        flagged=everyone(n, updates.device)[:0],
        info=info,
        active=False,
    )
