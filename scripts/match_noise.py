"""The constant noise multiplier that spends the same epsilon as a decaying schedule.

For a client that takes part in every round (``--rounds`` rounds of ``--steps``
DP-SGD steps at Poisson sample rate ``--sample-rate``), prints the decaying
schedule's epsilon and the constant sigma whose epsilon matches it (bisection on
Opacus' RDP accountant): the pair Wei, Liu et al. compare at matched privacy.

Example (``conf/experiment/dp_schedules.yaml``: 1,200 samples, batch 32, one epoch)::

    python -m scripts.match_noise --schedule linear --start 2.0 --end 0.7 --rounds 30 --sample-rate 0.02667 --steps 37
"""

from __future__ import annotations

import argparse
import warnings

from common.privacy import SCHEDULES, NoiseSchedule, PrivacyLedger


def schedule_epsilon(schedule: NoiseSchedule, sample_rate: float, steps: int, rounds: int, delta: float) -> float:
    """Epsilon after ``rounds`` participations, one per round, of ``steps`` steps each."""
    ledger = PrivacyLedger()
    for r in range(1, rounds + 1):
        ledger.add(schedule.sigma(r), sample_rate, steps)
    return ledger.epsilon(delta)


def matched_constant_sigma(target: float, sample_rate: float, steps: int, rounds: int, delta: float) -> float:
    """The constant sigma whose epsilon over the same participations equals ``target`` (to 1e-6 relative)."""
    lo, hi = 0.05, 200.0

    def eps(sigma: float) -> float:
        return schedule_epsilon(NoiseSchedule(start=sigma), sample_rate, steps, rounds, delta)

    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")  # probing tiny sigmas
    for _ in range(100):
        mid = (lo + hi) / 2
        if eps(mid) > target:  # too little noise
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-6 * hi:
            break
    return (lo + hi) / 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedule", choices=SCHEDULES[1:], required=True)
    parser.add_argument("--start", type=float, required=True)
    parser.add_argument("--end", type=float, default=None)
    parser.add_argument("--rounds", type=int, required=True)
    parser.add_argument("--sample-rate", type=float, required=True)
    parser.add_argument("--steps", type=int, required=True, help="DP-SGD steps per round")
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--step-every", type=int, default=10)
    args = parser.parse_args(argv)
    schedule = NoiseSchedule(args.schedule, args.start, args.end, horizon=args.rounds, step_every=args.step_every)
    try:
        schedule.check()
    except ValueError as err:
        parser.error(str(err))
    target = schedule_epsilon(schedule, args.sample_rate, args.steps, args.rounds, args.delta)
    sigma = matched_constant_sigma(target, args.sample_rate, args.steps, args.rounds, args.delta)
    print(f"{args.schedule} {args.start} -> {schedule.final:.4g} over {args.rounds} rounds: epsilon {target:.4f}")
    print(f"constant sigma {sigma:.4f} spends the same epsilon (delta {args.delta:g})")


if __name__ == "__main__":
    main()
