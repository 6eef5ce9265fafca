"""--label_groups: the head learns fine classes, and everything after it sees their groups (label_groups.py)."""
import csv
import json
import os

import numpy as np
import pytest
import torch

from conftest import call, load_bench, make_rows, write_classes, write_csv

GROUPS = {"negative": ["anger", "sadness"], "positive": ["joy"]}


def test_multi_label_read_out_is_the_probability_that_any_class_of_the_group_is_present():
    from label_groups import GroupReadOut, LabelGroups
    read_out = GroupReadOut(LabelGroups(["a", "b", "c"], {"x": ["a", "b"], "y": ["c"], "z": ["a", "c"]}), True)
    logits = torch.tensor([[-30.0, -20.0, 50.0], [0.0, 0.0, -5.0], [3.0, -1.0, -0.001], [-9.2, -9.2, -80.0],
                           [0.005, -4.6, 1e-4]])
    p = torch.sigmoid(logits.double())
    want = torch.stack([1 - (1 - p[:, 0]) * (1 - p[:, 1]), p[:, 2], 1 - (1 - p[:, 0]) * (1 - p[:, 2])], dim=1)
    got = torch.sigmoid(read_out(logits).double())
    assert got.shape == (5, 3) and read_out.n_groups == 3
    assert torch.all(torch.isfinite(read_out(logits)))
    assert torch.allclose(got, want, rtol=1e-5, atol=0)  # relative: the 2e-9 and 2e-35 ones too


def test_single_label_read_out_sums_the_classes_softmax_probabilities():
    from label_groups import GroupReadOut, LabelGroups
    read_out = GroupReadOut(LabelGroups(["a", "b", "c", "d"], {"x": ["a", "c"], "y": ["b"], "w": ["d"]}), False)
    logits = torch.tensor([[1.0, 2.0, -3.0, 0.5], [80.0, -80.0, 79.0, 0.0], [-5.0, -5.0, -5.0, -5.0]])
    p = torch.softmax(logits.double(), dim=1)
    want = torch.stack([p[:, 0] + p[:, 2], p[:, 1], p[:, 3]], dim=1)
    got = torch.softmax(read_out(logits).double(), dim=1)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-30)


@pytest.mark.parametrize("multi_label", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_read_out_stays_float32_under_autocast(multi_label, dtype):
    """Validation and prediction run under autocast: a group sum in bf16 or fp16 would round a small one to 0."""
    from label_groups import GroupReadOut, LabelGroups
    read_out = GroupReadOut(LabelGroups(["a", "b", "c"], {"x": ["a", "b"], "y": ["c"]}), multi_label)
    logits = torch.tensor([[-30.0, -20.0, 50.0], [-40.0, -45.0, -5.0], [3.0, -1.0, -0.001]])
    with torch.autocast("cpu", dtype=dtype):
        under_autocast = read_out(logits)
    assert under_autocast.dtype == torch.float32 and torch.all(torch.isfinite(under_autocast))
    assert torch.equal(under_autocast, read_out(logits))


def test_group_labels_of_fine_labels():
    from label_groups import LabelGroups
    groups = LabelGroups(["anger", "joy", "sadness"], GROUPS)
    assert groups.names == ["negative", "positive"]
    assert groups.group_labels([0, 1, 2], False) == [0, 1, 0]
    assert groups.group_labels([[0, 2], [1], [0, 1]], True) == [[0], [1], [0, 1]]
    assert groups.membership().tolist() == [[1, 0], [0, 1], [1, 0]]


def grouped_task(folder, tiny_bert, multi_label: bool, groups=GROUPS, *flags) -> dict:
    """Tiny-task files with a groups map, and train.py's flags for the tiny model with --label_groups."""
    rows = make_rows(60)
    if multi_label:  # every fourth row also joy: a row of both groups
        rows = [(text, label if i % 4 else f"{label},joy") for i, (text, label) in enumerate(rows)]
    classes = write_classes(folder / "classes.json")
    data = write_csv(folder / "train.csv", rows)
    groups_path = folder / "groups.json"
    groups_path.write_text(json.dumps(groups), encoding="utf-8")
    save = str(folder / "model")
    args = ["-d", classes, "--train_path", data, "--bert_name", tiny_bert, "--save_path", save, "--n_epochs", "2",
            "--batch_size", "8", "--lr_main", "1e-3", "--lr", "5e-3", "--max_length", "32", "--multi_label",
            str(multi_label), "--label_groups", str(groups_path), "--tensorboard", "False", *flags]
    return {"classes": classes, "train": data, "groups": str(groups_path), "save": save, "args": args, "rows": rows}


def plain_fine_probabilities(save: str, texts: list, multi_label: bool) -> np.ndarray:
    """The saved model's fine classes' probabilities (its read-out removed), at the saved temperature of 1."""
    from checkpoint import load_model
    model, tokenizer, _, _, _ = load_model(save, torch.device("cpu"))
    model.read_out = None
    batch = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch.get("token_type_ids")).double()
    return (torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=1)).numpy()


