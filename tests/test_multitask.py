"""Several tasks on one encoder (--label_col emotion,polarity -d emotion.json,polarity.json): the stacked heads'
targets and masked, weighted loss; per-task labels in the files; per-task metrics, calibration and reports; the
prediction columns `label_<task>` and `<task>:<class>`; the export; the bad inputs; the bench's rows. A 3-class
emotion task and a 2-class polarity task derived from it (joy positive, anger and sadness negative), so the tiny
model learns both."""
import csv
import json
import os
import re

import numpy as np
import pytest
import torch

from conftest import NAMES, ROOT, WORDS, call, load_bench, make_rows, run_script, train_tiny, write_classes, write_csv

POLARITY = {"anger": "negative", "joy": "positive", "sadness": "negative"}
POLARITIES = ["negative", "positive"]
HEADER = ("sentences", "emotion", "polarity")
MODEL_FILES = ("model.safetensors", "classes.json", "train_config.json", "calibration.json", "manifest.json")


def two_task_rows(n: int, seed: int = 0, empty_every: int = 5) -> list:
    """(sentence, emotion, polarity): every `empty_every`-th row leaves its polarity cell empty."""
    return [(text, name, "" if empty_every and i % empty_every == empty_every - 1 else POLARITY[name])
            for i, (text, name) in enumerate(make_rows(n, seed))]


def label_maps(folder) -> tuple:
    return write_classes(folder / "emotion.json"), write_classes(folder / "polarity.json", POLARITIES)


def train_argv(tiny_bert, folder, data: str, save: str, *flags) -> list:
    emotion, polarity = label_maps(folder)
    return ["-d", f"{emotion},{polarity}", "--label_col", "emotion,polarity", "-p", "False", "--train_path", data,
            "--bert_name", tiny_bert, "--save_path", save, "--n_epochs", "4", "--batch_size", "8", "--lr_main",
            "2e-3", "--lr", "1e-2", "--max_length", "32", "--tensorboard", "False", "--precision", "fp32", *flags]


def read_json(*parts):
    with open(os.path.join(*parts), encoding="utf-8") as f:
        return json.load(f)


def read_rows(path) -> list:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.reader(f))


def make_tasks(label_col="emotion,polarity", maps=(NAMES, POLARITIES), multi_label=False, task_weights=""):
    from config import Config
    from tasks import build_tasks
    cfg = Config(label_col=label_col, multi_label=multi_label, task_weights=task_weights)
    return build_tasks(cfg, [list(m) for m in maps])


@pytest.fixture(scope="module")
def two_tasks(tiny_bert, tmp_path_factory):
    """A two-task model trained for 4 epochs on 150 rows, a fifth of them without a polarity label."""
    import train
    folder = tmp_path_factory.mktemp("two_tasks")
    data = write_csv(folder / "train.csv", two_task_rows(150), header=HEADER)
    save = str(folder / "model")
    argv = train_argv(tiny_bert, folder, data, save)
    code, out, err = call(train.main, argv)
    assert code == 0, err
    emotion, polarity = label_maps(folder)
    return {"dir": folder, "save": save, "out": out, "err": err, "maps": f"{emotion},{polarity}", "argv": argv}


def predict_folder(two_tasks, name: str, files: dict) -> dict:
    """Write `files` (name -> rows with HEADER's first columns) into a fresh inputs folder and run predict.py."""
    import predict
    inputs = two_tasks["dir"] / f"inputs_{name}"
    inputs.mkdir()
    for file, (header, rows) in files.items():
        write_csv(inputs / file, rows, header=header)
    out_dir = two_tasks["dir"] / f"preds_{name}"
    code, out, err = call(predict.main, ["-f", str(inputs), "-d", two_tasks["maps"], "--save_path", two_tasks["save"],
                                         "--out_dir", str(out_dir), "--report", "True", "--precision", "fp32"])
    assert code == 0, err
    return {"out_dir": out_dir, "out": out}


# ----------------------------------------------------------------------------------------- tasks.py units
def test_tasks_own_consecutive_blocks_of_outputs_with_their_weights_and_multi_label_flags():
    from tasks import combined_names
    emotion, polarity = make_tasks(multi_label=[True, False], task_weights="1,0.5")
    assert (emotion.start, emotion.stop, polarity.start, polarity.stop) == (0, 3, 3, 5)
    assert (emotion.multi_label, polarity.multi_label, emotion.weight, polarity.weight) == (True, False, 1.0, 0.5)
    assert polarity.index == {"negative": 0, "positive": 1}
    assert combined_names([emotion, polarity]) == ["emotion:anger", "emotion:joy", "emotion:sadness",
                                                   "polarity:negative", "polarity:positive"]
    # one value is every task's
    assert [t.multi_label for t in make_tasks(multi_label=True)] == [True, True]
    assert [t.weight for t in make_tasks(task_weights="2")] == [2.0, 2.0]


@pytest.mark.parametrize("weights, message", [("1,abc", "--task_weights 1,abc: could not convert string to float"),
                                              ("inf,1", "every weight must be positive and finite"),
                                              ("1,-1", "every weight must be positive and finite")])
