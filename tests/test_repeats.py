"""--seeds, --cv and --ensemble (repeats.py, ensemble.py) and bench/compare.py, on the tiny random BERT."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import NAMES, call, load_bench, make_rows, write_classes, write_csv

ROWS = 45  # 15 per class: 39 training and 6 validation rows with the 10% split, seconds per member
FLAGS = ["-p", "False", "--n_epochs", "1", "--batch_size", "8", "--lr_main", "1e-3", "--lr", "5e-3",
         "--max_length", "32", "--log_every", "1000"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_bert):
    folder = tmp_path_factory.mktemp("repeats")
    classes = write_classes(folder / "classes.json")
    train = write_csv(folder / "train.csv", make_rows(ROWS))
    inputs = folder / "inputs"
    inputs.mkdir()
    write_csv(inputs / "labelled.csv", make_rows(12, seed=1))
    (inputs / "plain.txt").write_text("\n".join(t for t, _ in make_rows(5, seed=2)) + "\n", encoding="utf-8")
    return {"dir": folder, "classes": classes, "train": train, "inputs": str(inputs),
            "args": ["-d", classes, "--train_path", train, "--bert_name", tiny_bert, *FLAGS]}


def run_train(data, save, *flags):
    import train
    code, out, err = call(train.main, [*data["args"], "--save_path", str(save), *flags])
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def seeds_run(data):
    save = data["dir"] / "seeds"
    out = run_train(data, save, "--seeds", "3")
    return {"save": str(save), "out": out}


@pytest.fixture(scope="module")
def cv_run(data):
    save = data["dir"] / "cv"
    out = run_train(data, save, "--cv", "3", "--ensemble", "True", "--multi_label", "True")
    return {"save": str(save), "out": out}


def read_json(*parts):
    with open(os.path.join(*parts), encoding="utf-8") as f:
        return json.load(f)


def weights_hash(folder):
    return read_json(folder, "manifest.json")["files"]["model.safetensors"]


# ------------------------------------------------------------------------------------------------------ folds
def test_folds_hold_every_row_once_with_each_class_in_proportion_and_follow_the_seed():
    from dataset import stratified_folds
    keys = [0] * 10 + [1] * 7 + [2] * 4 + [3] * 1
    folds = stratified_folds(keys, 3, seed=42)
    assert sorted(i for fold in folds for i in fold) == list(range(len(keys)))  # each row in exactly one fold
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    for cls in set(keys):
        share = keys.count(cls) / 3
        assert all(abs(sum(keys[i] == cls for i in fold) - share) < 1 for fold in folds), cls
    assert stratified_folds(keys, 3, seed=42) == folds
    assert stratified_folds(keys, 3, seed=7) != folds


def test_multi_label_rows_are_balanced_by_their_rarest_label_as_the_validation_split_is():
    from dataset import stratify_keys
    labels = [[0, 1], [1], [1], [0, 2], [1, 2], [1]]  # counts: 0 twice, 1 five times, 2 twice
    assert stratify_keys(labels, 3, True) == [0, 1, 1, 0, 2, 1]
    assert stratify_keys([2, 0, 1], 3, False) == [2, 0, 1]


# ------------------------------------------------------------------------------------------------------ seeds
def test_seeds_train_one_member_folder_per_seed_with_different_weights(seeds_run):
    members = os.path.join(seeds_run["save"], "members")
    assert sorted(os.listdir(members)) == ["seed_42", "seed_43", "seed_44"]
    for name in os.listdir(members):
        for part in ("metrics.json", "report/metrics.json", "calibration.json", "member.json"):
            assert os.path.isfile(os.path.join(members, name, part)), (name, part)
    assert len({weights_hash(os.path.join(members, name)) for name in os.listdir(members)}) == 3
    configs = [read_json(members, name, "train_config.json") for name in sorted(os.listdir(members))]
    assert [c["seed"] for c in configs] == [42, 43, 44]


def test_every_seed_validates_on_the_split_of_the_first_seed(seeds_run):
    import train
    from config import Config
    summary = read_json(seeds_run["save"], "repeats.json")
    cfg = Config(train_path=os.path.join(os.path.dirname(seeds_run["save"]), "train.csv"),
                 dict_path=os.path.join(os.path.dirname(seeds_run["save"]), "classes.json"), seed=42)
    _, _, valid = train.load_data(cfg)
    assert summary["split_seed"] == 42
    assert {r["valid_rows"] for r in summary["members"]} == {len(valid.labels)}
    for record in summary["members"]:
        report = read_json(seeds_run["save"], record["path"], "report", "metrics.json")
        assert report["rows"] == len(valid.labels)


def test_the_summary_holds_each_members_best_epoch_and_numpys_mean_and_sample_std(seeds_run):
    save = seeds_run["save"]
    summary = read_json(save, "repeats.json")
    assert [r["name"] for r in summary["members"]] == ["seed_42", "seed_43", "seed_44"]
    records = []
    for record in summary["members"]:
        metrics = read_json(save, record["path"], "metrics.json")
        best = metrics["epochs"][metrics["best_epoch"] - 1]
        assert {k: record[k] for k in ("valid_loss", "valid_accuracy", "valid_macro_f1")} == \
            {k: best[k] for k in ("valid_loss", "valid_accuracy", "valid_macro_f1")}
        records.append(best)
    for key in ("valid_loss", "valid_accuracy", "valid_macro_f1"):
        values = [r[key] for r in records]
        assert summary["mean"][key] == pytest.approx(np.mean(values), abs=1e-12)
        assert summary["std"][key] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    line = next(line for line in seeds_run["out"].splitlines() if line.startswith("seeds 42,43,44: "))
    assert f"valid macro-F1 {summary['mean']['valid_macro_f1']:.4f} ± {summary['std']['valid_macro_f1']:.4f}" in line
    assert "| accuracy " in line and "| loss " in line


def test_the_best_member_by_the_metric_is_the_model_at_save_path(seeds_run):
    import predict
    save = seeds_run["save"]
    summary = read_json(save, "repeats.json")
    best = max(summary["members"], key=lambda r: r["valid_macro_f1"])  # first of equals, as --metric picks
    assert summary["best"] == best["name"]
    member = os.path.join(save, best["path"])
    assert weights_hash(save) == weights_hash(member)
    for name in ("calibration.json", "metrics.json", "report/metrics.json"):
        with open(os.path.join(save, name), "rb") as f, open(os.path.join(member, name), "rb") as g:
            assert f.read() == g.read(), name
    # the member's kept probabilities are for an ensemble, not part of the model's report
    assert os.path.isfile(os.path.join(member, "report", "validation_probabilities.npy"))
    assert not os.path.exists(os.path.join(save, "report", "validation_probabilities.npy"))
    texts = [t for t, _ in make_rows(9, seed=3)]
    np.testing.assert_array_equal(predict.load_classifier(save).predict(texts).probabilities,
                                  predict.load_classifier(member).predict(texts).probabilities)


def test_one_seed_writes_no_members_and_no_summary_and_equals_the_member_of_its_seed(data, seeds_run, tmp_path):
    save = tmp_path / "one"
    out = run_train(data, save)
    assert not (save / "members").exists() and not (save / "repeats.json").exists()
    assert "== member" not in out
    # the same seed trains the same weights alone or as a member: members differ by their seed only
    assert weights_hash(str(save)) == weights_hash(os.path.join(seeds_run["save"], "members", "seed_42"))


# ------------------------------------------------------------------------------------------------------ resume
def test_resume_auto_after_every_member_finished_trains_nothing_and_writes_the_same_summary(data, seeds_run):
    save = seeds_run["save"]
    with open(os.path.join(save, "repeats.json"), "rb") as f:
        before = f.read()
    out = run_train(data, save, "--seeds", "3", "--resume", "auto")
    assert out.count("not trained again (--resume auto)") == 3, out
    assert "epoch 1:" not in out and "== member" not in out
    with open(os.path.join(save, "repeats.json"), "rb") as f:
        assert f.read() == before


def test_a_stopped_member_resumes_from_its_own_folder_and_ends_as_an_uninterrupted_one(data, seeds_run, tmp_path,
                                                                                       monkeypatch):
    import train
    original = train.Training.after_update

    def stop_in_seed_43(self, micro_steps):
        if self.cfg.seed == 43 and self.progress.updates == 2:
            self.stop.signal = "SIGUSR1"  # what the handler of a preemption signal sets
        return original(self, micro_steps)
    save = tmp_path / "stopped"
    monkeypatch.setattr(train.Training, "after_update", stop_in_seed_43)
    code, out, err = call(train.main, [*data["args"], "--save_path", str(save), "--seeds", "2"])
    assert code == 75, err
    assert (save / "members" / "seed_42" / "member.json").exists()
    assert not (save / "members" / "seed_43" / "member.json").exists() and not (save / "repeats.json").exists()
    monkeypatch.setattr(train.Training, "after_update", original)
    out = run_train(data, save, "--seeds", "2", "--resume", "auto")
    assert "member seed_42 (1 of 2): complete" in out and "resumed from" in out and "3 update(s) so far" in out
    reference = {r["name"]: r for r in read_json(seeds_run["save"], "repeats.json")["members"]}
    for record in read_json(str(save), "repeats.json")["members"]:
        assert record == reference[record["name"]]  # the same scores, to the bit


# ----------------------------------------------------------------------------------------------- cv, ensemble
def test_cv_members_validate_on_disjoint_folds_that_cover_the_training_file(cv_run):
    summary = read_json(cv_run["save"], "repeats.json")
    assert summary["kind"] == "cv" and summary["folds"] == 3
    assert [r["name"] for r in summary["members"]] == ["fold_0", "fold_1", "fold_2"]
    assert sum(r["valid_rows"] for r in summary["members"]) == ROWS
    assert all(r["train_rows"] + r["valid_rows"] == ROWS for r in summary["members"])
    assert {"macro_f1_cross_fitted", "macro_f1_at_0.5"} <= set(summary["mean"])  # multi-label scores
    assert "cross-fitted macro-F1" in next(line for line in cv_run["out"].splitlines() if line.startswith("folds 3"))


def test_the_ensemble_predicts_the_mean_of_its_members_probabilities_and_thresholds(cv_run):
    import predict
    save = cv_run["save"]
    assert not os.path.exists(os.path.join(save, "model.safetensors"))
    texts = [t for t, _ in make_rows(9, seed=3)]
    members = [predict.load_classifier(os.path.join(save, "members", f"fold_{k}")) for k in range(3)]
    ensemble = predict.load_classifier(save)
    out = ensemble.predict(texts)
    np.testing.assert_allclose(out.probabilities, np.mean([m.predict(texts).probabilities for m in members], axis=0),
                               atol=1e-6)
    thresholds = np.mean([m.extra["thresholds"] for m in members], axis=0)
    np.testing.assert_allclose(ensemble.extra["thresholds"], thresholds, atol=1e-6)
    # folds validated on different rows: no ensemble report, the members' thresholds averaged
    assert not os.path.exists(os.path.join(save, "report")) and "ensemble" not in read_json(save, "repeats.json")
    from calibrate import decide
    chosen = decide(out.probabilities, True, thresholds)
    assert out.labels == [[NAMES[j] for j in np.flatnonzero(row)] for row in chosen]


@pytest.fixture(scope="module")
def seeds_ensemble(data):
    valid = write_csv(data["dir"] / "valid.csv", make_rows(12, seed=5))
    save = data["dir"] / "seeds_ensemble"
    out = run_train(data, save, "--seeds", "2", "--ensemble", "True", "--multi_label", "True", "--valid_path", valid)
    return {"save": str(save), "out": out, "valid": valid}


def test_a_seeds_ensemble_reports_and_tunes_its_thresholds_on_its_members_mean_validation_probabilities(
        seeds_ensemble):
    import csv

    import predict
    from sklearn.metrics import f1_score

    from calibrate import cross_fitted_predictions, decide, target_matrix, tune_thresholds
    save = seeds_ensemble["save"]
    with open(seeds_ensemble["valid"], encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[1:]
    texts, y = [t for t, _ in rows], target_matrix([[NAMES.index(n)] for _, n in rows], len(NAMES))
    folders = [os.path.join(save, "members", f"seed_{s}") for s in (42, 43)]
    kept = [np.load(os.path.join(folder, "report", "validation_probabilities.npy")) for folder in folders]
    for folder, probs in zip(folders, kept):  # each member kept its calibrated probabilities of the validation rows
        np.testing.assert_allclose(probs, predict.load_classifier(folder).predict(texts).probabilities, atol=2e-3)
    mean = np.mean(kept, axis=0)
    thresholds = read_json(save, "calibration.json")["thresholds"]
    np.testing.assert_allclose(thresholds, tune_thresholds(mean, y), atol=1e-6)
    member_mean = np.mean([read_json(folder, "calibration.json")["thresholds"] for folder in folders], axis=0)
    assert not np.allclose(thresholds, member_mean)  # tuned on the ensemble, not the mean of the members'
    report = read_json(save, "report", "metrics.json")
    assert report["members"] == 2 and report["rows"] == len(rows)
    assert report["macro_f1_cross_fitted"] == pytest.approx(
        f1_score(y, cross_fitted_predictions(mean, y), average="macro", zero_division=0))
    assert report["macro_f1"] == pytest.approx(f1_score(y, decide(mean, True, thresholds), average="macro",
                                                        zero_division=0))
    summary = read_json(save, "repeats.json")
    assert summary["ensemble"]["macro_f1_cross_fitted"] == report["macro_f1_cross_fitted"]
    assert summary["ensemble"]["macro_f1_tuned"] == report["macro_f1"]
    line = next(line for line in seeds_ensemble["out"].splitlines() if line.startswith("ensemble of the 2 members"))
    assert f"cross-fitted macro-F1 {report['macro_f1_cross_fitted']:.4f}" in line, line
    out = predict.load_classifier(save).predict(texts)  # predict.py decides with the thresholds tuned above
    assert out.labels == [[NAMES[j] for j in np.flatnonzero(row)] for row in decide(out.probabilities, True,
                                                                                     thresholds)]


def test_predict_py_reads_an_ensemble_folder_as_a_model(data, cv_run, tmp_path):
    import predict
    save, out_dir = cv_run["save"], str(tmp_path / "preds")
    argv = ["-f", data["inputs"], "-d", data["classes"], "-p", "False", "--save_path", save, "--out_dir", out_dir,
            "--report", "True"]
    code, out, err = call(predict.main, argv)
    assert code == 0, err
    import csv
    with open(os.path.join(out_dir, "labelled.csv"), encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["sentences", "label", *NAMES]
    expected = predict.load_classifier(save).predict([r["sentences"] for r in rows]).probabilities
    np.testing.assert_allclose([[float(r[n]) for n in NAMES] for r in rows], expected, atol=1e-6)
    assert os.path.isfile(os.path.join(out_dir, "report_labelled", "metrics.json"))
    code, out, err = call(predict.main, argv)
    assert code == 0 and out.count("up to date") == 2, out
    code, out, err = call(predict.main, [*argv, "--out_format", "jsonl", "--out_dir", str(tmp_path / "jsonl")])
    assert code == 0 and os.path.isfile(tmp_path / "jsonl" / "plain.jsonl"), err


def test_an_ensemble_is_refused_where_one_model_is_needed_and_replaced_whole_by_one(data, cv_run, tmp_path):
    import export
    import predict
    save = str(tmp_path / "copy")
    shutil.copytree(cv_run["save"], save)
    code, out, err = call(export.main, ["--save_path", save, "--out", str(tmp_path / "exported")])
    assert code == 2 and "an ensemble" in err and err.count("\n") == 1, err
    run_train(data, save, "--multi_label", "True")  # one model trained into the ensemble's folder
    assert not os.path.exists(os.path.join(save, "ensemble.json"))
    assert "ensemble.json" not in read_json(save, "manifest.json")["files"]
    assert predict.load_classifier(save).model.__class__.__name__ == "BertClassifier"


def test_an_ensemble_whose_member_changed_is_refused(cv_run, tmp_path):
    import predict
    from config import InputError
    save = str(tmp_path / "copy")
    shutil.copytree(cv_run["save"], save)
    manifest = read_json(save, "members", "fold_1", "manifest.json")
    manifest["note"] = "saved again"  # its files still match it: a whole model, not the one the ensemble recorded
    with open(os.path.join(save, "members", "fold_1", "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    with pytest.raises(InputError, match="changed after the ensemble"):
        predict.load_classifier(save)


@pytest.mark.parametrize("repeat", [("--cv", "2"), ("--seeds", "2")], ids=["cv", "seeds"])
def test_an_ensemble_of_two_tasks_averages_each_tasks_calibrated_probabilities(tiny_bert, tmp_path, repeat):
    import predict
    import train
    from test_multitask import HEADER, train_argv, two_task_rows
    data = write_csv(tmp_path / "train.csv", two_task_rows(40), header=HEADER)
    save = str(tmp_path / "model")
    valid_rows = two_task_rows(12, seed=6, empty_every=3)  # 4 rows without a polarity
    valid = [] if repeat[0] == "--cv" else ["--valid_path", write_csv(tmp_path / "valid.csv", valid_rows,
                                                                      header=HEADER)]
    code, out, err = call(train.main, train_argv(tiny_bert, tmp_path, data, save, *repeat, *valid, "--ensemble",
                                                 "True", "--multi_label", "True,False", "--n_epochs", "1"))
    assert code == 0, err
    assert "  task emotion: " in out and "  task polarity: " in out
    texts = [t for t, *_ in two_task_rows(6, seed=4)]
    ensemble = predict.load_classifier(save).predict(texts)
    names = sorted(os.listdir(os.path.join(save, "members")))
    members = [predict.load_classifier(os.path.join(save, "members", name)) for name in names]
    np.testing.assert_allclose(ensemble.probabilities,
                               np.mean([m.predict(texts).probabilities for m in members], axis=0), atol=1e-6)
    assert sorted(ensemble.labels) == ["emotion", "polarity"]
    calibration = read_json(save, "calibration.json")["tasks"]
    thresholds = calibration["emotion"]["thresholds"]
    member_mean = np.mean([m.extra["tasks"]["emotion"]["thresholds"] for m in members], 0)
    if repeat[0] == "--cv":
        np.testing.assert_allclose(thresholds, member_mean, atol=1e-6)
        return
    # --seeds: each task's report of the ensemble on its own labelled rows, thresholds tuned on the members' mean
    from calibrate import target_matrix, tune_thresholds
    scores = read_json(save, "repeats.json")["ensemble"]
    for task, rows in (("emotion", 12), ("polarity", 8)):
        report = read_json(save, "report", task, "metrics.json")
        assert report["members"] == 2 and report["rows"] == rows
        assert scores[f"valid_{task}_macro_f1"] == pytest.approx(
            report["macro_f1_at_0.5"] if task == "emotion" else report["macro_f1"])
    assert scores["valid_macro_f1"] == pytest.approx((scores["valid_emotion_macro_f1"]
                                                      + scores["valid_polarity_macro_f1"]) / 2)
    assert "thresholds" not in calibration["polarity"]  # single-label: the argmax of the mean
    kept = np.mean([np.load(os.path.join(save, "members", name, "report", "emotion", "validation_probabilities.npy"))
                    for name in names], axis=0)
    y = target_matrix([[NAMES.index(row[1])] for row in valid_rows], len(NAMES))
    np.testing.assert_allclose(thresholds, tune_thresholds(kept, y), atol=1e-6)
    line = next(line for line in out.splitlines() if line.startswith("ensemble of the 2 members"))
    assert f"valid macro-F1 {scores['valid_macro_f1']:.4f}" in line, line


def test_an_ensemble_whose_members_kept_no_or_other_probabilities_falls_back_and_says_why(data, tmp_path):
    import report
    save = tmp_path / "ensemble"
    args = ["--seeds", "2", "--ensemble", "True", "--multi_label", "True"]
    run_train(data, save, *args)
    folders = [str(save / "members" / f"seed_{s}") for s in (42, 43)]
    labels = read_json(folders[0], "report", "metrics.json")["rows"] * [[0]]
    parts, why = report.ensemble_parts(folders, labels, NAMES, True)  # as many rows, other labels
    assert parts is None and "other validation rows" in why
    os.remove(save / "members" / "seed_43" / "report" / "validation_probabilities.npy")
    out = run_train(data, save, *args, "--resume", "auto")  # the members are complete: not trained again
    assert "seed_43" in out and "no validation probabilities kept" in out and "not trained again" in out
    member_mean = np.mean([read_json(folder, "calibration.json")["thresholds"] for folder in folders], axis=0)
    np.testing.assert_allclose(read_json(save, "calibration.json")["thresholds"], member_mean, atol=1e-6)
    assert not os.path.exists(save / "report") and "ensemble" not in read_json(save, "repeats.json")


# ---------------------------------------------------------------------------------------------- bad options
BAD = [
    (["--ensemble", "True"], "--ensemble True needs members to average: --seeds > 1 or --cv >= 2"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--cv", "1"], "--cv must be 0 (off) or at least 2 folds"),
    (["--cv", "3", "--seeds", "2"], "--cv with --seeds > 1: choose one"),
    (["--cv", "3", "--valid_path", "{train}"], "--cv splits --train_path into folds and validates on each of them"),
    (["--seeds", "2", "--resume", "{dir}/resume/step-000010"], "with --seeds or --cv use --resume auto"),
    (["--cv", "46"], f"--cv 46: more folds than the {ROWS} rows of"),
]


@pytest.mark.parametrize("flags,message", BAD, ids=["ensemble_alone", "no_seeds", "one_fold", "cv_and_seeds",
                                                    "cv_and_valid_path", "resume_path", "more_folds_than_rows"])
def test_bad_repeat_options_are_one_line_exit_2_and_write_nothing(data, tmp_path, flags, message):
    import train
    save = tmp_path / "model"
    flags = [f.format(train=data["train"], dir=tmp_path) for f in flags]
    code, out, err = call(train.main, [*data["args"], "--save_path", str(save), *flags])
    assert code == 2, (out, err)
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not save.exists()


# ---------------------------------------------------------------------------------------------- bench/compare
def test_the_paired_interval_is_the_t_interval_of_the_differences():
    compare = load_bench("compare")
    got = compare.paired_interval([0.50, 0.60, 0.70], [0.51, 0.62, 0.73])
    assert got["differences"] == pytest.approx([0.01, 0.02, 0.03])
    assert got["mean"] == pytest.approx(0.02) and got["sd"] == pytest.approx(0.01)
    assert got["half_width"] == pytest.approx(4.302653 * 0.01 / np.sqrt(3), rel=1e-6)  # t(0.975, 2) = 4.302653
    assert (got["low"], got["high"]) == pytest.approx((0.02 - got["half_width"], 0.02 + got["half_width"]))
    assert compare.verdict(got) == "no difference shown: the interval includes 0"  # [-0.0048, 0.0448]
    assert compare.verdict(compare.paired_interval([0.5, 0.6, 0.7], [0.52, 0.621, 0.719])) == \
        "B beats A: the interval excludes 0"
    assert compare.verdict(compare.paired_interval([0.5, 0.6], [0.4, 0.49])).startswith("A beats B")


def test_compare_trains_both_configurations_on_the_same_seeds_and_saves_the_comparison(data, tiny_bert, tmp_path):
    compare = load_bench("compare")
    code = compare.main(["--train_path", data["train"], "-d", data["classes"], "--seeds", "2", "--a", "",
                         "--b", "--dropout_p 0.3", "--work_dir", str(tmp_path / "work"), "--results",
                         str(tmp_path / "results"), "--", "--bert_name", tiny_bert, *FLAGS])
    assert code == 0
    (saved,) = os.listdir(tmp_path / "results")
    result = read_json(str(tmp_path / "results"), saved)
    assert result["seeds"] == [42, 43] and result["b"] == "--dropout_p 0.3"
    score = result["scores"]["valid_macro_f1"]
    assert score["differences"] == pytest.approx([y - x for x, y in zip(score["a"], score["b"])])
    b_config = read_json(str(tmp_path / "work"), "model_b", "members", "seed_43", "train_config.json")
    assert b_config["dropout_p"] == 0.3 and b_config["seed"] == 43


@pytest.mark.parametrize("shape", ["pairs", "windows", "pair_windows"])
def test_an_ensemble_of_pairs_or_long_text_windows_predicts_the_mean_of_its_members(data, tmp_path, shape):
    import predict
    from test_long_text import WINDOW, long_rows
    rows = long_rows(40) if "windows" in shape else make_rows(40)
    pairs = "pair" in shape
    header = ("sentences", "about", "emotion") if pairs else ("sentences", "emotion")
    train_path = write_csv(tmp_path / "train.csv", [(t, f"about {n}", n) if pairs else (t, n)
                                                    for i, (t, n) in enumerate(rows)], header=header)
    flags = (["--text_col2", "about"] if pairs else []) + (WINDOW if "windows" in shape else [])
    save = tmp_path / "model"
    args = [*data["args"], "--train_path", train_path, "--save_path", str(save), "--seeds", "2", "--ensemble",
            "True", *flags]
    import train
    code, out, err = call(train.main, args)
    assert code == 0, err
    texts = [t for t, _ in (long_rows(6, seed=3) if "windows" in shape else make_rows(6, seed=3))]
    texts2 = [f"about {n}" for n in NAMES[:3]] * 2 if pairs else None
    ensemble = predict.load_classifier(str(save))
    members = [predict.load_classifier(os.path.join(save, "members", m))
               for m in sorted(os.listdir(os.path.join(save, "members")))]
    assert len(members) == 2
    got = ensemble.predict(texts, texts2).probabilities
    np.testing.assert_allclose(got, np.mean([m.predict(texts, texts2).probabilities for m in members], axis=0),
                               atol=1e-6)
    assert not np.allclose(*[m.predict(texts, texts2).probabilities for m in members])  # two seeds, two models


def test_seeds_share_one_boost_cache_and_runs_share_a_given_one(data, tmp_path):
    import train
    boost = ["--bert_finetuning", "False", "--boost", "True"]
    save = tmp_path / "seeds"
    code, out, err = call(train.main, [*data["args"], "--save_path", str(save), "--seeds", "2", *boost])
    assert code == 0, err
    encoded, cached = out.split("== member seed_43")
    assert "--boost: encoded" in encoded and "--boost: encoded" not in cached  # the second seed reads the first's
    assert "encoding for --boost" not in err  # off a terminal no progress bar is redrawn into the log
    assert "sentence vectors from the cache" in cached
    assert os.listdir(save / "boost_cache") and not (save / "members" / "seed_42" / "boost_cache").exists()
    shared = tmp_path / "shared_cache"
    for name in ("a", "b"):
        code, out, err = call(train.main, [*data["args"], "--save_path", str(tmp_path / name), "--boost_cache",
                                           str(shared), *boost])
        assert code == 0, err
        assert ("--boost: encoded" in out) == (name == "a"), out
    assert not (tmp_path / "b" / "boost_cache").exists() and len(os.listdir(shared)) == 1
    (tmp_path / "a_file").write_text("x")
    for flags, message in ((["--boost_cache", str(shared)], "add --boost True"),
                           ([*boost, "--boost_cache", str(tmp_path / "a_file")], "exists and is not a folder")):
        code, out, err = call(train.main, [*data["args"], "--save_path", str(tmp_path / "c"), *flags])
        assert code == 2 and message in err and err.count("\n") == 1, err


def test_a_finished_member_trained_on_other_rows_is_trained_again(data, tmp_path):
    """member.json records the data's SHA-256: a training file relabelled in place after the members finished
    makes --resume auto train them again, not reuse them beside new ones."""
    import shutil
    own = {**data, "args": [a if a != data["train"] else str(tmp_path / "train.csv") for a in data["args"]]}
    shutil.copyfile(data["train"], tmp_path / "train.csv")
    run_train(own, tmp_path / "run", "--seeds", "2")
    assert run_train(own, tmp_path / "run", "--seeds", "2", "--resume", "auto").count("not trained again") == 2
    rows = make_rows(ROWS)
    write_csv(tmp_path / "train.csv", [(rows[0][0], rows[1][1]), *rows[1:]])  # the first row relabelled
    out = run_train(own, tmp_path / "run", "--seeds", "2", "--resume", "auto")
    assert out.count("trained on other rows or classes, training it again") == 2, out
    assert "not trained again" not in out and out.count("== member") == 2


def test_a_member_trained_again_with_other_options_starts_afresh_not_from_its_old_checkpoints(data, tmp_path):
    """--save_every leaves resumable checkpoints in each member; a member trained again because the options
    changed must not try to resume from them (that was refused in one line, exit 2)."""
    run_train(data, tmp_path / "run", "--seeds", "2", "--save_every", "3")
    assert os.listdir(tmp_path / "run" / "members" / "seed_42" / "resume")
    out = run_train(data, tmp_path / "run", "--seeds", "2", "--save_every", "3", "--resume", "auto", "--lr", "4e-3")
    assert out.count("trained with other options, training it again") == 2 and "resumed from" not in out, out