@pytest.mark.parametrize("multi_label", [True, False])
def test_train_validates_and_saves_the_groups_and_predict_writes_them(tmp_path, tiny_bert, multi_label):
    import predict
    import train
    task = grouped_task(tmp_path, tiny_bert, multi_label)
    code, out, err = call(train.main, task["args"])
    assert code == 0, err
    assert "the head learns 3 classes; validation, calibration and predictions use their 2 groups" in out
    save = task["save"]
    with open(os.path.join(save, "classes.json")) as f:
        assert json.load(f) == {"negative": 0, "positive": 1}
    with open(os.path.join(save, "label_groups.json")) as f:
        assert json.load(f) == {"classes": ["anger", "joy", "sadness"], "groups": GROUPS}
    with open(os.path.join(save, "manifest.json")) as f:
        assert "label_groups.json" in json.load(f)["files"]
    with open(os.path.join(save, "report", "metrics.json")) as f:
        report = json.load(f)
    assert set(report["per_class"]) >= {"negative", "positive"} and "anger" not in report["per_class"]
    # predict.py takes the fine label map the model learnt, writes the groups' columns and scores a file of
    # fine labels by their groups
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_csv(inputs / "a.csv", task["rows"][:12])
    code, out, err = call(predict.main, ["-f", str(inputs), "-d", task["classes"], "-p", "False", "--save_path", save,
                                         "--out_dir", str(tmp_path / "out"), "--report", "True",
                                         "--precision", "fp32"])
    assert code == 0, err
    with open(tmp_path / "out" / "a.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["sentences", "label", "negative", "positive"]
    assert all(set(r["label"].split(",")) <= {"negative", "positive"} for r in rows)
    assert os.path.isfile(tmp_path / "out" / "report_a" / "metrics.json")
    # the groups' probabilities are the read-out of the fine classes' (temperature 1 here, calibration not applied)
    clf = predict.load_classifier(save, precision="fp32")
    assert clf.classes == ["negative", "positive"]
    texts = [t for t, _ in task["rows"][:5]]
    clf.extra = {"temperature": 1.0}
    got = clf.predict(texts).probabilities
    fine = plain_fine_probabilities(save, texts, multi_label)
    if multi_label:
        want = np.stack([1 - (1 - fine[:, 0]) * (1 - fine[:, 2]), fine[:, 1]], axis=1)
    else:
        want = np.stack([fine[:, 0] + fine[:, 2], fine[:, 1]], axis=1)
    assert np.allclose(got, want, atol=1e-5)


def test_predict_takes_a_map_of_the_groups_and_refuses_any_other(tmp_path, tiny_bert):
    import predict
    import train
    task = grouped_task(tmp_path, tiny_bert, True, GROUPS, "--n_epochs", "1")
    assert call(train.main, task["args"])[0] == 0
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "a.txt").write_text("i feel happy\ni feel sad\n", encoding="utf-8")
    group_map = write_classes(tmp_path / "group_map.json", ["negative", "positive"])
    common = ["-f", str(inputs), "-p", "False", "--save_path", task["save"], "--out_dir", str(tmp_path / "out")]
    assert call(predict.main, ["-d", group_map, *common])[0] == 0
    other = write_classes(tmp_path / "other.json", ["joy", "anger", "sadness"])
    code, _, err = call(predict.main, ["-d", other, *common, "--overwrite", "True"])
    assert code == 2 and "this label map differs from the one the model was trained with" in err


