"""Index batches of local training: epochs and a fixed number of steps, seeded."""

from __future__ import annotations

import torch

from common.training import epoch_batches, step_batches


def test_a_fixed_number_of_steps_cycles_over_fresh_epochs():
    batches = list(step_batches(10, 4, 5, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4]  # one epoch of 10 (4 + 4 + 2), then a new order
    assert sorted(torch.cat(batches[:3]).tolist()) == list(range(10))
    again = list(step_batches(10, 4, 5, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))


def test_an_empty_shard_takes_no_step_instead_of_looping_forever():
    assert list(step_batches(0, 4, 3, torch.Generator().manual_seed(0))) == []
    assert list(epoch_batches(0, 4, 2, torch.Generator().manual_seed(0))) == []
