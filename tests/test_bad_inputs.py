"""Every bad input of issues 2 and 6: one clear line naming the file (row, column or key), exit code 2,
no traceback, and nothing written anywhere."""
import hashlib
import json
import os

import pytest

from conftest import call, make_rows, run_script, train_tiny, write_classes, write_csv

GOOD_ROWS = "".join(f"{t},{n}\n" for t, n in make_rows(30))


def parquet(path, columns: list, first_labels: list = ()) -> None:
    """30 good rows (after `first_labels`' rows) as Parquet, with the columns named `columns` (texts, then labels)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = make_rows(30)
    labels = [*first_labels, *([name] for _, name in rows)][:30] if first_labels else [name for _, name in rows]
    texts = pa.array([t for t, _ in rows])
    pq.write_table(pa.Table.from_arrays([texts] * (len(columns) - 1) + [pa.array(labels)], names=columns), path)


def csv_text(*rows, header="sentences,emotion"):
    """A train CSV: `rows` first (so row 2 is the first of them), then 30 good rows."""
    return header + "\n" + "".join(r + "\n" for r in rows) + GOOD_ROWS


# (id, entry point, files to write in the task folder, extra flags, expected message parts)
# Files and flags may name {dir}, the task folder. Later flags override the base flags.
TRAIN_CASES = [
    ("label map missing", {}, ["-d", "{dir}/nope.json"], ["nope.json: label map not found"]),
    ("label map is a folder", {"cls/x": ""}, ["-d", "{dir}/cls"], ["cls: label map not found (it is a folder)"]),
    ("label map not JSON", {"c.json": '{"anger": 0, "joy": 1,'}, ["-d", "{dir}/c.json"],
     ["c.json, line 1, column 23: not valid JSON"]),
    ("label map duplicate name", {"c.json": '{"anger": 0, "joy": 1, "anger": 2}'}, ["-d", "{dir}/c.json"],
     ["c.json, key 'anger': class name appears twice"]),
    ("label map string id", {"c.json": '{"anger": "0", "joy": 1, "sadness": 2}'}, ["-d", "{dir}/c.json"],
     ["c.json, key 'anger': id \"0\" is not an integer"]),
    ("label map float id", {"c.json": '{"anger": 0, "joy": 1.5, "sadness": 2}'}, ["-d", "{dir}/c.json"],
     ["key 'joy': id 1.5 is not an integer"]),
    ("label map id gap", {"c.json": '{"anger": 0, "joy": 2, "sadness": 3}'}, ["-d", "{dir}/c.json"],
     ["c.json: ids must run from 0 to 2 without gaps; missing 1"]),
    ("label map id twice", {"c.json": '{"anger": 0, "joy": 0, "sadness": 1}'}, ["-d", "{dir}/c.json"],
     ["key 'joy': id 0 is already used by 'anger'"]),
    ("label map is an array", {"c.json": '["anger", "joy"]'}, ["-d", "{dir}/c.json"],
     ["c.json: expected a JSON object"]),
    ("label map one class", {"c.json": '{"anger": 0}'}, ["-d", "{dir}/c.json"],
     ["c.json: needs at least two classes, found 1"]),
    ("label map Latin-1", {"c.json": '{"caf\u00e9": 0, "joy": 1}'.encode("latin-1")}, ["-d", "{dir}/c.json"],
     ["c.json, line 1: not UTF-8 text, byte 0xe9", "Latin-1"]),
    ("train csv missing", {}, ["--train_path", "{dir}/nope.csv"], ["nope.csv: CSV file not found"]),
    ("train csv is a folder", {"t.csv/x": ""}, ["--train_path", "{dir}/t.csv"],
     ["t.csv: CSV file is a folder, expected a file"]),
    ("empty csv", {"t.csv": ""}, ["--train_path", "{dir}/t.csv"], ["t.csv: the file is empty"]),
    ("no text column", {"t.csv": "text,emotion\nhello,joy\n"}, ["--train_path", "{dir}/t.csv"],
     ["t.csv, row 1: no column 'sentences' (columns: text, emotion); name it with --text_col"]),
    ("no label column", {"t.csv": "sentences,label\nhello,joy\n"}, ["--train_path", "{dir}/t.csv"],
     ["t.csv, row 1: no column 'emotion' (columns: sentences, label); name it with --label_col"]),
    ("duplicated header", {"t.csv": csv_text(header="sentences,emotion,sentences")},
     ["--train_path", "{dir}/t.csv"], ["t.csv, row 1: duplicated column name(s) 'sentences'"]),
    ("label not in map", {"t.csv": csv_text("i feel fine,joy", "i am afraid,fear")}, ["--train_path", "{dir}/t.csv"],
     ["t.csv, row 3, column 'emotion': label 'fear' is not a class of the label map"]),
    ("label with wrong case", {"t.csv": csv_text("i feel fine,Joy")}, ["--train_path", "{dir}/t.csv"],
     ["row 2, column 'emotion': label 'Joy' is not a class of the label map (did you mean 'joy'?)"]),
    ("float label", {"t.csv": csv_text("i feel fine,1.0")}, ["--train_path", "{dir}/t.csv"],
     ["t.csv, row 2, column 'emotion': label 1.0 is a float"]),
    ("negative label", {"t.csv": csv_text("i feel fine,-1")}, ["--train_path", "{dir}/t.csv"],
     ["t.csv, row 2, column 'emotion': negative label -1"]),
    ("label id outside map", {"t.csv": csv_text("i feel fine,3")}, ["--train_path", "{dir}/t.csv"],
     ["row 2, column 'emotion': label id 3 is not in the label map (ids 0 to 2)"]),
    ("empty label", {"t.csv": csv_text("i feel fine,")}, ["--train_path", "{dir}/t.csv"],
     ["row 2, column 'emotion': empty label"]),
    ("only blank text", {"t.csv": "sentences,emotion\n,joy\n   ,anger\n"}, ["--train_path", "{dir}/t.csv"],
     ["t.csv: no rows with text in column 'sentences'"]),
    ("control character", {"t.csv": csv_text("i feel \x07 fine,joy")}, ["--train_path", "{dir}/t.csv"],
     ["t.csv, row 2, column 'sentences': control character U+0007 at position 8"]),
    ("Latin-1 csv", {"t.csv": csv_text("caf\u00e9 time,joy").encode("latin-1")}, ["--train_path", "{dir}/t.csv"],
     ["t.csv, line 2: not UTF-8 text, byte 0xe9", "(it looks like Latin-1 or Windows-1252)"]),
    ("UTF-16 csv", {"t.csv": csv_text().encode("utf-16")}, ["--train_path", "{dir}/t.csv"],
     ["t.csv: the file is UTF-16; save it as UTF-8"]),
    ("single class", {"t.csv": "sentences,emotion\n" + "i feel happy,joy\n" * 10}, ["--train_path", "{dir}/t.csv"],
     ["t.csv: every row has the class 'joy'; training needs at least two classes"]),
    ("more classes than rows", {"t.csv": "sentences,emotion\ni am happy,joy\ni am sad,sadness\n"},
     ["--train_path", "{dir}/t.csv"], ["t.csv: 3 classes but only 2 row(s)"]),
    ("wrong number of fields", {"t.csv": csv_text("i feel fine,joy,extra")}, ["--train_path", "{dir}/t.csv"],
     ["t.csv, row 2: 3 fields where the header has 2"]),
    ("broken quoting", {"t.csv": csv_text('"i feel "fine,joy')}, ["--train_path", "{dir}/t.csv"],
     ["t.csv, row 2 (line 2): malformed CSV"]),
    ("too many problems", {"t.csv": csv_text(*["i feel fine,fear"] * 30)}, ["--train_path", "{dir}/t.csv"],
     ["21 problems in", "t.csv: stopped after 20 problems"]),
    ("validation csv missing", {}, ["--valid_path", "{dir}/v.csv"], ["v.csv: CSV file not found"]),
    ("validation csv bad label", {"v.csv": csv_text("i feel fine,fear")}, ["--valid_path", "{dir}/v.csv"],
     ["v.csv, row 2, column 'emotion': label 'fear' is not a class"]),
    ("train and validation both bad", {"t.csv": csv_text("i feel fine,1.5"), "v.csv": csv_text("x,fear")},
     ["--train_path", "{dir}/t.csv", "--valid_path", "{dir}/v.csv"],
     ["t.csv, row 2, column 'emotion': label 1.5 is a float", "v.csv, row 2, column 'emotion': label 'fear'"]),
    ("max_length above the model", {}, ["--max_length", "100"],
     ["--max_length 100:", "supports at most 64 tokens"]),
    ("batch size zero", {}, ["--batch_size", "0"], ["--batch_size must be at least 1"]),
    ("valid_frac above 1", {}, ["--valid_frac", "1.5"], ["--valid_frac 1.5: must be between 0 and 1"]),
    ("boolean flag not a boolean", {}, ["-p", "maybe"], ["argument -p/--parallel: expected True or False, got 'maybe'"]),
    ("encoder folder missing", {}, ["--bert_name", "./no_such_encoder"], ["--bert_name ./no_such_encoder: no such folder"]),
    ("label map key with a space", {"c.json": '{"anger": 0, "joy ": 1, "sadness": 2}'}, ["-d", "{dir}/c.json"],
     ["column 'emotion': label 'joy' is not a class of the label map (the label map has 'joy ', with spaces"]),
    ("multi-label class with a comma", {"c.json": '{"anger": 0, "joy,calm": 1, "sadness": 2}'},
     ["-d", "{dir}/c.json", "--multi_label", "True"], ["-d: class 'joy,calm' has a comma in its name"]),
    ("empty train_path", {}, ["--train_path", ""], ["--train_path is empty: name the training file"]),
    ("class named label", {"c.json": '{"anger": 0, "label": 1, "sadness": 2}'}, ["-d", "{dir}/c.json"],
     ["'label' would name two of predict.py's columns (sentences, label, anger, label, sadness: the text"]),
    ("class named like the text column", {"c.json": '{"anger": 0, "sentences": 1, "sadness": 2}'},
     ["-d", "{dir}/c.json"], ["'sentences' would name two of predict.py's columns"]),
    ("group named label", {"g.json": '{"label": ["anger", "sadness"], "good": ["joy"]}'},
     ["--label_groups", "{dir}/g.json"], ["'label' would name two of predict.py's columns (sentences, label, label, good"]),
    ("multi-label group with a comma", {"g.json": '{"bad, sad": ["anger", "sadness"], "good": ["joy"]}'},
     ["--label_groups", "{dir}/g.json", "--multi_label", "True"], ["g.json: a group name has a comma"]),
    ("seed out of range", {}, ["--seed", "-1"], ["--seed must be in [0, 4294967295]"]),
    ("seeds past 2^32", {}, ["--seed", "4294967295", "--seeds", "2"], ["--seed must be in [0, 4294967294]"]),
    ("negative num_workers", {}, ["--num_workers", "-1"], ["--num_workers must be 0 or more"]),
    ("negative weight decay", {}, ["--weight_decay", "-5"], ["--weight_decay must be 0 or more"]),
    ("NaN weight decay", {}, ["--weight_decay", "nan"], ["--weight_decay must be 0 or more"]),
    ("negative max_grad_norm", {}, ["--max_grad_norm", "-1"], ["--max_grad_norm must be 0 (no clipping) or more"]),
    ("text column is the label column", {}, ["--text_col", "emotion"],
     ["--text_col emotion: a text column may not be a label column (--label_col emotion)"]),
    ("task weights for one task", {}, ["--task_weights", "2"], ["--task_weights weighs the losses of several tasks"]),
    ("parquet with a repeated column", {"t.parquet": lambda path: parquet(path, ["sentences", "sentences", "emotion"])},
     ["--train_path", "{dir}/t.parquet"], ["t.parquet: duplicated column name(s) 'sentences'"]),
    ("parquet label list with a null", {"t.parquet": lambda path: parquet(path, ["sentences", "emotion"], [["joy", None]])},
     ["--train_path", "{dir}/t.parquet", "--multi_label", "True"],
     ["t.parquet, row 1: column 'emotion' holds list [\"joy\", null]"]),
    ("jsonl with a repeated key", {"t.jsonl": '{"sentences": "i feel fine", "emotion": "joy", "emotion": "anger"}\n'},
     ["--train_path", "{dir}/t.jsonl"], ["t.jsonl, line 1: duplicated key(s) 'emotion'"]),
    ("jsonl with a lone surrogate", {"t.jsonl": '{"sentences": "i feel \\ud800 fine", "emotion": "joy"}\n'},
     ["--train_path", "{dir}/t.jsonl"], ["t.jsonl, line 1, column 'sentences': lone surrogate U+D800 at position 8"]),
    ("jsonl nested too deep", {"t.jsonl": "[" * 100000 + "]" * 100000 + "\n"}, ["--train_path", "{dir}/t.jsonl"],
     ["t.jsonl, line 1: not valid JSON (nested too deeply)"]),
]

PREDICT_CASES = [
    ("save_path without a model", {"empty/x.txt": "hi"}, ["--save_path", "{dir}/empty"],
     ["empty: no trained model here (manifest.json is missing); run train.py first"]),
    ("save_path missing", {}, ["--save_path", "{dir}/nowhere"],
     ["nowhere: no trained model here (the folder does not exist)"]),
    ("label map differs from the trained one", {"c.json": '{"joy": 0, "anger": 1, "sadness": 2}'},
     ["-d", "{dir}/c.json"], ["c.json: this label map differs from the one the model was trained with"]),
    ("predict label map missing", {}, ["-d", "{dir}/nope.json"], ["nope.json: label map not found"]),
    ("input folder missing", {}, ["-f", "{dir}/nowhere"], ["nowhere: input folder not found"]),
    ("input folder without inputs", {"in/notes.md": "x"}, ["-f", "{dir}/in"], ["in: no .csv, .tsv, .jsonl, .parquet or .txt files to predict"]),
    ("predict max_length above the model", {}, ["--max_length", "1000"],
     ["--max_length 1000: this model supports at most 64 tokens"]),
    ("predict max_length below 2", {}, ["--max_length", "-5"], ["--max_length must be at least 2"]),
    ("predict negative num_workers", {}, ["--num_workers", "-1"], ["--num_workers must be 0 or more"]),
    ("out_dir is the input folder", {"in/a.csv": "sentences\ni feel fine\n"}, ["-f", "{dir}/in", "--out_dir", "{dir}/in"],
     ["is the input folder (-f", "the predictions would replace the inputs"]),
    ("out_dir empty", {}, ["--out_dir", ""], ["--out_dir is empty"]),
    ("out_dir is a file", {"taken": "x"}, ["--out_dir", "{dir}/taken"], ["--out_dir", "taken: cannot create the folder"]),
]


def snapshot(*folders) -> dict:
    """Every file under the folders with its size, mtime and SHA-256: 'nothing written' is an equality."""
    seen = {}
    for folder in folders:
        for root, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    seen[path] = (os.stat(path).st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
    return seen


def plant(folder, files: dict) -> None:
    for name, content in files.items():
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if callable(content):  # a file only a library writes (Parquet)
            content(path)
            continue
        with open(path, "wb") as f:
            f.write(content if isinstance(content, bytes) else content.encode("utf-8"))


def fill(argv: list, folder) -> list:
    return [a.replace("{dir}", str(folder)) for a in argv]


def assert_refused(code, out, err, expected, before, after):
    assert code == 2, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    for part in expected:
        assert part in err, f"{part!r} not in {err!r}"
    assert after == before, "a refused run wrote files"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert):
    """A model trained for one epoch on the tiny task, and the classes.json and inputs it was trained with."""
    folder = tmp_path_factory.mktemp("trained")
    (folder / "inputs").mkdir()
    write_csv(folder / "inputs" / "a.csv", [(t,) for t, _ in make_rows(5, seed=3)], header=("sentences",))
    save, classes, _ = train_tiny(folder, tiny_bert, 60, 1, "--batch_size", "16", "--precision", "fp32")
    return {"classes": classes, "save": save, "inputs": str(folder / "inputs")}


@pytest.mark.parametrize("files, flags, expected", [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_train_refuses(tiny_task, files, flags, expected):
    import train
    folder = tiny_task["dir"]
    plant(folder, files)
    before = snapshot(folder)
    code, out, err = call(train.main, tiny_task["args"] + ["--precision", "fp32"] + fill(flags, folder))
    assert_refused(code, out, err, expected, before, snapshot(folder))
    assert not os.path.exists(tiny_task["save"])


@pytest.mark.parametrize("files, flags, expected", [c[1:] for c in PREDICT_CASES],
                         ids=[c[0] for c in PREDICT_CASES])
def test_predict_refuses(tmp_path, trained, files, flags, expected):
    import predict
    plant(tmp_path, files)
    before = snapshot(tmp_path, trained["save"])
    argv = ["-f", trained["inputs"], "-d", trained["classes"], "-p", "False", "--save_path", trained["save"],
            "--out_dir", str(tmp_path / "preds"), "--precision", "fp32"]
    code, out, err = call(predict.main, argv + fill(flags, tmp_path))
    assert_refused(code, out, err, expected, before, snapshot(tmp_path, trained["save"]))
    assert not os.path.exists(tmp_path / "preds")


def test_table_is_large_enough():
    names = [c[0] for c in TRAIN_CASES + PREDICT_CASES]
    assert len(set(names)) == len(names) >= 25


# -------------------------------------------------------------------------- what a user sees, in a subprocess
@pytest.mark.parametrize("script, flags, expected", [
    ("train.py", ["--train_path", "{dir}/t.csv"], "t.csv, row 3, column 'emotion': label 'fear' is not a class"),
    ("train.py", ["--train_path", "{dir}/latin.csv"], "latin.csv, line 2: not UTF-8 text"),
    ("predict.py", ["--save_path", "{dir}/nowhere"], "nowhere: no trained model here"),
], ids=["unknown label", "Latin-1 file", "no model"])
def test_no_traceback_reaches_the_user(tiny_task, script, flags, expected):
    folder = tiny_task["dir"]
    plant(folder, {"t.csv": csv_text("i feel fine,joy", "i am afraid,fear"),
                   "latin.csv": csv_text("caf\u00e9,joy").encode("latin-1")})
    base = tiny_task["args"] if script == "train.py" else ["-f", tiny_task["inputs"], "-d", tiny_task["classes"],
                                                           "-p", "False", "--out_dir", str(folder / "preds")]
    before = snapshot(folder)
    result = run_script(script, base + fill(flags, folder), cwd=str(folder))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {lines[0][7:]}"] and expected in lines[0], result.stderr
    assert snapshot(folder) == before


# ------------------------------------------------------------------------- accepted, with a warning or silently
def load(folder, content, **kw):
    from dataset import load_labelled_file
    plant(folder, {"t.csv": content})
    return load_labelled_file(str(folder / "t.csv"), "sentences", "emotion", ["anger", "joy", "sadness"],
                             kw.get("multi_label", False))


def test_utf8_bom_quoted_newlines_commas_and_format_characters_are_accepted(tmp_path):
    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467"  # emoji joined by U+200D, a format (Cf) character
    text = 'sentences,emotion\n"one, two\nthree",joy\n"he said ""hi""",anger\n' + f"{family} tab\there,1\n"
    data = load(tmp_path, b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert data.texts == ["one, two\nthree", 'he said "hi"', f"{family} tab\there"]
    assert data.labels == [1, 0, 1] and data.rows == [2, 3, 4]


def test_blank_sentences_are_dropped_with_a_count(tmp_path, capsys):
    data = load(tmp_path, "sentences,emotion\nhello,joy\n,anger\n   ,joy\nbye,sadness\n")
    assert data.texts == ["hello", "bye"]
    assert "t.csv: dropped 2 row(s) with an empty or blank 'sentences'" in capsys.readouterr().err


def test_split_keeps_single_row_classes_in_training_and_names_them(capsys):
    from dataset import stratified_split
    names = ["anger", "joy", "sadness", "fear"]
    labels = [0] * 10 + [1] * 10 + [2]  # sadness has one row, fear none
    train_idx, valid_idx = stratified_split(labels, 0.2, 0, names, False)
    assert 20 in train_idx and 20 not in valid_idx
    assert sorted(train_idx + valid_idx) == list(range(21))
    assert {labels[i] for i in valid_idx} == {0, 1}
    err = capsys.readouterr().err
    assert "class(es) sadness have a single row: kept in training, absent from validation" in err
    assert "class(es) fear have no rows" in err


def test_split_that_leaves_nothing_to_validate_is_refused():
    from config import InputError
    from dataset import stratified_split
    with pytest.raises(InputError, match="leaves no validation rows out of 2"):
        stratified_split([0, 1], 0.5, 0, ["a", "b"], False)


def test_validation_file_without_a_class_is_named(tmp_path, capsys):
    import train
    from config import Config
    write_classes(tmp_path / "c.json")
    write_csv(tmp_path / "t.csv", make_rows(30))
    write_csv(tmp_path / "v.csv", [r for r in make_rows(30) if r[1] != "sadness"])
    cfg = Config(dict_path=str(tmp_path / "c.json"), train_path=str(tmp_path / "t.csv"),
                 valid_path=str(tmp_path / "v.csv"))
    names, train_data, valid_data = train.load_data(cfg)
    assert len(train_data.texts) == 30 and len(valid_data.texts) == 20
    assert "v.csv: no row has the class(es) sadness" in capsys.readouterr().err


def test_label_map_whose_number_names_disagree_with_ids(tmp_path):
    from config import InputError
    from dataset import load_label_map
    plant(tmp_path, {"c.json": json.dumps({"1": 0, "0": 1})})
    with pytest.raises(InputError, match="a class named like the number 1 must have id 1"):
        load_label_map(str(tmp_path / "c.json"))
