"""The sweep summariser on hand-made run folders."""

import csv
import json

import pytest
import yaml

from scripts.summarize import main


def fake_run(folder, overrides, seed, accuracies, source_recalls, malicious, strategy_option=None):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, f"seed={seed}"]))
    if strategy_option:
        choices = {"hydra": {"runtime": {"choices": {"strategy": strategy_option, "attack": "label_flip"}}}}
        (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(choices))
    cfg = {
        "seed": seed,
        "federation": {"num_clients": 50},
        "attack": {"name": "label_flip", "malicious_clients": list(range(malicious))},
        "strategy": {"_target_": "strategies.rules.mean.Mean"},
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    lines = [{"round": 0, "accuracy": 0.1, "source_recall": 0.0}]
    lines += [
        {"round": r, "accuracy": a, "source_recall": s}
        for r, (a, s) in enumerate(zip(accuracies, source_recalls, strict=True), 1)
    ]
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def test_groups_by_overrides_less_seed_and_averages_the_last_rounds(tmp_path):
    # condition A, two seeds; last-2 averages: seed 0 -> acc 0.8, seed 1 -> acc 0.6 => mean 0.7, std 0.1414
    fake_run(tmp_path / "0", ["attack.num_malicious=0"], 0, [0.1, 0.7, 0.9], [0.5, 0.8, 0.8], 0)
    fake_run(tmp_path / "1", ["attack.num_malicious=0"], 1, [0.9, 0.5, 0.7], [0.9, 0.9, 0.7], 0)
    fake_run(tmp_path / "2", ["attack.num_malicious=10"], 0, [0.5, 0.5, 0.5], [0.4, 0.2, 0.0], 10)
    fake_run(tmp_path / "3", ["attack.num_malicious=25"], 0, [0.5, 0.4, 0.4], [0.0, 0.0, 0.0], 25)
    main([str(tmp_path), "--last", "2"])
    rows = {r["condition"]: r for r in csv.DictReader((tmp_path / "sweep_summary.csv").open())}
    a = rows["attack.num_malicious=0"]
    assert int(a["seeds"]) == 2
    assert float(a["accuracy_mean"]) == pytest.approx(0.7)
    assert float(a["accuracy_std"]) == pytest.approx(0.141421, rel=1e-4)
    assert float(a["source_recall_mean"]) == pytest.approx(0.8)  # (0.8 + 0.8) / 2 and (0.9 + 0.7) / 2
    assert float(rows["attack.num_malicious=10"]["source_recall_mean"]) == pytest.approx(0.1)
    assert float(rows["attack.num_malicious=25"]["malicious_share"]) == 0.5
    assert "| attack.num_malicious=10 | 1 |" in (tmp_path / "sweep_summary.md").read_text()
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
