"""Multi-label thresholds, the fallback, class weights, temperature scaling, the report files and predict --report."""
import csv
import json
import os
import re

import numpy as np
import pytest
import torch

import calibrate
from conftest import NAMES, call, make_rows, train_tiny, write_classes, write_csv

PNGS = ("confusion_matrix.png", "reliability.png", "learning_curves.png")


# ------------------------------------------------------------------------------------------- thresholds
def test_thresholds_maximise_each_class_f1_on_a_hand_made_case():
    probs = np.array([[0.90, 0.20], [0.80, 0.60], [0.35, 0.55], [0.30, 0.50], [0.10, 0.45]])
    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0], [0, 1]])
    t = calibrate.tune_thresholds(probs, y)
    # class 0: the two positives rank first, the cut lies halfway between 0.80 and 0.35
    assert t[0] == pytest.approx(0.575)
    # class 1: taking the top 2 (0.60, 0.55) gives F1 0.8, the top 4 (down to 0.45) gives 2*3/(4+3) = 0.857
    assert t[1] == pytest.approx((0.45 + 0.20) / 2)
    pred = (probs >= t).astype(int)
    from sklearn.metrics import f1_score
    assert f1_score(y[:, 0], pred[:, 0]) == 1.0
    assert f1_score(y[:, 1], pred[:, 1]) == pytest.approx(6 / 7)


def test_thresholds_beat_every_grid_threshold_and_default_when_class_absent():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 4)) < [0.5, 0.2, 0.05, 0.0]).astype(int)
    probs = np.clip(0.3 * y + rng.random((200, 4)) * 0.7, 0, 1)
    t = calibrate.tune_thresholds(probs, y)
    from sklearn.metrics import f1_score
    for c in range(3):
        tuned = f1_score(y[:, c], probs[:, c] >= t[c])
        assert all(tuned >= f1_score(y[:, c], probs[:, c] >= g) - 1e-12 for g in np.linspace(0, 1, 101))
    assert t[3] == calibrate.DEFAULT_THRESHOLD  # no positive row: nothing to tune


def test_ties_never_split_by_a_threshold():
    probs = np.array([[0.7], [0.7], [0.2]])
    y = np.array([[1], [0], [0]])
    t = calibrate.tune_thresholds(probs, y)[0]
    assert t < 0.7 and t > 0.2  # both 0.7 rows are taken or neither; taking them is best here


def test_fallback_never_yields_an_empty_prediction_unless_allowed():
    rng = np.random.default_rng(1)
    probs = rng.random((500, 6)) * 0.3  # every probability under every threshold
    thresholds = np.full(6, 0.9)
    pred = calibrate.decide(probs, True, thresholds)
    assert pred.sum(axis=1).min() >= 1
    assert (pred.argmax(axis=1) == probs.argmax(axis=1)).all()
    assert calibrate.decide(probs, True, thresholds, allow_empty=True).sum() == 0


@pytest.mark.parametrize("multi_label", [False, True])
def test_scores_and_report_are_sklearns_without_importing_it(multi_label):
    """metrics.py writes accuracy, macro-F1, the confusion matrix and classification_report out in numpy (importing
    sklearn.metrics cost 0.4 s a run); random decisions of every shape give sklearn's numbers and text."""
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score
    import metrics
    rng = np.random.default_rng(7)
    for trial in range(150):
        n, rows = int(rng.integers(2 if multi_label else 1, 9)), int(rng.integers(1, 60))
        names = [f"class_{i}" * int(rng.integers(1, 3)) for i in range(n)]
        if multi_label:
            y, pred = ((rng.random((rows, n)) < rng.random()).astype(int) for _ in range(2))
        else:
            y, pred = rng.integers(0, n, rows), rng.integers(0, n, rows)
        common = {"labels": list(range(n)), "zero_division": 0}
        text, table = metrics.classification_report(y, pred, names)
        expected = classification_report(y, pred, target_names=names, output_dict=True, **common)
        assert table.keys() == expected.keys()
        for key, value in expected.items():
            assert (table[key] == pytest.approx(value, abs=1e-12)) if isinstance(value, float) else \
                all(table[key][k] == pytest.approx(v, abs=1e-12) and type(table[key][k]) is float
                    for k, v in value.items())
        sklearn_text = classification_report(y, pred, target_names=names, digits=4, **common)
        if not multi_label and not (y == pred).any():  # sklearn prints its supports as floats (2.0) then
            sklearn_text = re.sub(r"\s(\s*)(\d+)\.0$", lambda m: f"   {m[1]}{m[2]}", sklearn_text, flags=re.M)
        assert text == sklearn_text
        assert metrics.macro_f1(y, pred, n) == pytest.approx(f1_score(y, pred, average="macro", **common), abs=1e-12)
        assert metrics.accuracy(y, pred) == pytest.approx(accuracy_score(y, pred), abs=1e-12)
        if not multi_label:
            assert (metrics.confusion(y, pred, n, False) == confusion_matrix(y, pred, labels=list(range(n)))).all()