def test_task_weights_that_are_no_numbers_or_not_finite_are_one_line(weights, message):
    from config import InputError
    with pytest.raises(InputError, match=message):
        make_tasks(task_weights=weights)


def test_task_targets_are_one_hot_multi_hot_and_minus_one_where_a_cell_is_empty():
    from tasks import task_targets
    single = make_tasks()
    target = task_targets([(1, 0), (2, None), (None, 1)], single)
    assert target.tolist() == [[0, 1, 0, 1, 0], [0, 0, 1, -1, -1], [-1, -1, -1, 0, 1]]
    multi = make_tasks(multi_label=[True, False])
    target = task_targets([([0, 2], 1), ([1], None), (None, 0)], multi)
    assert target.tolist() == [[1, 0, 1, 0, 1], [0, 1, 0, -1, -1], [-1, -1, -1, 1, 0]]


def test_the_loss_is_the_weighted_sum_of_each_tasks_loss_on_the_rows_labelled_for_it():
    import torch.nn.functional as F

    from tasks import MultiTaskLoss, task_targets
    torch.manual_seed(0)
    logits = torch.randn(5, 5)
    labels = [(0, 1), (1, None), (2, 0), (None, 1), (1, 0)]
    tasks = make_tasks(task_weights="1,0.5")
    loss = MultiTaskLoss(tasks, [torch.nn.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()])
    got = loss(logits, task_targets(labels, tasks))
    emotion = F.cross_entropy(logits[[0, 1, 2, 4], 0:3], torch.tensor([0, 1, 2, 1]))
    polarity = F.cross_entropy(logits[[0, 2, 3, 4], 3:5], torch.tensor([1, 0, 1, 0]))
    assert torch.allclose(got, emotion + 0.5 * polarity, atol=1e-6)
    # the unlabelled cells' logits change nothing
    changed = logits.clone()
    changed[3, 0:3], changed[1, 3:5] = 100.0, -100.0
    assert torch.allclose(loss(changed, task_targets(labels, tasks)), got, atol=1e-6)
    # multi-label emotion: BCE over its labelled rows and classes
    tasks = make_tasks(multi_label=[True, False], task_weights="1,0.5")
    labels = [([0], 1), ([1, 2], None), (None, 0), ([2], 0)]
    loss = MultiTaskLoss(tasks, [torch.nn.BCEWithLogitsLoss(), torch.nn.CrossEntropyLoss()])
    got = loss(logits[:4], task_targets(labels, tasks))
    emotion = F.binary_cross_entropy_with_logits(logits[[0, 1, 3], 0:3],
                                                 torch.tensor([[1., 0, 0], [0, 1, 1], [0, 0, 1]]))
    polarity = F.cross_entropy(logits[[0, 2, 3], 3:5], torch.tensor([1, 0, 0]))
    assert torch.allclose(got, emotion + 0.5 * polarity, atol=1e-6)


def test_a_tasks_logits_get_no_gradient_from_rows_unlabelled_for_it():
    from tasks import MultiTaskLoss, task_targets
    torch.manual_seed(1)
    logits = torch.randn(4, 5, requires_grad=True)
    tasks = make_tasks(task_weights="1,0.5")
    labels = [(0, None), (None, 1), (2, 0), (None, None)]
    MultiTaskLoss(tasks, [torch.nn.CrossEntropyLoss()] * 2)(logits, task_targets(labels, tasks)).backward()
    grad = logits.grad
    assert grad[0, 3:5].abs().max() == 0 and grad[1, 0:3].abs().max() == 0 and grad[3].abs().max() == 0
    assert grad[0, 0:3].abs().max() > 0 and grad[1, 3:5].abs().max() > 0 and grad[2].abs().min() > 0


def test_a_batch_labelled_for_no_task_gives_a_zero_loss_that_still_backpropagates():
    from tasks import MultiTaskLoss, task_targets
    logits = torch.randn(2, 5, requires_grad=True)
    tasks = make_tasks()
    loss = MultiTaskLoss(tasks, [torch.nn.CrossEntropyLoss()] * 2)(logits, task_targets([(None, None)] * 2, tasks))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().max() == 0


@pytest.mark.parametrize("label_col, maps, multi_label, weights, expected", [
    ("emotion,polarity", (NAMES,), False, "", "--label_col names 2 task(s) (emotion, polarity) but -d gives 1"),
    ("emotion", (NAMES, POLARITIES), False, "", "--label_col names 1 task(s) (emotion) but -d gives 2"),
    ("emotion,emotion", (NAMES, NAMES), False, "", "the task 'emotion' is named twice"),
    ("emotion,po:larity", (NAMES, POLARITIES), False, "", "cannot hold ':' ('po:larity')"),
    ("emotion,", (NAMES, POLARITIES), False, "", "task 2 has an empty column name"),
    ("emotion,polarity", (NAMES, POLARITIES), [True, False, True], "", "--multi_label: 3 values for 2 tasks"),
    ("emotion,polarity", (NAMES, POLARITIES), False, "1,2,3", "--task_weights: 3 values for 2 tasks"),
    ("emotion,polarity", (NAMES, POLARITIES), False, "1,0", "--task_weights 1,0: every weight must be positive"),
    ("emotion,polarity", (NAMES, POLARITIES), False, "-1", "--task_weights -1: every weight must be positive"),
], ids=["fewer maps", "more maps", "duplicate", "colon", "empty name", "multi_label count", "weights count",
        "zero weight", "negative weight"])
