"""Faulty clients on demand: a SuperNode whose replies are malformed, to test what the server does with them.

A deployment's SuperNode started with node config ``fault="<kind>"`` trains
as usual and then sends a malformed reply: ``nan`` (a NaN in its first
tensor), ``shape`` (its first tensor with one more row), ``dtype`` (its first
tensor as float64) or ``missing`` (no model at all, only metrics). This is
the bit-flipping, truncating or buggy client of a real network; the server
must reject such a reply (``rejected`` in ``metrics.jsonl``, never
aggregated) and keep the global model finite. Honest or malicious role and
the attack are independent of it.
"""

from __future__ import annotations

import math

import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict

FAULT_KEY = "fault"
FAULTS = ("nan", "shape", "dtype", "missing")


def check_fault(kind: str) -> str:
    """``kind`` itself, or an error naming the faults a SuperNode can be given."""
    if kind not in FAULTS:
        raise RuntimeError(f'node config fault="{kind}" is not one of {list(FAULTS)}; remove it for a sound client')
    return kind


def faulty_reply(kind: str, state: dict[str, torch.Tensor], metrics: MetricRecord) -> RecordDict:
    """The reply content a client with fault ``kind`` sends instead of ``state`` (see the module docstring)."""
    check_fault(kind)
    if kind == "missing":
        return RecordDict({"metrics": metrics})
    state = {k: v.clone() for k, v in state.items()}
    first = next(iter(state))
    if kind == "nan":
        state[first].view(-1)[0] = math.nan
    elif kind == "shape":
        state[first] = torch.cat([state[first], state[first][:1]])
    else:
        state[first] = state[first].double()
    return RecordDict({"arrays": ArrayRecord(state), "metrics": metrics})