def test_balanced_class_weights_match_their_formula():
    from losses import balanced_class_weights
    counts, n_rows = [50, 30, 20, 0], 100
    single = balanced_class_weights(counts, n_rows, multi_label=False)
    assert single[:3].tolist() == pytest.approx([100 / (4 * 50), 100 / (4 * 30), 100 / (4 * 20)])
    multi = balanced_class_weights(counts, n_rows, multi_label=True)
    assert multi[:3].tolist() == pytest.approx([50 / 50, 70 / 30, 80 / 20])
    assert single[3] == multi[3] == 1.0
    from sklearn.utils.class_weight import compute_class_weight
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    sk = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=labels)
    assert balanced_class_weights([50, 30, 20], 100, False).tolist() == pytest.approx(sk.tolist())


# ----------------------------------------------------------------------------------------- temperature
def overconfident_logits(n=2000, classes=4, seed=0):
    """Logits five times too large: the labels are drawn from softmax(logits / 5), so T = 5 is the truth."""
    rng = np.random.default_rng(seed)
    calibrated = rng.normal(0, 2.0, (n, classes))
    p = torch.softmax(torch.as_tensor(calibrated), dim=-1).numpy()
    y = np.array([rng.choice(classes, p=row) for row in p])
    return calibrated * 5, y


def test_temperature_lowers_validation_nll_and_ece_of_an_overconfident_model():
    logits, y = overconfident_logits()
    t = calibrate.fit_temperature(logits, y, multi_label=False)
    assert t == pytest.approx(5, rel=0.2)
    assert calibrate.nll(logits, y, False, t) < 0.5 * calibrate.nll(logits, y, False)
    fit = calibrate.calibrate(logits, list(y), 4, multi_label=False)
    assert fit["nll_after"] < fit["nll_before"]
    assert fit["ece_after"] < fit["ece_before"] / 3
    # temperature never changes the single-label decision
    assert (calibrate.probabilities(logits, False, t).argmax(1) == logits.argmax(1)).all()


def test_shared_temperature_for_multi_label():
    rng = np.random.default_rng(2)
    y = (rng.random((1000, 3)) < 0.3).astype(int)
    logits = (2 * y - 1) * 1.5 + rng.normal(0, 1.5, y.shape)
    t = calibrate.fit_temperature(logits * 4, y, multi_label=True)
    assert t == pytest.approx(4, rel=0.25)
    assert calibrate.nll(logits * 4, y, True, t) < calibrate.nll(logits * 4, y, True)


def test_ece_is_zero_when_confidence_matches_frequency():
    probs = np.tile([[0.8, 0.2]], (1000, 1))
    y = np.array([0] * 800 + [1] * 200)
    assert calibrate.expected_calibration_error(probs, y, False)[0] == pytest.approx(0.0, abs=1e-9)
    assert calibrate.expected_calibration_error(probs, np.zeros(1000, int), False)[0] == pytest.approx(0.2)


# ---------------------------------------------------------------------------------------------- reports
def assert_real_png(path):
    from PIL import Image
    assert os.path.getsize(path) > 1000, path
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"), dtype=float)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels.var() > 50, f"{path} looks blank"