def test_build_tasks_refuses(label_col, maps, multi_label, weights, expected):
    from config import InputError
    with pytest.raises(InputError) as e:
        make_tasks(label_col, maps, multi_label, weights)
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_tasks_from_folder_rebuilds_the_tasks_from_combined_names_and_calibration():
    from config import Config, InputError
    from tasks import combined_names, tasks_from_folder
    built = make_tasks(multi_label=[True, False], task_weights="1,0.5")
    cfg = Config(label_col="emotion,polarity", multi_label=[True, False], task_weights="1,0.5")
    extra = {"temperature": 1.0, "tasks": {"emotion": {"temperature": 2.0, "thresholds": [0.3, 0.4, 0.5]},
                                           "polarity": {"temperature": 0.5}}}
    again = tasks_from_folder(cfg, combined_names(built), extra)
    assert [(t.name, t.classes, t.start, t.multi_label, t.weight) for t in again] == \
        [(t.name, t.classes, t.start, t.multi_label, t.weight) for t in built]
    assert [(t.temperature, t.thresholds) for t in again] == [(2.0, [0.3, 0.4, 0.5]), (0.5, None)]
    assert [t.temperature for t in tasks_from_folder(cfg, combined_names(built), {})] == [1.0, 1.0]
    for names in (combined_names(built)[:-1] + ["other:x"], combined_names(built)[3:]):
        with pytest.raises(InputError, match="classes.json does not hold the tasks emotion,polarity"):
            tasks_from_folder(cfg, names, extra)


def test_each_tasks_probabilities_are_its_own_softmax_or_sigmoid_at_its_own_temperature():
    from tasks import task_probabilities
    emotion, polarity = make_tasks(multi_label=[True, False])
    emotion.temperature, polarity.temperature = 2.0, 0.5
    logits = torch.randn(6, 5)
    probs = task_probabilities(logits, [emotion, polarity])
    assert torch.allclose(probs[:, 0:3], torch.sigmoid(logits[:, 0:3] / 2.0))
    assert torch.allclose(probs[:, 3:5], torch.softmax(logits[:, 3:5] / 0.5, dim=1))
    as_numpy = task_probabilities(logits.double().numpy(), [emotion, polarity])
    assert isinstance(as_numpy, np.ndarray) and np.allclose(as_numpy, probs.numpy(), atol=1e-6)


def test_balanced_class_weights_are_counted_per_task_on_the_rows_labelled_for_it():
    from config import Config
    from losses import make_multitask_loss
    labels = [(0, 1), (0, None), (0, None), (1, 0), (2, None), (2, 1)]
    cfg = Config(label_col="emotion,polarity", class_weights="balanced")
    loss = make_multitask_loss(cfg, make_tasks(), labels, torch.device("cpu"))
    emotion, polarity = loss.losses
    assert torch.allclose(emotion.weight, torch.tensor([6 / (3 * 3), 6 / (3 * 1), 6 / (3 * 2)]))
    assert torch.allclose(polarity.weight, torch.tensor([3 / (2 * 1), 3 / (2 * 2)]))  # 3 polarity rows, not 6
    assert make_multitask_loss(Config(label_col="emotion,polarity"), make_tasks(), labels,
                               torch.device("cpu")).losses[1].weight is None


def test_validation_scores_each_task_on_its_labelled_rows_and_averages_them():
    import torch.nn.functional as F

    from config import Config
    from losses import make_multitask_loss
    from train import task_metrics
    labels = [(0, 1), (1, None), (2, 0), (None, 1)]
    logits = torch.tensor([[5., 0, 0, 2, 0], [0, 5, 0, 9, 9], [0, 0, 5, 0, 2], [9, 9, 9, 0, 2]])
    tasks = make_tasks()
    loss = make_multitask_loss(Config(label_col="emotion,polarity"), tasks, labels, torch.device("cpu"))
    metrics = task_metrics(tasks, logits, labels, loss)
    assert metrics["emotion_accuracy"] == 1.0 and metrics["polarity_accuracy"] == pytest.approx(1 / 3)
    assert metrics["accuracy"] == pytest.approx((1 + 1 / 3) / 2)
    assert metrics["macro_f1"] == pytest.approx((metrics["emotion_macro_f1"] + metrics["polarity_macro_f1"]) / 2)
    polarity = F.cross_entropy(logits[[0, 2, 3], 3:5], torch.tensor([1, 0, 1])).item()
    assert metrics["polarity_loss"] == pytest.approx(polarity, abs=1e-5)
    assert metrics["loss"] == pytest.approx((metrics["emotion_loss"] + polarity) / 2, abs=1e-5)


