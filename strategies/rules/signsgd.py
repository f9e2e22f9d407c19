"""signSGD with majority vote (Bernstein, Zhao, Azizzadenesheli and Anandkumar, ICLR 2019,
"signSGD with majority vote is communication efficient and fault tolerant").

Each client contributes the element-wise sign of its update; the server takes
the element-wise majority vote and applies it with a server step ``lr``:

    vector = lr * sign(sum_i sign(u_i))

A tied coordinate (as many ``+1`` as ``-1`` votes) gets 0, and so does a
coordinate every client left at exactly 0 (``sign(0) = 0``: such a client
abstains on that coordinate).

Variant: the paper's workers vote with the sign of a stochastic gradient (or of
their momentum) at every step and the server steps *against* the vote; here
every client votes once per round with the sign of its local update delta
(local model minus global model after local training). A delta already points
downhill, so the vote is *added* to the global model.

Step size: the aggregate moves every coordinate on which a majority exists by
exactly ``lr``, whatever the size of the updates. The default ``lr = 0.001``
fits poisonlab's default Fashion-MNIST training (one local epoch at lr 0.001),
whose deltas are about 1e-3 to 1e-2 per coordinate: the vote then moves the
model by the lower end of an honest update's own step. Tune it with the
clients' learning rate and epochs.

Robustness, what it can and cannot do: a coordinate's vote follows the honest
clients whenever their margin there, ``|sum_{honest} sign(u_i)|``, exceeds the
number ``f`` of adversarial votes. So where the honest clients agree, fewer
than half adversarial clients (``f < n / 2``) can never flip the result
(exactly half can force a tie, hence 0), and the magnitude of a malicious
update counts for nothing (one vote per coordinate: scaling attacks are void).
The paper proves convergence against "blind multiplicative" adversaries (who
cannot see the honest updates) making up any fraction below one half. It does
*not* protect the coordinates on which the honest clients are split (margin
``<= f``): there the adversaries can tie or flip the vote, and an omniscient
minority that knows the honest signs (the colluding attacks, e.g. ALIE or IPM)
can spend its votes exactly on those.

Attribution: the vote is not a weighted sum of the rows; every client casts one
equal vote per coordinate, so ``weights`` are ``1/n`` each, every row is
``selected`` and nothing is flagged (``detects = False``). ``info["tied"]``
counts the coordinates that got 0.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from strategies.rules._common import acc_dtype, column_slices, everyone, float_param, nobody
from strategies.rules.base import Aggregate, RoundContext, RuleConfigError, check_updates

DEFAULT_LR = 0.001


def signsgd_majority(updates: Tensor, *, lr: float) -> Aggregate:
    """Element-wise majority vote of the updates' signs, scaled by the server step ``lr``.

    Parameters
    ----------
    updates : Tensor
        ``(n, d)`` update deltas.
    lr : float
        Server step applied to the vote (> 0).

    Returns
    -------
    Aggregate
        ``lr * sign(sum_i sign(u_i))``; weights ``1/n`` each; every row selected; nothing flagged.
    """
    lr = float_param("signsgd_majority", "lr", lr, low=0.0, low_open=True)
    n = check_updates(updates)
    d = updates.shape[1]
    acc = acc_dtype(updates.dtype)  # vote counts are small integers: exact in float32 up to 2**24 voters
    votes = torch.empty(d, dtype=acc, device=updates.device)
    for cols in column_slices(n, d, updates.device):
        votes[cols] = torch.sign(updates[:, cols]).sum(dim=0, dtype=acc)
    majority = torch.sign(votes)
    return Aggregate(
        vector=(lr * majority).to(updates.dtype),
        weights=torch.full((n,), 1.0 / n, dtype=updates.dtype, device=updates.device),
        selected=everyone(n, updates.device),
        flagged=nobody(updates.device),
        info={"lr": lr, "tied": float((majority == 0).sum())},
    )


class SignSGDMajority:
    """signSGD with majority vote as a configured rule (see :func:`signsgd_majority`).

    Parameters
    ----------
    lr : float
        Server step applied to the vote (> 0); default 0.001, sized for
        poisonlab's default Fashion-MNIST training (see the module docstring).
    """

    detects: ClassVar[bool] = False

    def __init__(self, *, lr: float = DEFAULT_LR) -> None:
        self.lr = float_param("signsgd_majority", "lr", lr, low=0.0, low_open=True)

    def check_clients(self, n: int) -> None:
        """Any positive number of replies will do (one vote is a vote; it is never the plain mean)."""
        if n < 1:
            raise RuleConfigError(f"signsgd_majority needs at least 1 reply, got n={n}")

    def __call__(self, updates: Tensor, context: RoundContext | None = None) -> Aggregate:
        return signsgd_majority(updates, lr=self.lr)