def test_report_pngs_are_written_and_not_blank(tmp_path):
    from report import write_report
    logits, y = overconfident_logits(300, 3)
    history = [{"epoch": e, "train_loss": 1.0 / e, "valid_loss": 1.2 / e, "valid_macro_f1": 0.5 + 0.1 * e}
               for e in (1, 2, 3)]
    out = write_report(str(tmp_path), calibrate.probabilities(logits, False, 5.0), list(y), NAMES, False,
                       raw_probs=calibrate.probabilities(logits, False), history=history, best_epoch=3)
    for name in PNGS:
        assert_real_png(tmp_path / name)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["macro_f1"] == pytest.approx(out["macro_f1"]) and saved["best_epoch"] == 3
    assert "precision" in (tmp_path / "classification_report.txt").read_text()
    assert not any(n.endswith(".csv") for n in os.listdir(tmp_path))


def multi_rows(n, seed=0):
    """Multi-label rows: one or two classes, each named in the sentence by its words."""
    from conftest import WORDS
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        chosen = sorted({NAMES[i % 3], *([NAMES[rng.integers(3)]] if i % 4 == 0 else [])})
        words = [w for name in chosen for w in rng.choice(WORDS[name], 3)]
        rows.append((" ".join(["i", "feel", *words]), ",".join(chosen)))
    return rows


def test_multi_label_training_tunes_thresholds_calibrates_and_reports(tmp_path, tiny_task):
    import predict
    import train
    data = write_csv(tmp_path / "ml.csv", multi_rows(120))
    save = str(tmp_path / "ml_model")
    args = [a if a != tiny_task["train"] else data for a in tiny_task["args"]]
    args[args.index(tiny_task["save"])] = save
    code, out, err = call(train.main, args + ["--multi_label", "True"])
    assert code == 0, err
    calibration = json.loads(open(os.path.join(save, "calibration.json")).read())
    assert len(calibration["thresholds"]) == 3 and calibration["temperature"] > 0
    assert "ECE" in out and "report:" in out
    for name in PNGS:
        assert_real_png(os.path.join(save, "report", name))
    metrics = json.loads(open(os.path.join(save, "report", "metrics.json")).read())
    assert {"ece_before", "ece_after", "macro_f1_at_0.5", "macro_f1_cross_fitted"} <= set(metrics)
    # the saved calibration passes the manifest check, and predict applies it
    inputs = tmp_path / "ml_inputs"
    inputs.mkdir()
    write_csv(inputs / "test.csv", multi_rows(30, seed=5))
    out_dir = str(tmp_path / "preds")
    code, out, err = call(predict.main, ["-f", str(inputs), "-d", tiny_task["classes"], "-p", "False",
                                         "--save_path", save, "--out_dir", out_dir, "--report", "True"])
    assert code == 0, err
    with open(os.path.join(out_dir, "test.csv"), encoding="utf-8") as f:
        predicted = list(csv.DictReader(f))
    assert all(row["label"] for row in predicted)  # the fallback: never an empty prediction
    assert_report_matches_sklearn(os.path.join(inputs, "test.csv"), os.path.join(out_dir, "test.csv"),
                                  os.path.join(out_dir, "report_test"), multi_label=True)


def assert_report_matches_sklearn(labelled_csv, predictions_csv, folder, multi_label):
    """The report's text is sklearn's classification_report of the labels vs the predictions file's labels."""
    from sklearn.metrics import classification_report
    with open(labelled_csv, encoding="utf-8") as f:
        truth = [row["emotion"] for row in csv.DictReader(f)]
    with open(predictions_csv, encoding="utf-8") as f:
        predicted = [row["label"] for row in csv.DictReader(f)]
    assert len(truth) == len(predicted)
    if multi_label:
        from sklearn.preprocessing import MultiLabelBinarizer
        binarize = MultiLabelBinarizer(classes=NAMES).fit([NAMES])
        y, pred = binarize.transform([t.split(",") for t in truth]), binarize.transform(
            [p.split(",") if p else [] for p in predicted])
        expected = classification_report(y, pred, target_names=NAMES, labels=[0, 1, 2], digits=4, zero_division=0)
    else:
        expected = classification_report(truth, predicted, labels=NAMES, digits=4, zero_division=0)
    assert open(os.path.join(folder, "classification_report.txt"), encoding="utf-8").read() == expected
    for name in ("confusion_matrix.png", "reliability.png"):
        assert_real_png(os.path.join(folder, name))