# ------------------------------------------------------------------------------------------- dataset.py
def test_labelled_files_give_one_label_per_task_and_none_for_an_empty_cell(tmp_path):
    from dataset import load_labelled_file, split_keys
    tasks = make_tasks(multi_label=[True, False])
    path = write_csv(tmp_path / "t.csv", [("i feel happy", "joy", "positive"), ("i cry", "sadness,anger", ""),
                                          ("so great", "", "positive"), ("i hate", "0", "0")], header=HEADER)
    data = load_labelled_file(path, "sentences", "emotion,polarity", [], False, "", tasks)
    assert data.texts == ["i feel happy", "i cry", "so great", "i hate"] and data.rows == [2, 3, 4, 5]
    assert data.labels == [([1], 1), ([0, 2], None), (None, 1), ([0], 0)]
    # stratified by each row's first labelled task and (first) class, as one id among all outputs
    assert split_keys(data.labels, tasks) == [1, 0, 4, 0]


def test_a_label_of_another_task_is_refused_with_its_file_row_and_column(tmp_path):
    from config import InputError
    from dataset import load_labelled_file
    rows = two_task_rows(9)
    rows[3] = (rows[3][0], "positive", "negative")
    rows[6] = (rows[6][0], "joy", "joy")
    path = write_csv(tmp_path / "t.csv", rows, header=HEADER)
    with pytest.raises(InputError) as e:
        load_labelled_file(path, "sentences", "emotion,polarity", [], False, "", make_tasks())
    message = str(e.value)
    assert f"{path}, row 5, column 'emotion': label 'positive' is not a class of the label map" in message
    assert f"{path}, row 8, column 'polarity': label 'joy' is not a class of the label map" in message


def test_every_task_needs_labelled_training_rows_but_validation_may_lack_one(tmp_path, capsys):
    from config import InputError
    from dataset import LabelledData, check_task_data
    tasks = make_tasks()
    data = LabelledData(["a", "b", "c", "d"], [(0, None), (1, None), (2, None), (0, None)], [2, 3, 4, 5])
    with pytest.raises(InputError, match="t.csv: no row has a label in column 'polarity'; every task needs rows"):
        check_task_data("t.csv", data, tasks)
    check_task_data("v.csv", data, tasks, training=False)
    assert "v.csv: no row has a label in column 'polarity'; that task is not validated" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ train.py end to end
def test_two_tasks_train_with_each_tasks_metrics_and_the_best_epoch_by_their_mean(two_tasks):
    out, save = two_tasks["out"], two_tasks["save"]
    assert "task emotion: 3 classes, loss weight 1, " in out and "task polarity: 2 classes, loss weight 1, " in out
    # a fifth of the rows have no polarity: the start-up line counts the labelled ones
    emotion = re.search(r"^task emotion: .* (\d+) of (\d+) training rows labelled$", out, re.M).groups()
    polarity = re.search(r"^task polarity: .* (\d+) of (\d+) training rows labelled$", out, re.M).groups()
    assert emotion[0] == emotion[1] == polarity[1] and abs(int(polarity[0]) / int(polarity[1]) - 0.8) < 0.05
    metrics = read_json(save, "metrics.json")
    assert metrics["metric"] == "macro_f1" and len(metrics["epochs"]) == 4
    for epoch in metrics["epochs"]:
        for key in ("loss", "accuracy", "macro_f1"):
            each = [epoch[f"valid_{task}_{key}"] for task in ("emotion", "polarity")]
            assert epoch[f"valid_{key}"] == pytest.approx(sum(each) / 2)
    means = [e["valid_macro_f1"] for e in metrics["epochs"]]
    assert metrics["best_epoch"] == means.index(max(means)) + 1
    best = metrics["epochs"][metrics["best_epoch"] - 1]
    assert best["valid_emotion_macro_f1"] > 0.8 and best["valid_polarity_macro_f1"] > 0.8  # both tasks learnt
    assert "(means of the tasks) | emotion: accuracy" in out and " | polarity: accuracy" in out
    assert read_json(save, "classes.json") == {"emotion:anger": 0, "emotion:joy": 1, "emotion:sadness": 2,
                                               "polarity:negative": 3, "polarity:positive": 4}
    config = read_json(save, "train_config.json")
    assert config["label_col"] == "emotion,polarity" and config["dict_path"] == two_tasks["maps"]


def test_each_task_gets_its_own_temperature_and_report_folder(two_tasks):
    save = two_tasks["save"]
    calibration = read_json(save, "calibration.json")
    assert calibration["temperature"] == 1.0 and sorted(calibration["tasks"]) == ["emotion", "polarity"]
    for task, classes in (("emotion", NAMES), ("polarity", POLARITIES)):
        folder = os.path.join(save, "report", task)
        assert {"metrics.json", "classification_report.txt", "confusion_matrix.png", "confusion_matrix.tsv",
                "reliability.png", "learning_curves.png"} <= set(os.listdir(folder))
        report = read_json(folder, "metrics.json")
        assert report["temperature"] == pytest.approx(calibration["tasks"][task]["temperature"])
        assert set(classes) <= set(report["per_class"]) and "thresholds" not in calibration["tasks"][task]
        with open(os.path.join(folder, "confusion_matrix.tsv"), encoding="utf-8") as f:
            assert f.readline().rstrip("\n").split("\t")[1:] == classes
    # polarity is validated only on the rows labelled for it
    epochs = read_json(save, "metrics.json")
    valid_rows = int(re.search(r"^train \d+ rows, validation (\d+) rows", two_tasks["out"], re.M).group(1))
    polarity_rows = read_json(save, "report", "polarity", "metrics.json")["rows"]
    assert read_json(save, "report", "emotion", "metrics.json")["rows"] == valid_rows > polarity_rows > 0
    assert epochs["best_epoch"] == read_json(save, "report", "polarity", "metrics.json")["best_epoch"]