def test_a_plain_model_saved_over_a_grouped_one_has_no_groups(tmp_path, tiny_bert):
    import train
    from checkpoint import load_model, read_label_groups
    task = grouped_task(tmp_path, tiny_bert, True, GROUPS, "--n_epochs", "1")
    assert call(train.main, task["args"])[0] == 0
    plain = task["args"][:task["args"].index("--label_groups")] + ["--tensorboard", "False"]
    assert call(train.main, plain)[0] == 0
    assert read_label_groups(task["save"]) is None and not os.path.exists(os.path.join(task["save"],
                                                                                     "label_groups.json"))
    model, _, _, names, _ = load_model(task["save"], torch.device("cpu"))
    assert names == ["anger", "joy", "sadness"] and model.read_out is None and model.n_classes == 3


def test_an_ensemble_of_seeds_predicts_the_groups(tmp_path, tiny_bert):
    import predict
    import train
    task = grouped_task(tmp_path, tiny_bert, True, GROUPS, "--n_epochs", "1", "--seeds", "2", "--ensemble", "True")
    code, out, err = call(train.main, task["args"])
    assert code == 0, err
    assert "ensemble of 2:" in out
    assert os.path.isfile(os.path.join(task["save"], "label_groups.json"))
    with open(os.path.join(task["save"], "report", "metrics.json")) as f:
        assert "negative" in json.load(f)["per_class"]
    clf = predict.load_classifier(task["save"])
    assert clf.classes == ["negative", "positive"] and clf.predict(["i feel sad"]).probabilities.shape == (1, 2)


def test_onnx_export_reads_the_groups_out_and_hf_export_refuses(tmp_path, tiny_bert):
    pytest.importorskip("onnxruntime")
    import export
    import predict
    import train
    task = grouped_task(tmp_path, tiny_bert, True, GROUPS, "--n_epochs", "1")
    assert call(train.main, task["args"])[0] == 0
    out = str(tmp_path / "exported")
    code, printed, err = call(export.main, ["--save_path", task["save"], "--out", out])
    assert code == 0, err
    assert os.path.isfile(os.path.join(out, "label_groups.json"))
    texts = ["i feel happy great", "i feel sad lonely", "i feel furious"]
    torch_probs = predict.load_classifier(task["save"], precision="fp32").predict(texts).probabilities
    onnx_probs = predict.load_classifier(out).predict(texts).probabilities
    assert onnx_probs.shape == (3, 2) and np.allclose(onnx_probs, torch_probs, atol=1e-4)
    code, _, err = call(export.main, ["--save_path", task["save"], "--out", str(tmp_path / "hf"), "--format", "hf"])
    assert code == 2 and "--format hf: this model reads its classes out as groups" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("groups, multi_label, message", [
    ({"negative": ["anger", "sadness"], "positive": ["happy"]}, True,
     "group 'positive': 'happy' is not a class of the label map -d"),
    ({"negative": ["anger"], "positive": ["joy"]}, True, "class 'sadness' of the label map -d is in no group"),
    ({"negative": ["anger", "sadness"], "positive": ["joy", "sadness"]}, False,
     "class 'sadness' is in groups 'negative' and 'positive'; single-label groups must split the classes"),
    ({"negative": ["anger", "sadness", "anger"], "positive": ["joy"]}, True, "a class is listed twice"),
    ({"all": ["anger", "sadness", "joy"]}, True, "needs at least two groups, found 1"),
    ({"negative": [], "positive": ["joy"]}, True, "group 'negative': expected a non-empty list of class names"),
    (["anger"], True, "expected a JSON object"),
    ({"1": ["anger", "sadness"], "0": ["joy"]}, True, "key '1': a group named like the number 1 must have place "
                                                      "(from 0) in the map 1, not 0"),
    ({" ": ["anger", "sadness"], "positive": ["joy"]}, True, "a group name is empty"),
])
def test_bad_groups_are_one_line_exit_2_nothing_written(tmp_path, tiny_bert, groups, multi_label, message):
    import train
    task = grouped_task(tmp_path, tiny_bert, multi_label, groups)
    code, out, err = call(train.main, task["args"])
    assert code == 2, err
    assert f"--label_groups {task['groups']}" in err and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not os.path.exists(os.path.join(task["save"], "model.safetensors"))