@pytest.fixture(scope="module")
def single_label_model(tmp_path_factory, tiny_bert):
    """A tiny single-label model trained once for this module: (save_path, classes.json, train.py stdout)."""
    return train_tiny(tmp_path_factory.mktemp("single_label"), tiny_bert, 90, 2, "--batch_size", "8",
                      "--lr_main", "1e-3", "--lr", "5e-3")


def test_training_report_single_label(single_label_model):
    save, _, out = single_label_model
    assert "calibration: ECE" in out and "precision" in out
    for name in PNGS:
        assert_real_png(os.path.join(save, "report", name))
    metrics = json.loads(open(os.path.join(save, "report", "metrics.json")).read())
    calibration = json.loads(open(os.path.join(save, "calibration.json")).read())
    assert metrics["temperature"] == calibration["temperature"] and "thresholds" not in calibration
    assert metrics["nll_after"] <= metrics["nll_before"]
    assert len(metrics["epochs"]) == 2


def test_predict_report_equals_sklearn_and_out_dir_holds_only_prediction_csvs(tmp_path, single_label_model):
    import predict
    save, classes, _ = single_label_model
    inputs = str(tmp_path / "inputs")
    os.makedirs(inputs)
    write_csv(os.path.join(inputs, "a.csv"), [(t,) for t, _ in make_rows(12, seed=1)], header=("sentences",))
    with open(os.path.join(inputs, "b.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(t for t, _ in make_rows(7, seed=2)) + "\n")
    # a labelled test file with names, and one with ids; the unlabelled a.csv and b.txt get no report
    write_csv(os.path.join(inputs, "test.csv"), make_rows(40, seed=7))
    write_csv(os.path.join(inputs, "ids.csv"), [(t, NAMES.index(n)) for t, n in make_rows(20, seed=8)])
    out_dir = str(tmp_path / "preds")
    code, out, err = call(predict.main, ["-f", inputs, "-d", classes, "-p", "False", "--save_path", save,
                                         "--out_dir", out_dir, "--report", "True"])
    assert code == 0, err
    assert "a.csv: no 'emotion' column, no report" in out
    assert_report_matches_sklearn(os.path.join(inputs, "test.csv"), os.path.join(out_dir, "test.csv"),
                                  os.path.join(out_dir, "report_test"), multi_label=False)
    metrics = json.loads(open(os.path.join(out_dir, "report_ids", "metrics.json")).read())
    assert metrics["rows"] == 20
    csvs = sorted(n for n in os.listdir(out_dir) if n.endswith(".csv"))
    assert csvs == ["a.csv", "b.csv", "ids.csv", "test.csv"]
    for sub in ("report_test", "report_ids"):
        assert not any(n.endswith(".csv") for n in os.listdir(os.path.join(out_dir, sub)))


def test_predict_report_bad_label_names_file_row_and_column(tmp_path, single_label_model):
    import predict
    save, classes, _ = single_label_model
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_csv(inputs / "good.csv", make_rows(5, seed=4))
    rows = make_rows(6, seed=3)
    rows[2] = (rows[2][0], "happiness")
    write_csv(inputs / "bad.csv", rows)
    code, out, err = call(predict.main, ["-f", str(inputs), "-d", classes, "-p", "False", "--save_path", save,
                                         "--out_dir", str(tmp_path / "p"), "--report", "True"])
    assert code == 1  # the good file is predicted and reported; the bad one is named
    assert os.path.exists(tmp_path / "p" / "report_good" / "metrics.json")
    assert "bad.csv, row 4, column 'emotion': label 'happiness' is not a class" in err
    assert "Traceback" not in err


def test_multi_label_validation_split_keeps_every_class_and_is_seeded():
    from dataset import stratified_split
    rng = np.random.default_rng(0)
    labels = [sorted({int(rng.integers(3)), *([3] if i % 25 == 0 else [])}) for i in range(500)]
    a = stratified_split(labels, 0.2, 7, NAMES + ["rare"], True)
    assert a == stratified_split(labels, 0.2, 7, NAMES + ["rare"], True)
    valid = [labels[i] for i in a[1]]
    for c in range(4):
        share_all = np.mean([c in lab for lab in labels])
        share_valid = np.mean([c in lab for lab in valid])
        assert share_valid == pytest.approx(share_all, abs=0.05), c


def test_bench_converts_goemotions_tsv_to_the_csv_train_py_reads(tmp_path):
    from conftest import load_bench
    accuracy = load_bench("accuracy")
    from dataset import load_labelled_file
    tsv = tmp_path / "train.tsv"
    # GoEmotions quotes nothing: a text may start with a quote character and hold commas
    tsv.write_text('"Quoted" start, and a comma\t0,2\tid1\nplain text\t1\tid2\n', encoding="utf-8")
    out = str(tmp_path / "train.csv")
    assert accuracy.convert_split(str(tsv), out) == 2
    data = load_labelled_file(out, "sentences", "emotion", NAMES, multi_label=True)
    assert data.texts == ['"Quoted" start, and a comma', "plain text"]
    assert data.labels == [[0, 2], [1]]


def test_allow_empty_reaches_predict(tmp_path, tiny_bert):
    import predict
    import train
    from checkpoint import commit_files
    classes = write_classes(tmp_path / "classes.json")
    save = str(tmp_path / "ml")
    code, _, err = call(train.main, ["-d", classes, "-p", "False", "--train_path",
                                     write_csv(tmp_path / "ml.csv", multi_rows(60)), "--bert_name", tiny_bert,
                                     "--save_path", save, "--n_epochs", "1", "--batch_size", "8", "--max_length",
                                     "32", "--multi_label", "True"])
    assert code == 0, err
    staged = tmp_path / "calibration.json"
    staged.write_text(json.dumps({"temperature": 1.0, "thresholds": [1.1, 1.1, 1.1]}))  # nothing passes
    commit_files(save, {"calibration.json": str(staged)})
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_csv(inputs / "x.csv", multi_rows(10, seed=9))
    labels = {}
    for allow in ("False", "True"):
        out_dir = str(tmp_path / f"out_{allow}")
        code, _, err = call(predict.main, ["-f", str(inputs), "-d", classes, "-p", "False", "--save_path", save,
                                           "--out_dir", out_dir, "--allow_empty", allow])
        assert code == 0, err
        with open(os.path.join(out_dir, "x.csv"), encoding="utf-8") as f:
            labels[allow] = [row["label"] for row in csv.DictReader(f)]
    assert all(labels["False"]) and not any(labels["True"])



def test_bench_thresholds_estimators_and_the_files_they_read(tmp_path):
    from conftest import load_bench
    bench = load_bench("thresholds")
    # class 0: positives at 0.9 and 0.7, negatives at 0.8 and 0.1: F1 is best (0.8) cutting anywhere in (0.1, 0.7]
    probs = np.array([[0.9, 0.2], [0.8, 0.6], [0.7, 0.4], [0.1, 0.3]])
    y = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])
    assert bench.grid_thresholds(probs, y)[0] == pytest.approx(0.11)  # the first grid point of the best plateau
    rng = np.random.default_rng(0)
    probs = rng.random((60, 3))
    y = (rng.random((60, 3)) < probs).astype(int)
    for width in (0, 2, 5, 10):  # against the F1 curve written out point by point and averaged by hand
        for c in range(3):
            curve = []
            for t in bench.GRID:
                chosen = probs[:, c] >= t
                curve.append(2 * (chosen & (y[:, c] == 1)).sum() / (chosen.sum() + y[:, c].sum()))
            padded = [curve[0]] * width + curve + [curve[-1]] * width
            smooth = [np.mean(padded[k:k + 2 * width + 1]) for k in range(len(curve))]
            assert bench.grid_thresholds(probs, y, width)[c] == pytest.approx(bench.GRID[int(np.argmax(smooth))])
    # f1_half: class 0 of the hand-made case above reaches F1 0.8 at its best cut, so its threshold is 0.4
    hand = np.array([[0.9, 0.2], [0.8, 0.6], [0.7, 0.4], [0.1, 0.3]]), np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    assert bench.f1_half_thresholds(*hand).tolist() == [pytest.approx(0.4), calibrate.DEFAULT_THRESHOLD]
    scores = bench.held_out_scores(probs, y, halves=3, seed=0)
    assert set(scores) == set(bench.ESTIMATORS) and all(len(v) == 3 and 0 <= min(v) <= max(v) <= 1
                                                        for v in scores.values())
    np.save(tmp_path / "probs.npy", probs[:4, :2])
    (tmp_path / "dev.csv").write_text('sentences,emotion\na,0\nb,1\nc,"0,1"\nd,1\n', encoding="utf-8")
    # the command line runs end to end on two files and scores their mean too
    assert bench.main([str(tmp_path / "dev.csv"), str(tmp_path / "probs.npy"), str(tmp_path / "probs.npy"),
                       "--halves", "2"]) == 0
    # predict.py's predictions CSV: a probability column per class name, read in the label map's id order (not the
    # file's), or per `<task>:<class>` with --task; its rows must be the validation file's
    (tmp_path / "classes.json").write_text('{"b": 1, "a": 0}', encoding="utf-8")
    pairs = list(zip("abcd", probs[:4, :2]))
    by_name = "".join(f"{t},{p1},{p0},a\n" for t, (p0, p1) in pairs)
    (tmp_path / "preds.csv").write_text("sentences,b,a,label\n" + by_name, encoding="utf-8")
    by_task = "".join(f"{t},{p0},{p1}\n" for t, (p0, p1) in pairs)
    (tmp_path / "tasks.csv").write_text("sentences,x:a,x:b\n" + by_task, encoding="utf-8")
    classes = str(tmp_path / "classes.json")
    for path, task in (("preds.csv", ""), ("tasks.csv", "x")):
        loaded, texts = bench.load_probabilities(str(tmp_path / path), classes, task)
        assert np.array_equal(loaded, probs[:4, :2]) and texts == list("abcd")
    assert bench.main([str(tmp_path / "dev.csv"), str(tmp_path / "preds.csv"), "--classes", classes,
                       "--halves", "2"]) == 0
    with pytest.raises(SystemExit, match="needs --classes"):
        bench.main([str(tmp_path / "dev.csv"), str(tmp_path / "preds.csv")])
    with pytest.raises(SystemExit, match="no column x:a, x:b"):
        bench.main([str(tmp_path / "dev.csv"), str(tmp_path / "preds.csv"), "--classes", classes, "--task", "x"])
    (tmp_path / "dev3.csv").write_text('sentences,emotion\na,0\nb,1\nc,"0,1"\n', encoding="utf-8")
    with pytest.raises(SystemExit, match="its 4 rows are not the 3 rows"):
        bench.main([str(tmp_path / "dev3.csv"), str(tmp_path / "preds.csv"), "--classes", classes])
    (tmp_path / "devx.csv").write_text('sentences,emotion\na,0\nb,1\nz,"0,1"\nd,1\n', encoding="utf-8")
    with pytest.raises(SystemExit, match="are not the 4 rows"):  # same count, other texts
        bench.main([str(tmp_path / "devx.csv"), str(tmp_path / "preds.csv"), "--classes", classes])