# ---------------------------------------------------------------------------------------- predict.py, the API
PREDICTED_HEADER = ["sentences", "label_emotion", "label_polarity", "emotion:anger", "emotion:joy", "emotion:sadness",
                    "polarity:negative", "polarity:positive"]


def test_predictions_hold_each_tasks_label_and_probabilities_and_the_api_agrees(two_tasks):
    import predict
    texts = [t for t, _ in make_rows(20, seed=7)]
    run = predict_folder(two_tasks, "columns", {"a.csv": (("sentences",), [(t,) for t in texts])})
    rows = read_rows(run["out_dir"] / "a.csv")
    assert rows[0] == PREDICTED_HEADER and [r[0] for r in rows[1:]] == texts
    probs = np.array([[float(x) for x in r[3:]] for r in rows[1:]])
    assert np.allclose(probs[:, 0:3].sum(1), 1, atol=1e-5) and np.allclose(probs[:, 3:5].sum(1), 1, atol=1e-5)
    assert [r[1] for r in rows[1:]] == [NAMES[i] for i in probs[:, 0:3].argmax(1)]
    assert [r[2] for r in rows[1:]] == [POLARITIES[i] for i in probs[:, 3:5].argmax(1)]
    clf = predict.load_classifier(two_tasks["save"], device="cpu", precision="fp32")
    out = clf.predict(texts)
    assert isinstance(out.labels, dict) and sorted(out.labels) == ["emotion", "polarity"]
    assert out.labels["emotion"] == [r[1] for r in rows[1:]] and out.labels["polarity"] == [r[2] for r in rows[1:]]
    assert clf.classes == PREDICTED_HEADER[3:] and np.abs(out.probabilities - probs).max() < 1e-5
    # each task's block is the softmax of its own logits over its own fitted temperature
    from dataset import tokenize
    ids, _ = tokenize(clf.tokenizer, texts, clf.cfg.max_length)
    logits = torch.zeros((len(texts), 5))
    with torch.no_grad():
        for positions, batch in predict.batched_logits(clf.model, clf.tokenizer, ids, None, 8, clf.run):
            logits[torch.as_tensor(positions)] = batch.float()
    temperatures = read_json(two_tasks["save"], "calibration.json")["tasks"]
    for name, block in (("emotion", slice(0, 3)), ("polarity", slice(3, 5))):
        expected = torch.softmax(logits[:, block] / temperatures[name]["temperature"], dim=1).numpy()
        assert np.abs(out.probabilities[:, block] - expected).max() < 1e-5


def test_the_report_evaluates_every_task_whose_column_the_file_has(two_tasks):
    rows = two_task_rows(24, seed=3)
    run = predict_folder(two_tasks, "report", {
        "both.csv": (HEADER, rows),
        "emotion_only.csv": (HEADER[:2], [r[:2] for r in rows]),
        "polarity_only.csv": (("sentences", "polarity"), [(r[0], r[2]) for r in rows]),
        "none.csv": (("sentences",), [r[:1] for r in rows])})
    out_dir, out = run["out_dir"], run["out"]
    assert sorted(os.listdir(out_dir / "report_both")) == ["emotion", "polarity"]
    assert os.listdir(out_dir / "report_emotion_only") == ["emotion"]
    assert os.listdir(out_dir / "report_polarity_only") == ["polarity"]
    assert not os.path.exists(out_dir / "report_none")
    both = read_json(out_dir / "report_both" / "polarity" / "metrics.json")
    assert both["rows"] == sum(1 for r in rows if r[2]) < len(rows)  # the empty cells are not scored
    assert read_json(out_dir / "report_both" / "emotion" / "metrics.json")["rows"] == len(rows)
    alone = read_json(out_dir / "report_polarity_only" / "polarity" / "metrics.json")
    assert alone["accuracy"] == both["accuracy"] and alone["per_class"] == both["per_class"]
    predicted = read_rows(out_dir / "both.csv")
    hits = sum(p[2] == r[2] for p, r in zip(predicted[1:], rows) if r[2])
    assert both["accuracy"] == pytest.approx(hits / both["rows"])
    assert "both.csv, polarity: accuracy" in out and "polarity_only.csv, polarity: accuracy" in out
    assert "emotion_only.csv, polarity" not in out


