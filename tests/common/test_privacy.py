"""Noise schedules against their formulas, and the privacy ledger against direct Opacus accountant calls."""

from __future__ import annotations

import math

import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from common.privacy import NoiseSchedule, PrivacyLedger

PAPER_T = 100  # Wei, Liu et al.'s schedules run over t in [0, 100]: horizon 101 rounds


def paper(kind: str) -> NoiseSchedule:
    return NoiseSchedule(kind=kind, start=15.0, end=4.85, horizon=PAPER_T + 1, step_every=10)


@pytest.mark.parametrize("t", [0, 1, 17, 50, 99, 100])
def test_the_schedules_are_the_papers_formulas(t):
    r = t + 1
    assert paper("linear").sigma(r) == pytest.approx(15 - 10.15 * t / PAPER_T)
    # exp(1.13 (T - t) / T + 1.58) and 15 cos(1.24 t / T) are the paper's rounded constants
    assert paper("exponential").sigma(r) == pytest.approx(math.exp(1.13 * (PAPER_T - t) / PAPER_T + 1.58), rel=4e-3)
    assert paper("cosine").sigma(r) == pytest.approx(15 * math.cos(1.24 * t / PAPER_T), abs=0.03)
    assert paper("staircase").sigma(r) == pytest.approx(15 - 1.015 * (t // 10))
    assert paper("constant").sigma(r) == 15.0


def test_a_decaying_schedule_without_an_end_keeps_the_papers_ratio():
    schedule = NoiseSchedule(kind="linear", start=3.0, horizon=11)
    schedule.check()
    assert schedule.sigma(1) == 3.0 and schedule.sigma(11) == pytest.approx(3.0 * 4.85 / 15)


def test_every_decaying_schedule_starts_at_start_ends_at_end_and_never_rises():
    for kind in ("linear", "staircase", "exponential", "cosine"):
        schedule = NoiseSchedule(kind=kind, start=6.0, end=2.0, horizon=21, step_every=5)
        sigmas = [schedule.sigma(r) for r in range(1, 31)]
        assert sigmas[0] == pytest.approx(6.0) and sigmas[20] == pytest.approx(2.0), kind
        assert sigmas[25] == pytest.approx(2.0), kind  # held at the end after the horizon
        assert all(a >= b - 1e-12 for a, b in zip(sigmas, sigmas[1:], strict=False)), kind


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        (NoiseSchedule(start=-1.0), "must be >= 0"),
        (NoiseSchedule(kind="linear", start=2.0, end=3.0, horizon=5), "end is above its start"),
        (NoiseSchedule(kind="sigmoid", start=2.0), "unknown"),
        (NoiseSchedule(kind="staircase", start=2.0, end=1.0, horizon=5, step_every=0), "step_every"),
    ],
)
def test_impossible_schedules_are_refused(schedule, message):
    with pytest.raises(ValueError, match=message):
        schedule.check()


def test_constant_sigma_epsilon_equals_opacus_rdp_accountant_to_1e_6():
    sigma, q, delta = 1.1, 4 / 1200, 1e-5
    ledger = PrivacyLedger()
    for _ in range(7):  # seven rounds of 300 steps, recorded one round at a time
        ledger.add(sigma, q, 300)
    accountant = RDPAccountant()
    for _ in range(7 * 300):  # what Opacus' optimizer hook does: one entry per step
        accountant.step(noise_multiplier=sigma, sample_rate=q)
    assert ledger.history() == [(sigma, q, 2100)] and accountant.history == [(sigma, q, 2100)]
    assert ledger.epsilon(delta) == pytest.approx(accountant.get_epsilon(delta), abs=1e-6)
    # and against the analysis functions themselves
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=2100, orders=orders)
    assert ledger.epsilon(delta) == pytest.approx(get_privacy_spent(orders=orders, rdp=rdp, delta=delta)[0], abs=1e-6)


def test_a_decaying_schedule_equals_the_accountant_run_over_its_history():
    schedule = NoiseSchedule(kind="exponential", start=3.0, end=1.0, horizon=10)
    q, steps, delta = 0.01, 100, 1e-5
    ledger, accountant = PrivacyLedger(), RDPAccountant()
    for r in range(1, 11):
        ledger.add(schedule.sigma(r), q, steps)
        for _ in range(steps):
            accountant.step(noise_multiplier=schedule.sigma(r), sample_rate=q)
    assert len(ledger.history()) == 10 and ledger.history() == accountant.history
    assert ledger.epsilon(delta) == pytest.approx(accountant.get_epsilon(delta), abs=1e-6)
    # a decaying sigma costs more than its start held constant, less than its end held constant
    hi, lo = PrivacyLedger(), PrivacyLedger()
    hi.add(1.0, q, 1000)
    lo.add(3.0, q, 1000)
    assert lo.epsilon(delta) < ledger.epsilon(delta) < hi.epsilon(delta)


def test_rounds_a_client_sits_out_add_nothing_and_the_ledger_survives_a_round_trip():
    sigma, q, delta = 1.0, 0.02, 1e-5
    ledger = PrivacyLedger()
    ledger.add(sigma, q, 50)  # round 1
    first = ledger.epsilon(delta)
    restored = PrivacyLedger.from_lists(ledger.as_lists())  # what context.state carries between rounds
    restored.add(sigma, q, 50)  # round 5: the client sat out rounds 2-4
    twice = PrivacyLedger()
    twice.add(sigma, q, 100)
    assert restored.epsilon(delta) == pytest.approx(twice.epsilon(delta), abs=1e-12)
    assert restored.epsilon(delta) > first > 0
    assert PrivacyLedger().epsilon(delta) == 0.0
    ledger.add(sigma, q, 0)  # a round without steps adds nothing
    assert ledger.history() == [(sigma, q, 50)]


def test_the_budget_check_predicts_the_next_epsilon_without_spending_it():
    ledger = PrivacyLedger()
    ledger.add(1.0, 0.02, 50)
    before = ledger.history()
    predicted = ledger.epsilon_after(0.9, 0.02, 50, 1e-5)
    assert ledger.history() == before
    ledger.add(0.9, 0.02, 50)
    assert ledger.epsilon(1e-5) == pytest.approx(predicted)


def test_the_references_accounting_example():
    """REFERENCE: q = 0.01, delta = 1e-5, 10^4 steps at sigma 6 give an RDP epsilon of about 0.66."""
    ledger = PrivacyLedger()
    ledger.add(6.0, 0.01, 10_000)
    assert ledger.epsilon(1e-5) == pytest.approx(0.66, abs=0.03)
