"""What people read of a run: the console line, the per-class legend, named after the dataset's classes."""

import json

from server.results import (
    RunRecorder,
    attack_class_names,
    class_legend,
    progress_line,
    read_metrics,
    run_class_names,
    write_plots,
)

LABEL_FLIP = {"dataset": {"name": "fashion_mnist"}, "attack": {"name": "label_flip", "source": 6, "target": 0}}
BACKDOOR = {"dataset": {"name": "fashion_mnist"}, "attack": {"name": "badnets", "target": 5}}
LINE = {"round": 3, "seconds": 2.5, "accuracy": 0.8123, "loss": 0.5234, "source_recall": 0.412, "flagged": [4]}


def test_the_attack_classes_are_named_after_the_dataset():
    assert attack_class_names(LABEL_FLIP) == {"source": "Shirt", "target": "T-shirt/top"}
    assert attack_class_names(BACKDOOR) == {"target": "Sandal"}
    assert attack_class_names({**LABEL_FLIP, "dataset": {"name": "mnist"}}) == {"source": "6", "target": "0"}
    assert attack_class_names({"attack": {"name": "label_flip", "source": 6, "target": 0}}) == {
        "source": "6",
        "target": "0",
    }  # a config without a dataset: the ids
    assert attack_class_names({"dataset": {"name": "fashion_mnist"}, "attack": {"name": "none"}}) == {}
    assert run_class_names({"dataset": {"name": "no_such_dataset"}}) is None


def test_the_console_line_names_the_source_class_and_the_backdoor_target():
    plain = progress_line(LINE, 20, 55.0)
    assert plain == (
        "[poisonlab] round    3/20  acc 0.8123  loss 0.5234  src-recall 0.412  flagged 1    2.50s  ETA     55s"
    )
    named = progress_line(LINE, 20, 55.0, **attack_class_names(LABEL_FLIP))
    assert named == plain.replace("src-recall 0.412", "src-recall(Shirt) 0.412")
    backdoor = {**LINE, "source_recall": None, "asr": 0.913}
    assert "  ASR(->Sandal) 0.913  " in progress_line(backdoor, 20, **attack_class_names(BACKDOOR))


def test_the_recorder_prints_the_named_line_and_keeps_ids_in_metrics_jsonl(tmp_path, capsys):
    recorder = RunRecorder(tmp_path, 5, cfg=LABEL_FLIP)
    recall = [0.9, 0.95, 0.8, 0.85, 0.8, 0.93, 0.412, 0.96, 0.97, 0.94]
    recorder.record({"round": 1, "accuracy": 0.8, "loss": 0.5, "source_recall": 0.412, "per_class_recall": recall})
    recorder.close()
    assert "src-recall(Shirt) 0.412" in capsys.readouterr().out
    (line,) = read_metrics(tmp_path)
    assert line["per_class_recall"] == recall and "Shirt" not in json.dumps(line)


def test_the_per_class_legend_names_the_classes_and_marks_the_attacks(tmp_path):
    legend = class_legend(LABEL_FLIP, 10)
    assert legend[0] == "T-shirt/top (target)" and legend[6] == "Shirt (source)" and legend[9] == "Ankle boot"
    assert class_legend({}, 3) == ["0", "1", "2"]
    # write_plots finds the dataset in the run folder's config.json
    (tmp_path / "config.json").write_text(json.dumps(LABEL_FLIP))
    lines = [{"round": r, "accuracy": 0.5, "loss": 1.0, "per_class_recall": [0.5] * 10} for r in range(3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    paths = write_plots(tmp_path)
    assert [p.name for p in paths] == ["accuracy_loss.png", "per_class_recall.png"]
    assert all(p.stat().st_size > 10_000 for p in paths)