@pytest.mark.parametrize("maps, expected", [
    ("{emotion}", "-d {emotion}: 1 label map(s), but the model in {save} has 2 task(s) (emotion,polarity)"),
    ("{polarity},{emotion}", "this label map differs from the one the model was trained with"),
    ("{emotion},{emotion}", "this label map differs from the one the model was trained with"),
], ids=["one map", "swapped", "wrong second map"])
def test_predict_refuses_label_maps_that_are_not_the_models(two_tasks, maps, expected):
    import predict
    emotion, polarity = two_tasks["maps"].split(",")
    names = {"emotion": emotion, "polarity": polarity, "save": two_tasks["save"]}
    inputs = two_tasks["dir"] / "inputs_refused"
    inputs.mkdir(exist_ok=True)
    write_csv(inputs / "a.csv", [("i feel happy",)], header=("sentences",))
    out_dir = two_tasks["dir"] / "preds_refused"
    code, _, err = call(predict.main, ["-f", str(inputs), "-d", maps.format(**names), "--save_path",
                                       two_tasks["save"], "--out_dir", str(out_dir)])
    assert code == 2 and expected.format(**names) in err, err
    assert err.count("\n") == 1 and err.startswith("error: ") and not out_dir.exists()


def test_a_validation_file_without_one_tasks_labels_validates_and_calibrates_the_others(tiny_bert, tmp_path):
    import train
    data = write_csv(tmp_path / "train.csv", two_task_rows(90), header=HEADER)
    valid = write_csv(tmp_path / "valid.csv", [(t, e, "") for t, e in make_rows(15, seed=6)], header=HEADER)
    save = str(tmp_path / "model")
    code, out, err = call(train.main, train_argv(tiny_bert, tmp_path, data, save, "--valid_path", valid,
                                                 "--n_epochs", "2"))
    assert code == 0, err
    assert "valid.csv: no row has a label in column 'polarity'; that task is not validated" in err
    for epoch in read_json(save, "metrics.json")["epochs"]:
        assert "valid_polarity_loss" not in epoch
        assert epoch["valid_macro_f1"] == epoch["valid_emotion_macro_f1"]  # the mean of the tasks validated
    assert list(read_json(save, "calibration.json")["tasks"]) == ["emotion"]
    assert os.listdir(os.path.join(save, "report")) == ["emotion"]
    assert "task polarity: no labelled validation row, not calibrated" in out


def test_no_warning_says_a_labelled_task_has_no_rows(two_tasks):
    assert "have no rows" not in two_tasks["err"], two_tasks["err"]


# -------------------------------------------------------------------------------------- multi-label per task
def multi_label_rows(n: int, seed: int = 0) -> list:
    """two_task_rows whose every fourth sentence also holds a word of the next class: two emotions, negative
    polarity unless joy is one of them (then the polarity cell is left empty)."""
    rows = []
    for i, (text, name, polarity) in enumerate(two_task_rows(n, seed)):
        if i % 4 == 3:
            other = NAMES[(NAMES.index(name) + 1) % 3]
            text, name = f"{text} {WORDS[other][i % 4]}", ",".join(sorted((name, other)))
            polarity = "" if "joy" in name else "negative"
        rows.append((text, name, polarity))
    return rows


def test_one_task_may_be_multi_label_and_the_other_single_label(tiny_bert, tmp_path):
    import predict
    import train
    data = write_csv(tmp_path / "train.csv", multi_label_rows(150), header=HEADER)
    save = str(tmp_path / "model")
    argv = train_argv(tiny_bert, tmp_path, data, save, "--multi_label", "True,False", "--task_weights", "1,0.5")
    code, out, err = call(train.main, argv)
    assert code == 0, err
    assert "task emotion: 3 classes, multi-label, loss weight 1," in out
    assert "task polarity: 2 classes, loss weight 0.5," in out
    config = read_json(save, "train_config.json")
    assert config["multi_label"] == [True, False] and config["task_weights"] == "1,0.5"
    fitted = read_json(save, "calibration.json")["tasks"]
    assert len(fitted["emotion"]["thresholds"]) == 3 and "thresholds" not in fitted["polarity"]
    assert read_json(save, "report", "emotion", "metrics.json")["multi_label"] is True
    assert read_json(save, "report", "polarity", "metrics.json")["multi_label"] is False
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    texts = [r[0] for r in multi_label_rows(24, seed=5)]
    write_csv(inputs / "a.csv", [(t,) for t in texts], header=("sentences",))
    code, _, err = call(predict.main, ["-f", str(inputs), "-d", argv[1], "--save_path", save, "--out_dir",
                                       str(tmp_path / "preds"), "--precision", "fp32"])
    assert code == 0, err
    rows = read_rows(tmp_path / "preds" / "a.csv")
    assert rows[0] == PREDICTED_HEADER
    probs = np.array([[float(x) for x in r[3:]] for r in rows[1:]])
    assert np.allclose(probs[:, 3:5].sum(1), 1, atol=1e-5)  # softmax for polarity, independent sigmoids for emotion
    assert not np.allclose(probs[:, 0:3].sum(1), 1, atol=1e-3)
    thresholds = np.array(fitted["emotion"]["thresholds"])
    for row, p in zip(rows[1:], probs):
        chosen = [n for n, q, t in zip(NAMES, p[0:3], thresholds) if q >= t] or [NAMES[int(p[0:3].argmax())]]
        assert row[1].split(",") == chosen and row[2] == POLARITIES[int(p[3:5].argmax())]
    out = predict.load_classifier(save, device="cpu", precision="fp32").predict(texts)
    assert [",".join(x) for x in out.labels["emotion"]] == [r[1] for r in rows[1:]]


