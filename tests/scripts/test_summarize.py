"""The sweep summariser on hand-made run folders."""

import csv
import json
import math

import pytest
import yaml

from scripts.summarize import heatmap_grid, main, summarize
from scripts.sweep_runs import load_runs


def done(rounds, **extra):
    """The ``summary.json`` of a run that completed ``rounds`` of ``rounds``."""
    return {"status": "complete", "reason": None, "num_rounds": rounds, "rounds_completed": rounds, **extra}


def line(accuracy=0.5, source_recall=0.5, **extra):
    """One round >= 1 line as the server writes it: an aggregated round of a rule that does not detect."""
    values = {"accuracy": accuracy, "loss": 1.0, "source_recall": source_recall, "diverged": False}
    values |= {"defense_active": True, "detects": False, "skipped": None, "collusion": None}
    values |= {k: None for k in ("tp", "fp", "fn", "tn", "tpr", "fpr", "precision")}
    values |= {"excluded": [], "flagged": [], "rejected": {}, "failed": {}}
    return values | extra


def scored(tp, fp, fn, tn):
    """The detection keys of a scored round of a detecting rule."""
    rates = {
        "tpr": tp / (tp + fn) if tp + fn else None,
        "fpr": fp / (fp + tn) if fp + tn else None,
        "precision": tp / (tp + fp) if tp + fp else None,
    }
    return {"detects": True, "defense_active": True, "tp": tp, "fp": fp, "fn": fn, "tn": tn, **rates}


