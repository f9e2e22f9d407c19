"""The threat model: who is malicious, when they act, how often they are sampled.

Follows Tolpegin et al., "Data Poisoning Attacks Against Federated Learning
Systems" (ESORICS 2020, arXiv 2007.08432), as in the authors' code:

* a **fixed** set of ``m`` malicious participants is drawn uniformly at random
  from the ``N`` clients once per run, from the run seed (never "the first m");
* an **attack window** ``[start_round, end_round]`` (inclusive, 1-based) during
  which malicious clients may be sampled. The paper's "early only" (malicious
  clients may be sampled only before the breakpoint round ``E``) is
  ``end_round=E - 1``; "late only" (only from ``E`` on) is ``start_round=E``.
  Outside the window every round's clients come from the benign group only;
* **availability** ``alpha``: inside the window, each of the ``k`` slots of a
  round is filled from the malicious group with probability ``alpha`` and from
  the benign group otherwise, without duplicates. ``alpha=None`` means the
  ordinary federation: ``k`` of the ``N`` clients uniformly at random, with no
  regard to role.

Client ids are the partition ids ``0 .. N-1``. Everything here is pure: the
random draws come from the seed or from a passed-in ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from attacks._checks import is_int
from common.streams import Stream


def resolve_num_malicious(num_clients: int, num_malicious: int | None = None, fraction: float | None = None) -> int:
    """Turn either a count or a fraction of malicious clients into a count.

    Parameters
    ----------
    num_clients : int
        Total number of clients ``N`` (>= 1).
    num_malicious : int, optional
        Number of malicious clients, ``0 <= m <= N``.
    fraction : float, optional
        Share of malicious clients in ``[0, 1]``; the count is the nearest
        integer to ``fraction * N`` with halves rounded up
        (``floor(fraction * N + 0.5)``), e.g. 0.3 of 50 -> 15, 0.25 of 10 -> 3.

    Returns
    -------
    int
        The number of malicious clients.

    Raises
    ------
    ValueError
        Unless exactly one of ``num_malicious`` and ``fraction`` is given and it
        is in range.
    """
    if not is_int(num_clients) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive integer, got {num_clients!r}")
    if (num_malicious is None) == (fraction is None):
        raise ValueError(
            "give exactly one of num_malicious and fraction, got "
            f"num_malicious={num_malicious!r}, fraction={fraction!r}; set the other to null"
        )
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction of malicious clients must be in [0, 1], got fraction={fraction!r}")
        return math.floor(fraction * num_clients + 0.5)
    if not is_int(num_malicious) or not 0 <= num_malicious <= num_clients:
        raise ValueError(
            f"num_malicious must be an integer in [0, num_clients={num_clients}], got "
            f"num_malicious={num_malicious!r}; lower it or raise num_clients"
        )
    return int(num_malicious)


def draw_malicious(num_clients: int, num_malicious: int, seed: int) -> list[int]:
    """Draw the fixed set of malicious client ids (Tolpegin et al. 2020).

    The set is a uniformly random ``num_malicious``-subset of ``0 .. N-1``: the
    first ``num_malicious`` entries of a random permutation drawn from a stream
    derived from ``seed`` (``numpy.random.SeedSequence`` with the tag
    ``Stream.MALICIOUS_SET`` as spawn key, so it does not correlate with other
    uses of the run seed). It depends on ``(num_clients, num_malicious, seed)``
    only, and sets drawn with the same seed are nested: the 5 malicious clients
    of a run are among its 10 when the count is raised, which keeps sweeps over
    the malicious share comparable.

    Parameters
    ----------
    num_clients : int
        Total number of clients ``N``.
    num_malicious : int
        Size of the set, ``0 <= m <= N``.
    seed : int
        The run seed (non-negative).

    Returns
    -------
    list of int
        Sorted client ids.
    """
    m = resolve_num_malicious(num_clients, num_malicious=num_malicious)
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got seed={seed!r}")
    state = np.random.SeedSequence(int(seed), spawn_key=(int(Stream.MALICIOUS_SET),)).generate_state(2, np.uint32)
    derived = (int(state[0]) << 32) | int(state[1])
    generator = torch.Generator().manual_seed(derived)
    perm = torch.randperm(num_clients, generator=generator)
    return sorted(int(i) for i in perm[:m])


class ThreatModel:
    """Who is malicious, when the attack runs, and how rounds are sampled.

    Threat model of Tolpegin et al. (ESORICS 2020): a fixed malicious set, an
    attack window and an availability ``alpha``.

    Parameters
    ----------
    num_clients : int
        Total number of clients ``N``.
    malicious : sequence of int
        Ids of the malicious clients (distinct, in ``0 .. N-1``). Use
        :meth:`from_seed` to draw them from the run seed.
    start_round, end_round : int, optional
        Attack window, inclusive and 1-based; ``None`` leaves that side open.
        Malicious clients can be sampled only inside the window.
    availability : float, optional
        ``alpha`` in ``[0, 1]``: inside the window each of a round's ``k`` slots
        is filled from the malicious group with probability ``alpha``. ``None``:
        ordinary uniform sampling of ``k`` of ``N`` inside the window.
    """

    def __init__(
        self,
        *,
        num_clients: int,
        malicious: Sequence[int],
        start_round: int | None = None,
        end_round: int | None = None,
        availability: float | None = None,
    ) -> None:
        if not is_int(num_clients) or num_clients < 1:
            raise ValueError(f"num_clients must be a positive integer, got {num_clients!r}")
        ids = list(malicious)
        if not all(is_int(i) for i in ids):
            raise ValueError(f"malicious ids must be integers, got {ids!r}")
        bad = [i for i in ids if not 0 <= i < num_clients]
        if bad:
            raise ValueError(f"malicious ids {bad} are outside 0..{num_clients - 1} (num_clients={num_clients})")
        if len(set(ids)) != len(ids):
            raise ValueError(f"malicious ids must be distinct, got {sorted(ids)}")
        for name, value in (("start_round", start_round), ("end_round", end_round)):
            if value is not None and (not is_int(value) or value < 1):
                raise ValueError(f"{name} must be a 1-based round number or null, got {name}={value!r}")
        if start_round is not None and end_round is not None and start_round > end_round:
            raise ValueError(
                f"empty attack window: start_round={start_round} > end_round={end_round}; "
                "swap them or leave one side open (null)"
            )
        if availability is not None and (
            isinstance(availability, bool)
            or not isinstance(availability, (int, float))
            or not 0.0 <= availability <= 1.0
        ):
            raise ValueError(f"availability must be in [0, 1] or null, got availability={availability!r}")
        self.num_clients = int(num_clients)
        self.malicious: tuple[int, ...] = tuple(sorted(int(i) for i in ids))
        mal = set(self.malicious)
        self.benign: tuple[int, ...] = tuple(i for i in range(num_clients) if i not in mal)
        self.start_round = None if start_round is None else int(start_round)
        self.end_round = None if end_round is None else int(end_round)
        self.availability = None if availability is None else float(availability)
        self._rank = {cid: r for r, cid in enumerate(self.malicious)}

    @classmethod
    def from_seed(
        cls,
        *,
        num_clients: int,
        seed: int,
        num_malicious: int | None = None,
        fraction: float | None = None,
        start_round: int | None = None,
        end_round: int | None = None,
        availability: float | None = None,
    ) -> ThreatModel:
        """Build a threat model whose malicious set is drawn from the run seed.

        Exactly one of ``num_malicious`` and ``fraction`` must be given (see
        :func:`resolve_num_malicious`); the set is :func:`draw_malicious`.
        """
        m = resolve_num_malicious(num_clients, num_malicious=num_malicious, fraction=fraction)
        return cls(
            num_clients=num_clients,
            malicious=draw_malicious(num_clients, m, seed),
            start_round=start_round,
            end_round=end_round,
            availability=availability,
        )

    @property
    def num_malicious(self) -> int:
        """Size of the malicious set."""
        return len(self.malicious)

    def is_malicious(self, cid: int) -> bool:
        """Whether client ``cid`` belongs to the malicious set."""
        return cid in self._rank

    def attacker_rank(self, cid: int) -> int:
        """Index of malicious client ``cid`` among the malicious clients (``0 .. m-1``)."""
        try:
            return self._rank[cid]
        except KeyError:
            raise ValueError(f"client {cid} is not malicious; malicious clients: {list(self.malicious)}") from None

    def active(self, server_round: int) -> bool:
        """Whether ``server_round`` (1-based) lies inside the attack window."""
        _check_round(server_round)
        if self.start_round is not None and server_round < self.start_round:
            return False
        return self.end_round is None or server_round <= self.end_round

    def check_clients_per_round(self, k: int) -> None:
        """Fail at configuration time if rounds of ``k`` clients cannot be sampled.

        ``k`` must not exceed ``N``, and when the window is bounded (some
        rounds are benign-only) it must not exceed the number of benign clients.
        """
        if not is_int(k) or not 1 <= k <= self.num_clients:
            raise ValueError(f"clients per round must be in [1, num_clients={self.num_clients}], got k={k!r}")
        bounded = (self.start_round is not None and self.start_round > 1) or self.end_round is not None
        if bounded and k > len(self.benign):
            raise ValueError(
                f"rounds outside the attack window sample only benign clients, but k={k} > "
                f"{len(self.benign)} benign clients (num_clients={self.num_clients}, "
                f"num_malicious={self.num_malicious}); lower k or the number of malicious clients"
            )

    def sample_round(self, server_round: int, k: int, generator: torch.Generator) -> list[int]:
        """Pick the ``k`` clients of one round.

        * Outside the attack window: ``k`` distinct clients uniformly from the
          benign group only.
        * Inside the window with ``availability=None``: ``k`` distinct clients
          uniformly from all ``N`` clients, with no regard to role.
        * Inside the window with ``availability=alpha``: each of the ``k`` slots
          is independently assigned to the malicious group with probability
          ``alpha`` and to the benign group otherwise; the members of each group
          are then drawn uniformly without replacement. When a group has fewer
          members than the slots assigned to it, the surplus slots are filled
          from the other group (so the round still has ``k`` distinct clients).

        Parameters
        ----------
        server_round : int
            1-based round number.
        k : int
            Clients per round.
        generator : torch.Generator
            Source of randomness (CPU generator).

        Returns
        -------
        list of int
            Sorted, distinct client ids.
        """
        self.check_clients_per_round(k)
        if not self.active(server_round):
            return _pick(self.benign, k, generator)
        if self.availability is None:
            return _pick(range(self.num_clients), k, generator)
        wants_malicious = int((torch.rand(k, generator=generator) < self.availability).sum())
        num_mal = min(max(wants_malicious, k - len(self.benign)), len(self.malicious))
        return sorted(_pick(self.malicious, num_mal, generator) + _pick(self.benign, k - num_mal, generator))


def _pick(population: Sequence[int] | range, count: int, generator: torch.Generator) -> list[int]:
    pool = list(population)
    if count == 0:
        return []
    idx = torch.randperm(len(pool), generator=generator)[:count]
    return sorted(pool[int(i)] for i in idx)


def _check_round(server_round: int) -> None:
    if not is_int(server_round) or server_round < 1:
        raise ValueError(f"server_round must be a 1-based round number, got {server_round!r}")
