"""Named random streams: one run seed, one independent generator per purpose.

Every random draw of a run comes from the run seed through
``numpy.random.SeedSequence``, mixed with the identifiers of the draw (a client
id, a round) and the tag of its purpose below. Two purposes never share a tag,
so, e.g., a malicious client's poisoning noise is independent of its batch
order, and adding a new stream never shifts an existing one.

The numeric values are part of a run's reproducibility: never renumber them,
add new names with new values.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import torch


class Stream(IntEnum):
    """Purpose tags mixed into the run seed (see the module docstring)."""

    #: a client's mini-batch order during local training (seed, client, round)
    CLIENT_BATCHES = 1
    #: which clients take part in a round (seed, round)
    ROUND_SAMPLING = 2
    #: noise and random choices of the aggregation rule (seed)
    RULE = 3
    #: a data-poisoning attack on a malicious client (seed, client, round)
    DATA_POISONING = 4
    #: omniscient colluding attackers at the server (seed, round)
    COLLUDING = 5
    #: FLTrust's clean root-set draw (seed)
    ROOT_SET = 6
    #: FLTrust's server training on its root set (seed, call)
    ROOT_TRAINING = 7
    #: an update-poisoning attack on a malicious client (seed, client, round)
    UPDATE_POISONING = 8
    #: a client's DP-SGD noise (seed, client, round)
    DP_NOISE = 9
    #: a gradient-leakage attack's random starts (seed, client, round)
    LEAKAGE = 10
    #: the fixed malicious set of the threat model (seed); a SeedSequence spawn key ("MAL")
    MALICIOUS_SET = 0x4D414C


def derived_seed(*parts: int) -> int:
    """A 63-bit seed derived from the run seed and identifiers (client, round, stream tag)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> 1)


def stream(purpose: Stream, seed: int, *ids: int) -> torch.Generator:
    """A CPU ``torch.Generator`` for ``purpose`` in run ``seed``, for the draw named by ``ids``.

    Examples
    --------
    ``stream(Stream.CLIENT_BATCHES, seed, client_id, server_round)``
    """
    return torch.Generator().manual_seed(derived_seed(int(seed), *map(int, ids), int(purpose)))