def test_bench_thresholds_reads_a_model_of_finer_classes_out_as_the_coarse_ones(tmp_path, capsys):
    """--fine: each coarse class's probability is 1 - prod(1 - p) over its fine classes (by hand here), the read-out
    joins the ensemble mean, and maps that leave a fine class out, list it twice or name other classes are refused."""
    from conftest import load_bench
    bench = load_bench("thresholds")
    fine = np.array([[0.5, 0.2, 0.1], [0.0, 0.9, 0.5], [1.0, 0.0, 0.0], [0.3, 0.4, 0.5]])
    fine_map = {"neg": ["anger", "grief"], "pos": ["joy"]}
    coarse = bench.read_out(fine, ["joy", "anger", "grief"], fine_map, ["pos", "neg"])
    assert np.allclose(coarse, [[0.5, 0.28], [0.0, 0.95], [1.0, 0.0], [0.3, 0.7]])
    for bad_map, message in (({"neg": ["anger"], "pos": ["joy"]}, "not so for grief"),
                             ({"neg": ["anger", "grief"], "pos": ["joy", "grief"]}, "not so for grief"),
                             ({"neg": ["anger", "grief"], "positive": ["joy"]}, r"\(neg, positive\) are not those"),
                             ({"neg": ["anger", "grief"], "pos": "joy"}, "not a JSON object of lists")):
        with pytest.raises(SystemExit, match=message):
            bench.read_out(fine, ["joy", "anger", "grief"], bad_map, ["pos", "neg"])
    (tmp_path / "dev.csv").write_text('sentences,emotion\na,0\nb,1\nc,0\nd,"0,1"\n', encoding="utf-8")
    (tmp_path / "fine.json").write_text('{"joy": 0, "anger": 1, "grief": 2}', encoding="utf-8")
    (tmp_path / "coarse.json").write_text('{"pos": 0, "neg": 1}', encoding="utf-8")
    (tmp_path / "map.json").write_text(json.dumps(fine_map), encoding="utf-8")
    # columns in another order than the label map's ids: read by name
    (tmp_path / "fine.csv").write_text("sentences,grief,joy,anger,label\n" + "".join(
        f"{t},{p[2]},{p[0]},{p[1]},joy\n" for t, p in zip("abcd", fine)), encoding="utf-8")
    (tmp_path / "own.csv").write_text("sentences,pos,neg,label\n" + "".join(
        f"{t},{p},{1 - p},pos\n" for t, p in zip("abcd", (0.9, 0.2, 0.6, 0.5))), encoding="utf-8")
    files = {name: str(tmp_path / f"{name}.json") for name in ("fine", "coarse", "map")}
    loaded, texts = bench.load_read_out(str(tmp_path / "fine.csv"), type("Args", (), {
        "fine_classes": files["fine"], "classes": files["coarse"], "fine_map": files["map"]}))
    assert np.allclose(loaded, coarse) and texts == list("abcd")
    flags = ["--classes", files["coarse"], "--fine_classes", files["fine"], "--fine_map", files["map"], "--halves", "2"]
    dev, fine_csv, own_csv = (str(tmp_path / f) for f in ("dev.csv", "fine.csv", "own.csv"))
    assert bench.main([dev, "--fine", fine_csv, *flags, own_csv]) == 0  # a file after the options is no --fine
    out = capsys.readouterr().out
    assert out.index(own_csv + "\n") < out.index(f"{fine_csv} (read out)\n") < out.index("mean of the above")
    (tmp_path / "fine2.csv").write_text((tmp_path / "fine.csv").read_text(encoding="utf-8"), encoding="utf-8")
    assert bench.main([dev, "--fine", fine_csv, "--fine", str(tmp_path / "fine2.csv"), *flags]) == 0
    assert capsys.readouterr().out.count(" (read out)\n") == 2
    with pytest.raises(SystemExit, match="--fine needs --fine_classes, --fine_map$"):
        bench.main([dev, "--fine", fine_csv, "--classes", files["coarse"]])
    with pytest.raises(SystemExit, match="give --fine too"):
        bench.main([dev, own_csv, "--classes", files["coarse"], "--fine_map", files["map"]])
    with pytest.raises(SystemExit, match=r"no column joy, anger, grief \(--fine_classes"):
        bench.main([dev, "--fine", own_csv, *flags])
    with pytest.raises(SystemExit, match="no probabilities to score"):
        bench.main([dev])