# ------------------------------------------------------------------------------------- one task: as before
def test_a_single_task_run_keeps_its_columns_files_and_list_of_labels(tiny_bert, tmp_path):
    import predict
    save, classes, out = train_tiny(tmp_path, tiny_bert, 45, 1, "--tensorboard", "False", "--precision", "fp32")
    assert not re.search(r"^task ", out, re.M) and "means of the tasks" not in out
    assert read_json(save, "classes.json") == {n: i for i, n in enumerate(NAMES)}
    assert "tasks" not in read_json(save, "calibration.json")
    assert os.path.isfile(os.path.join(save, "report", "metrics.json"))
    epoch = read_json(save, "metrics.json")["epochs"][0]
    assert not [k for k in epoch if k.startswith(tuple(f"valid_{n}_" for n in NAMES + ["emotion"]))]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_csv(inputs / "a.csv", make_rows(9, seed=4))
    code, out, err = call(predict.main, ["-f", str(inputs), "-d", classes, "--save_path", save, "--out_dir",
                                         str(tmp_path / "preds"), "--report", "True", "--precision", "fp32"])
    assert code == 0, err
    rows = read_rows(tmp_path / "preds" / "a.csv")
    assert rows[0] == ["sentences", "label", *NAMES]
    assert os.path.isfile(tmp_path / "preds" / "report_a" / "metrics.json")  # no per-task subfolder
    labels = predict.load_classifier(save, device="cpu", precision="fp32").predict([r[0] for r in rows[1:]]).labels
    assert isinstance(labels, list) and labels == [r[1] for r in rows[1:]]


# ----------------------------------------------------------------------------------------------- export.py
def test_an_onnx_export_of_two_tasks_predicts_what_pytorch_does_and_hf_is_refused(two_tasks):
    import export
    folder, save = two_tasks["dir"], two_tasks["save"]
    check = write_csv(folder / "check.csv", two_task_rows(12, seed=9), header=HEADER)
    out = str(folder / "exported")
    code, stdout, err = call(export.main, ["--save_path", save, "--out", out, "--check", check])
    assert code == 0 and "model.onnx (fp32)" in stdout, err
    assert read_json(out, "classes.json") == read_json(save, "classes.json")
    assert read_json(out, "calibration.json") == read_json(save, "calibration.json")
    texts = [(t,) for t, _ in make_rows(15, seed=8)]
    results = {}
    for name, model in (("torch", save), ("onnx", out)):
        run = predict_folder({**two_tasks, "save": model}, f"export_{name}", {"a.csv": (("sentences",), texts)})
        results[name] = read_rows(run["out_dir"] / "a.csv")
    assert results["onnx"][0] == results["torch"][0] == PREDICTED_HEADER
    for t, o in zip(results["torch"][1:], results["onnx"][1:]):
        assert t[:3] == o[:3]
        assert max(abs(float(x) - float(y)) for x, y in zip(t[3:], o[3:])) <= 1e-4
    hf = folder / "hf_export"
    code, _, err = call(export.main, ["--save_path", save, "--format", "hf", "--out", str(hf)])
    assert code == 2 and "several tasks (emotion,polarity) on one encoder" in err and err.count("\n") == 1, err
    assert not hf.exists() and not [n for n in os.listdir(folder) if n.startswith(".hf_export")]


# ---------------------------------------------------------------------------------------- bad input, train.py
def bad_rows(kind: str) -> list:
    rows = two_task_rows(45)
    if kind == "wrong task":
        rows[4] = (rows[4][0], "positive", "positive")
    elif kind == "no polarity":
        rows = [(t, e, "") for t, e, _ in rows]
    return rows


# (id, rows of train.csv (bad_rows), its header, flags after the base ones, what the one line says)
TRAIN_CASES = [
    ("fewer label maps", "", HEADER, ["-d", "{emotion}"],
     "--label_col names 2 task(s) (emotion, polarity) but -d gives 1 label map(s); give one label map per label"),
    ("more label maps", "", HEADER, ["--label_col", "emotion,polarity,extra", "-d", "{emotion},{polarity}"],
     "--label_col names 3 task(s) (emotion, polarity, extra) but -d gives 2 label map(s)"),
    ("task named twice", "", HEADER, ["--label_col", "emotion,emotion", "-d", "{emotion},{emotion}"],
     "--label_col emotion,emotion: the task 'emotion' is named twice"),
    ("colon in a task name", "", ("sentences", "emotion", "po:larity"), ["--label_col", "emotion,po:larity"],
     "a task's column name cannot hold ':' ('po:larity')"),
    ("label of the other task", "wrong task", HEADER, [],
     "train.csv, row 6, column 'emotion': label 'positive' is not a class of the label map"),
    ("multi_label count", "", HEADER, ["--multi_label", "True,False,True"], "--multi_label: 3 values for 2 tasks"),
    ("task weights count", "", HEADER, ["--task_weights", "1,2,3"], "--task_weights: 3 values for 2 tasks"),
    ("zero task weight", "", HEADER, ["--task_weights", "1,0"], "--task_weights 1,0: every weight must be positive"),
    ("task without a labelled row", "no polarity", HEADER, [],
     "train.csv: no row has a label in column 'polarity'; every task needs rows"),
    ("task column missing", "", HEADER[:2], [], "train.csv, row 1: no column 'polarity'"),
    ("second label map missing", "", HEADER, ["-d", "{emotion},{dir}/nope.json"], "nope.json: label map not found"),
]