def write_job(folder, overrides, seed, rounds, summary, *, num_rounds=None, choices=None, attack="label_flip"):
    """A job folder: ``.hydra``, ``config.json``, ``metrics.jsonl`` (round 0 + ``rounds``) and ``summary.json``."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, f"seed={seed}"]))
    if choices:
        (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))
    federation = {"num_clients": 50} | ({} if num_rounds is None else {"num_rounds": num_rounds})
    cfg = {
        "seed": seed,
        "federation": federation,
        "attack": {"name": attack, "malicious_clients": list(range(10))},
        "strategy": {"_target_": "strategies.rules.mean.Mean"},
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    lines = [{"round": 0, "accuracy": 0.1, "loss": 2.3}] + [{"round": r, **x} for r, x in enumerate(rounds, 1)]
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))


def fake_run(folder, overrides, seed, accuracies, source_recalls, malicious, strategy_option=None):
    """A complete run with these per-round accuracies and source recalls."""
    write_job(folder, overrides, seed, [line(a, s) for a, s in zip(accuracies, source_recalls, strict=True)], None)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["attack"]["malicious_clients"] = list(range(malicious))
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "summary.json").write_text(json.dumps(done(len(accuracies))))
    if strategy_option:
        choices = {"hydra": {"runtime": {"choices": {"strategy": strategy_option, "attack": "label_flip"}}}}
        (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(choices))


def table(folder):
    """``sweep_summary.csv`` as condition -> row."""
    return {r["condition"]: r for r in csv.DictReader((folder / "sweep_summary.csv").open())}


def excluded(folder):
    """``sweep_excluded.csv`` as a list of rows."""
    return list(csv.DictReader((folder / "sweep_excluded.csv").open()))


def test_groups_by_overrides_less_seed_and_averages_the_last_rounds(tmp_path):
    # condition A, two seeds; last-2 averages: seed 0 -> acc 0.8, seed 1 -> acc 0.6 => mean 0.7, std 0.1414
    fake_run(tmp_path / "0", ["attack.num_malicious=0"], 0, [0.1, 0.7, 0.9], [0.5, 0.8, 0.8], 0)
    fake_run(tmp_path / "1", ["attack.num_malicious=0"], 1, [0.9, 0.5, 0.7], [0.9, 0.9, 0.7], 0)
    fake_run(tmp_path / "2", ["attack.num_malicious=10"], 0, [0.5, 0.5, 0.5], [0.4, 0.2, 0.0], 10)
    fake_run(tmp_path / "3", ["attack.num_malicious=25"], 0, [0.5, 0.4, 0.4], [0.0, 0.0, 0.0], 25)
    main([str(tmp_path), "--last", "2"])
    rows = table(tmp_path)
    a = rows["attack.num_malicious=0"]
    assert int(a["n"]) == 2
    assert float(a["accuracy_mean"]) == pytest.approx(0.7)
    assert float(a["accuracy_std"]) == pytest.approx(0.141421, rel=1e-4)
    assert float(a["source_recall_mean"]) == pytest.approx(0.8)  # (0.8 + 0.8) / 2 and (0.9 + 0.7) / 2
    assert float(rows["attack.num_malicious=10"]["source_recall_mean"]) == pytest.approx(0.1)
    assert float(rows["attack.num_malicious=25"]["malicious_share"]) == 0.5
    md = (tmp_path / "sweep_summary.md").read_text()
    assert "| attack.num_malicious=10 | 1 | 0 |" in md
    assert md.rstrip().endswith("## Excluded runs\n\nnone")
    assert excluded(tmp_path) == []
    assert (tmp_path / "dose_response.png").stat().st_size > 10_000
    assert (tmp_path / "per_round_source_recall.png").exists()


def test_strategies_are_named_by_their_option_not_their_class(tmp_path):
    # fedavg and fedavg_weighted are both the Mean class: the heatmap needs the option names
    fake_run(tmp_path / "0", ["strategy=fedavg"], 0, [0.5, 0.6], [0.1, 0.2], 10, strategy_option="fedavg")
    fake_run(tmp_path / "1", ["strategy=fedavg_weighted"], 0, [0.5, 0.7], [0.1, 0.2], 10, "fedavg_weighted")
    fake_run(tmp_path / "2", ["strategy=other"], 0, [0.5, 0.7], [0.1, 0.2], 10)  # no hydra.yaml: the class
    main([str(tmp_path)])
    names = sorted(r["strategy"] for r in csv.DictReader((tmp_path / "sweep_summary.csv").open()))
    assert names == ["Mean", "fedavg", "fedavg_weighted"]


def test_an_empty_folder_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
    assert "no run with a metrics.jsonl" in capsys.readouterr().err


def test_an_unfinished_run_is_listed_not_averaged(tmp_path, capsys):
    write_job(tmp_path / "0", ["x=1"], 0, [line(0.6), line(0.8), line(0.7)], done(3), num_rounds=3)
    write_job(tmp_path / "1", ["x=1"], 1, [line(0.1), line(0.1)], None, num_rounds=3)  # killed after round 2
    main([str(tmp_path), "--last", "2"])
    row = table(tmp_path)["x=1"]
    assert (row["n"], row["excluded"]) == ("1", "1")
    assert float(row["accuracy_mean"]) == pytest.approx(0.75)  # seed 0 alone: (0.8 + 0.7) / 2
    reason = "incomplete: 2 of 3 rounds, no summary.json (the run did not finish)"
    assert excluded(tmp_path) == [
        {"condition": "x=1", "seed": "1", "job": str(tmp_path / "1"), "status": "incomplete", "reason": reason}
    ]
    assert f"| x=1 | 1 | {tmp_path / '1'} | incomplete | {reason} |" in (tmp_path / "sweep_summary.md").read_text()
    assert reason in capsys.readouterr().err  # printed even without --strict


def test_a_job_that_died_before_its_first_round_is_listed(tmp_path):
    write_job(tmp_path / "0", ["x=1"], 0, [line(0.6)], done(1), num_rounds=1)
    (tmp_path / "1" / ".hydra").mkdir(parents=True)
    (tmp_path / "1" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["x=1", "seed=1"]))
    main([str(tmp_path)])
    (gone,) = excluded(tmp_path)
    assert (gone["seed"], gone["job"], gone["status"]) == ("1", str(tmp_path / "1"), "incomplete")
    assert gone["reason"] == "incomplete: 0 of ? rounds, no summary.json (the run did not finish)"


def test_a_failed_run_is_excluded_with_its_reason(tmp_path):
    write_job(tmp_path / "0", ["x=1"], 0, [line(0.6), line(0.8)], done(2), num_rounds=2)
    failed = done(2, status="failed", reason="round 2: all clients failed")  # the server's line count is right
    write_job(tmp_path / "1", ["x=1"], 1, [line(0.2), line(0.2)], failed, num_rounds=2)
    main([str(tmp_path)])
    assert float(table(tmp_path)["x=1"]["accuracy_mean"]) == pytest.approx(0.7)
    (gone,) = excluded(tmp_path)
    assert (gone["status"], gone["reason"]) == ("failed", "failed: round 2: all clients failed")


NAN_ROUND = line(None, None, diverged=True, loss=None)


@pytest.mark.parametrize(
    ("summary", "reason"),
    [
        (
            done(3, status="diverged", reason="non-finite global model", first_diverged_round=2, diverged_rounds=[2]),
            "diverged from round 2: non-finite global model",
        ),
        (done(3), "diverged from round 2: 1 round(s) marked diverged in metrics.jsonl"),  # says complete, is not
    ],
)
def test_a_diverged_run_is_excluded(tmp_path, summary, reason):
    write_job(tmp_path / "0", ["x=1"], 0, [line(0.6), line(0.8), line(0.7)], done(3), num_rounds=3)
    write_job(tmp_path / "1", ["x=1"], 1, [line(0.1), NAN_ROUND, line(0.1)], summary, num_rounds=3)
    main([str(tmp_path), "--last", "3"])
    row = table(tmp_path)["x=1"]
    assert row["n"] == "1"
    assert float(row["accuracy_mean"]) == pytest.approx(0.7)
    (gone,) = excluded(tmp_path)
    assert (gone["seed"], gone["status"], gone["reason"]) == ("1", "diverged", reason)


def test_an_old_run_with_a_non_finite_accuracy_counts_as_diverged(tmp_path):
    old = {"rounds_completed": 2}  # an older server: no status, wrote NaN
    write_job(tmp_path / "0", ["x=1"], 0, [{"accuracy": 0.5, "loss": 1.0}] * 2, old, num_rounds=2)
    write_job(tmp_path / "1", ["x=1"], 1, [{"accuracy": 0.5, "loss": 1.0}] * 2, old, num_rounds=2)
    nan_lines = (tmp_path / "1" / "metrics.jsonl").read_text().replace('"loss": 1.0}', '"loss": NaN}', 1)
    (tmp_path / "1" / "metrics.jsonl").write_text(nan_lines)
    main([str(tmp_path)])
    assert table(tmp_path)["x=1"]["n"] == "1"
    (gone,) = excluded(tmp_path)
    assert gone["reason"] == "diverged from round 1: 1 round(s) marked diverged in metrics.jsonl"


@pytest.mark.parametrize(
    ("lines", "num_rounds", "reason"),
    [
        (3, 3, None),  # complete: averaged
        (2, 3, "incomplete: 2 of 3 rounds in metrics.jsonl"),
        (3, None, "incomplete: cannot tell the configured number of rounds"),
    ],
)
def test_an_old_summary_without_status_falls_back_to_the_configured_rounds(tmp_path, lines, num_rounds, reason):
    old = {"rounds_completed": lines, "final_accuracy": 0.4}
    write_job(tmp_path / "0", ["x=1"], 0, [line(0.4)] * lines, old, num_rounds=num_rounds)
    main([str(tmp_path)])
    assert [e["reason"] for e in excluded(tmp_path)] == ([reason] if reason else [])
    accuracy = table(tmp_path)["x=1"]["accuracy_mean"]
    if reason:
        assert accuracy == ""
    else:
        assert float(accuracy) == pytest.approx(0.4)


def test_a_half_written_metrics_line_is_listed_as_unreadable(tmp_path):
    write_job(tmp_path / "0", ["x=1"], 0, [line(0.4)] * 2, done(2), num_rounds=2)
    with (tmp_path / "0" / "metrics.jsonl").open("a") as fh:
        fh.write('{"round": 3, "accur')
    main([str(tmp_path)])
    (gone,) = excluded(tmp_path)
    assert gone["status"] == "unreadable"
    assert gone["reason"].startswith("unreadable: metrics.jsonl line 4 is not valid JSON")


def test_strict_exits_non_zero_after_writing_the_outputs(tmp_path, capsys):
    write_job(tmp_path / "0", ["x=1"], 0, [line(0.6)] * 2, done(2), num_rounds=2)
    write_job(tmp_path / "1", ["x=1"], 1, [line(0.6)], None, num_rounds=2)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--strict"])
    assert exit_info.value.code == 1
    assert len(excluded(tmp_path)) == 1
    assert "incomplete: 1 of 2 rounds" in capsys.readouterr().err


def test_strict_passes_when_every_run_is_complete(tmp_path, capsys):
    write_job(tmp_path / "0", ["x=1"], 0, [line(0.6)] * 2, done(2), num_rounds=2)
    main([str(tmp_path), "--strict"])
    assert capsys.readouterr().err == ""


def test_detection_is_micro_averaged_over_the_scored_rounds_of_the_window(tmp_path):
    flame = {"strategy": "flame"}
    seed0 = [
        line(**scored(tp=5, fp=0, fn=0, tn=5)),  # outside the last 4 rounds
        line(detects=True, defense_active=False),  # before the defense's start round: not scored
        line(detects=True, defense_active=False),  # the same, inside the window
        line(**scored(tp=1, fp=2, fn=3, tn=4)),
        line(detects=True, defense_active=False, skipped="fewer replies than min_fit"),
        line(**scored(tp=3, fp=1, fn=0, tn=7)),
    ]
    seed1 = [line(**scored(tp=2, fp=0, fn=0, tn=8)) for _ in range(6)]
    write_job(tmp_path / "0", ["strategy=flame"], 0, seed0, done(6), num_rounds=6, choices=flame)
    write_job(tmp_path / "1", ["strategy=flame"], 1, seed1, done(6), num_rounds=6, choices=flame)
    main([str(tmp_path), "--last", "4"])
    row = table(tmp_path)["strategy=flame"]
    # seed 0, rounds 4 and 6 scored: tpr (1+3)/(4+3) = 4/7 (per-round mean would be 0.625), fpr (2+1)/(6+8) = 3/14,
    # precision (1+3)/(3+4) = 4/7; seed 1: 1, 0, 1
    assert float(row["tpr_mean"]) == pytest.approx((4 / 7 + 1) / 2)
    assert float(row["fpr_mean"]) == pytest.approx((3 / 14 + 0) / 2)
    assert float(row["precision_mean"]) == pytest.approx((4 / 7 + 1) / 2)
    assert float(row["active_rounds"]) == pytest.approx((2 + 4) / 2)
    assert "| strategy=flame | 2 | 0 |" in (tmp_path / "sweep_summary.md").read_text()


def test_precision_is_null_when_nothing_was_flagged_in_the_window(tmp_path):
    rounds = [line(**scored(tp=2, fp=1, fn=0, tn=7))] + [line(**scored(tp=0, fp=0, fn=2, tn=8)) for _ in range(3)]
    write_job(tmp_path / "0", ["x=1"], 0, rounds, done(4), num_rounds=4)
    main([str(tmp_path), "--last", "3"])
    row = table(tmp_path)["x=1"]
    assert row["precision_mean"] == ""  # round 1 flagged clients, but it is outside the window
    assert float(row["tpr_mean"]) == 0.0
    assert float(row["fpr_mean"]) == 0.0


def test_a_non_detecting_rule_has_no_tpr_in_the_table_or_the_heatmap(tmp_path):
    # Krum selects, it does not detect: even rates written by an older server on its lines never count
    krum = [line(0.6, detects=False, tp=0, fp=0, tpr=0.0, fpr=0.0) for _ in range(2)]
    flame = [line(0.7, **scored(tp=2, fp=0, fn=0, tn=8)) for _ in range(2)]
    for i, (attack, strategy, rounds) in enumerate(
        [("label_flip", "krum", krum), ("sign_flip", "krum", krum), ("label_flip", "flame", flame)]
    ):
        overrides = [f"attack={attack}", f"strategy={strategy}"]
        choices = {"strategy": strategy, "attack": attack}
        write_job(tmp_path / str(i), overrides, 0, rounds, done(2), num_rounds=2, choices=choices, attack=attack)
    main([str(tmp_path)])
    row = table(tmp_path)["attack=label_flip strategy=krum"]
    assert (row["tpr_mean"], row["fpr_mean"], row["active_rounds"]) == ("", "", "")
    assert float(table(tmp_path)["attack=label_flip strategy=flame"]["tpr_mean"]) == 1.0
    assert (
        "| attack=label_flip strategy=krum | 1 | 0 | 0.600 +- 0.000 | 0.500 +- 0.000 |  |  |  |  |"
        in (tmp_path / "sweep_summary.md").read_text()
    )
    grid = heatmap_grid(summarize(load_runs([tmp_path]), 10), "tpr", ["label_flip", "sign_flip"], ["flame", "krum"])
    assert grid[0][0] == 1.0
    assert all(math.isnan(v) for v in (grid[0][1], grid[1][0], grid[1][1]))  # krum, and a condition never run
    assert (tmp_path / "heatmap_tpr.png").stat().st_size > 5_000


def test_a_condition_whose_runs_were_all_excluded_shows_n_0(tmp_path):
    write_job(tmp_path / "0", ["x=1"], 0, [line(0.6)] * 2, done(2), num_rounds=2)
    failed = done(2, status="failed", reason="out of memory")
    write_job(tmp_path / "1", ["x=2"], 0, [line(0.2)] * 2, failed, num_rounds=2)
    write_job(tmp_path / "2", ["x=2"], 1, [line(0.2)], None, num_rounds=2)
    main([str(tmp_path)])
    row = table(tmp_path)["x=2"]
    assert (row["n"], row["excluded"], row["accuracy_mean"], row["accuracy_std"]) == ("0", "2", "", "")
    assert "| x=2 | 0 | 2 |  |  |" in (tmp_path / "sweep_summary.md").read_text()


def leak(psnr, mse, images=2, reconstructed=1):
    return {"images": images, "psnr_median": psnr, "psnr_mean": psnr, "mse_median": mse, "ssim_mean": 0.5,
            "label_accuracy": 1.0, "reconstructed": reconstructed}  # fmt: skip


def test_privacy_runs_report_their_final_epsilon_and_their_leakage_by_round(tmp_path):
    for seed, (eps, psnr1, psnr3) in enumerate([(1.5, 40.0, 20.0), (2.5, 60.0, 10.0)]):
        rounds = [
            line(epsilon_max=eps / 3, leakage=leak(psnr1, 1e-4)),
            line(epsilon_max=eps / 2, leakage=None),
            line(epsilon_max=eps, leakage=leak(psnr3, 1e-1, reconstructed=0)),
        ]
        write_job(tmp_path / f"job{seed}", ["dp=opacus"], seed, rounds, done(3))
    main([str(tmp_path), "--last", "2"])
    (row,) = list(csv.DictReader((tmp_path / "sweep_summary.csv").open()))
    # the final cumulative epsilon of each run (not a window mean), then mean +- std over the seeds
    assert float(row["epsilon_max_mean"]) == pytest.approx(2.0) and float(row["epsilon_max_std"]) == pytest.approx(
        math.sqrt(0.5)
    )
    assert "epsilon_max" in (tmp_path / "sweep_summary.md").read_text()
    rows = list(csv.DictReader((tmp_path / "leakage_by_round.csv").open()))
    assert [int(r["round"]) for r in rows] == [1, 3] and all(r["n"] == "2" for r in rows)
    assert float(rows[0]["psnr_median_mean"]) == pytest.approx(50.0) and float(rows[1]["psnr_median_mean"]) == 15.0
    assert float(rows[1]["reconstructed_mean"]) == 0.0
    assert "| dp=opacus | 1 | 2 | 50.0 +- 14.1 |" in (tmp_path / "leakage_by_round.md").read_text()
    assert (tmp_path / "leakage_psnr_by_round.png").stat().st_size > 5_000


def test_the_attack_classes_are_named_after_the_dataset_in_the_tables(tmp_path):
    for job, (malicious, dataset) in enumerate([(10, "fashion_mnist"), (20, "fashion_mnist"), (10, "mnist")]):
        overrides = [f"attack.num_malicious={malicious}", f"dataset={dataset}"]
        fake_run(tmp_path / str(job), overrides, 0, [0.5, 0.6], [0.3, 0.2], malicious)
        cfg = json.loads((tmp_path / str(job) / "config.json").read_text())
        cfg["dataset"] = {"name": dataset}
        cfg["attack"] |= {"source": 6, "target": 0}
        (tmp_path / str(job) / "config.json").write_text(json.dumps(cfg))
    main([str(tmp_path)])
    rows = table(tmp_path)
    fmnist = rows["attack.num_malicious=10 dataset=fashion_mnist"]
    assert (fmnist["dataset"], fmnist["source_class"], fmnist["source_name"]) == ("fashion_mnist", "6", "Shirt")
    assert (fmnist["target_class"], fmnist["target_name"]) == ("0", "T-shirt/top")
    assert rows["attack.num_malicious=10 dataset=mnist"]["source_name"] == "6"
    md = (tmp_path / "sweep_summary.md").read_text()
    assert "| condition | attack classes | n | excluded |" in md
    assert "| attack.num_malicious=20 dataset=fashion_mnist | Shirt -> T-shirt/top | 1 | 0 |" in md
    assert "| attack.num_malicious=10 dataset=mnist | 6 -> 0 | 1 | 0 |" in md