def test_groups_that_are_not_json_or_combine_with_what_they_cannot(tmp_path, tiny_bert):
    import train
    task = grouped_task(tmp_path, tiny_bert, True)
    with open(task["groups"], "w") as f:
        f.write('{"negative": ["anger",\n  "sadness"')
    code, _, err = call(train.main, task["args"])
    assert code == 2 and "line 2, column" in err and "not valid JSON" in err
    with open(task["groups"], "w") as f:
        f.write('{"negative": ["anger", "sadness"], "positive": ["joy"], "negative": ["joy"]}')
    code, _, err = call(train.main, task["args"])
    assert code == 2 and "key 'negative': group name appears twice" in err
    code, _, err = call(train.main, [*task["args"], "--long_text", "windows"])
    assert code == 2 and "--label_groups does not combine with --long_text windows" in err
    code, _, err = call(train.main, [*task["args"], "--label_col", "emotion,sentiment"])
    assert code == 2 and "--label_groups groups the classes of one task" in err


def test_recipes_bench_reads_the_original_emotions_out_as_the_groups():
    recipes = load_bench("recipes")
    paths = {"train_all": "T", "dev_all": "D", "classes_original": "C", "fine_map": "M", "classes": "X"}
    options = recipes.recipe_options("from_original", paths)
    assert options == {"--train_path": "T", "--valid_path": "D", "--label_col": "original", "-d": "C",
                       "--label_groups": "M"}
    with pytest.raises(SystemExit, match="reads the original emotions out as --taxonomy ekman or group"):
        recipes.main(["--taxonomy", "original", "--only", "from_original"])


def test_boost_and_folds_validate_on_the_groups(tmp_path, tiny_bert):
    import train
    task = grouped_task(tmp_path, tiny_bert, True, GROUPS, "--n_epochs", "1", "--bert_finetuning", "False",
                        "--boost", "True", "--cv", "2")
    code, out, err = call(train.main, task["args"])
    assert code == 0, err
    with open(os.path.join(task["save"], "repeats.json")) as f:
        summary = json.load(f)
    assert [m["name"] for m in summary["members"]] == ["fold_0", "fold_1"]
    for member in ("fold_0", "fold_1"):
        with open(os.path.join(task["save"], "members", member, "report", "metrics.json")) as f:
            assert set(json.load(f)["per_class"]) >= {"negative", "positive"}
    with open(os.path.join(task["save"], "classes.json")) as f:
        assert list(json.load(f)) == ["negative", "positive"]


def test_a_checkpoint_older_than_an_option_resumes_only_with_that_option_at_its_default():
    import dataclasses
    from types import SimpleNamespace

    from config import Config, InputError
    from resume import load_resumable
    older = dataclasses.asdict(Config())
    del older["label_groups"]  # written before --label_groups existed
    state, run = {"config": older, "world_size": 1}, SimpleNamespace(world_size=1)
    assert load_resumable("step-5", Config(), run, state) is state
    with pytest.raises(InputError, match="trained with other settings: --label_groups  \\(now groups.json\\)"):
        load_resumable("step-5", Config(label_groups="groups.json"), run, state)


def test_the_column_rule_reads_the_groups_the_model_outputs_not_its_fine_classes(tmp_path):
    """With --label_groups predict.py writes a column per group: a fine class named `label` never becomes a column
    (accepted), a group named `label` would (refused)."""
    import json

    import train
    from config import Config, InputError
    fine = ["anger", "label", "sadness"]
    (tmp_path / "ok.json").write_text(json.dumps({"neg": ["anger", "sadness"], "pos": ["label"]}), encoding="utf-8")
    train.check_outputs(Config(label_groups=str(tmp_path / "ok.json")), fine, None)
    (tmp_path / "bad.json").write_text(json.dumps({"label": ["anger", "sadness"], "pos": ["joy"]}), encoding="utf-8")
    with pytest.raises(InputError, match="'label' would name two of predict.py's columns"):
        train.check_outputs(Config(label_groups=str(tmp_path / "bad.json")), ["anger", "joy", "sadness"], None)