def refused(code, out, err, expected, save):
    assert code == 2, (out, err)
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert not os.path.exists(save) or not set(MODEL_FILES) & set(os.listdir(save))


@pytest.mark.parametrize("rows, header, flags, expected", [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_train_refuses(tiny_bert, tmp_path, rows, header, flags, expected):
    import train
    data = write_csv(tmp_path / "train.csv", [r[:len(header)] for r in bad_rows(rows)], header=header)
    save = str(tmp_path / "model")
    emotion, polarity = label_maps(tmp_path)
    names = {"emotion": emotion, "polarity": polarity, "dir": tmp_path}
    code, out, err = call(train.main, train_argv(tiny_bert, tmp_path, data, save, *[f.format(**names) for f in flags]))
    refused(code, out, err, expected, save)
    assert not os.path.exists(save)


def test_a_bad_task_option_reaches_the_user_as_one_line_without_a_traceback(tiny_bert, tmp_path):
    data = write_csv(tmp_path / "train.csv", bad_rows("wrong task"), header=HEADER)
    save = str(tmp_path / "model")
    result = run_script("train.py", train_argv(tiny_bert, tmp_path, data, save, "--multi_label", "True,False,True"),
                        cwd=str(tmp_path))
    refused(result.returncode, result.stdout, result.stderr, "--multi_label: 3 values for 2 tasks", save)
    assert not os.path.exists(save)


def test_one_label_column_with_two_label_maps_is_named_a_count_mismatch(tiny_bert, tmp_path):
    import train
    data = write_csv(tmp_path / "train.csv", two_task_rows(30), header=HEADER)
    save = str(tmp_path / "model")
    emotion, polarity = label_maps(tmp_path)
    code, out, err = call(train.main, train_argv(tiny_bert, tmp_path, data, save, "--label_col", "emotion"))
    refused(code, out, err, "--label_col names 1 task(s) (emotion) but -d gives 2 label map(s)", save)


def test_a_training_row_labelled_for_no_task_is_dropped_or_refused_by_its_row(tiny_bert, tmp_path):
    import train
    rows = two_task_rows(45, empty_every=0)
    rows[5] = (rows[5][0], "", "")
    data = write_csv(tmp_path / "train.csv", rows, header=HEADER)
    save = str(tmp_path / "model")
    code, out, err = call(train.main, train_argv(tiny_bert, tmp_path, data, save, "--n_epochs", "1"))
    assert code == 0 and "Traceback" not in err or code == 2 and "row 7" in err and err.count("\n") == 1, err


# ------------------------------------------------------------------------------------------ bench/multitask.py
def test_bench_rows_have_one_ekman_emotion_and_the_sentiment_group_it_belongs_to(tmp_path):
    bench = load_bench("multitask")
    goemotions = os.path.join(ROOT, "..", "shared", "data", "goemotions")
    if not os.path.isdir(goemotions):
        pytest.skip(f"{goemotions}: GoEmotions is not here")
    emotions = bench.read_names(os.path.join(goemotions, "ekman"))
    sentiments = bench.read_names(os.path.join(goemotions, "group"))
    assert sentiments == ["ambiguous", "negative", "neutral", "positive"] and len(emotions) == 7
    dst = str(tmp_path / "dev.csv")
    assert bench.build_rows(goemotions, "dev", dst, 300) == 300
    with open(dst, encoding="utf-8", newline="") as f:
        limited = list(csv.DictReader(f))
    assert len(limited) == 300 and list(limited[0]) == ["sentences", "emotion", "sentiment"]
    n = bench.build_rows(goemotions, "dev", dst)
    with open(dst, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n and rows[:300] == limited
    # every comment with exactly one label in both taxonomies, and nothing else
    ekman = bench.read_split(os.path.join(goemotions, "ekman"), "dev")
    group = bench.read_split(os.path.join(goemotions, "group"), "dev")
    assert n == sum("," not in e and cid in group and "," not in group[cid][1] for cid, (_, e) in ekman.items())
    assert all(r["emotion"] in emotions and r["sentiment"] in sentiments and r["sentences"] for r in rows)
    # Ekman's classes fall in one sentiment group each (checked on this data: joy positive, surprise ambiguous...)
    group_of = {"joy": "positive", "neutral": "neutral", "surprise": "ambiguous", "anger": "negative",
                "disgust": "negative", "fear": "negative", "sadness": "negative"}
    assert all(group_of[r["emotion"]] == r["sentiment"] for r in rows)
    assert {r["emotion"] for r in rows} == set(emotions)
