""".csv, .tsv, .jsonl and .parquet for training, validation and prediction, and --out_format csv|jsonl|parquet:
the same rows give the same data and the same probabilities in every format, and every bad input is one line
that names the file, the row (or line) and the column."""
import csv
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import NAMES, call, make_rows, write_classes

# texts that break naive readers: quotes, the other format's delimiter, a newline inside a cell, non-ASCII
TRICKY = [('she said "no", then left', "anger"), ("tab\there", "joy"), ("two\nlines", "sadness"),
          ("café — naïve 😊", "joy"), ("i feel great", "joy"), ("i hate rage", "anger")]


def write_table(path, rows, columns=("sentences", "emotion")) -> str:
    """rows of (text, label...) in the format of path's extension; a label may be a list (JSON, Parquet)."""
    path = str(path)
    if path.endswith((".csv", ".tsv")):
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t" if path.endswith(".tsv") else ",")
            writer.writerow(columns)
            writer.writerows([[",".join(v) if isinstance(v, list) else v for v in r] for r in rows])
    elif path.endswith(".jsonl"):
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(dict(zip(columns, r)), ensure_ascii=False) + "\n" for r in rows)
    else:
        pq.write_table(pa.table({c: [r[i] for r in rows] for i, c in enumerate(columns)}), path)
    return path


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_every_format_loads_the_same_rows(tmp_path, ext):
    from dataset import load_labelled_file
    path = write_table(tmp_path / f"t{ext}", TRICKY)
    data = load_labelled_file(path, "sentences", "emotion", NAMES, False)
    assert data.texts == [t for t, _ in TRICKY]
    assert data.labels == [NAMES.index(n) for _, n in TRICKY]


@pytest.mark.parametrize("ext", [".jsonl", ".parquet"])
def test_json_and_parquet_take_label_lists_and_ids(tmp_path, ext):
    from dataset import load_labelled_file
    rows = [("a b", ["anger", "joy"]), ("c d", ["sadness"]), ("e f", ["joy", "sadness"])]
    data = load_labelled_file(write_table(tmp_path / f"m{ext}", rows), "sentences", "emotion", NAMES, True)
    assert data.labels == [[0, 1], [2], [1, 2]]
    ids = [("a b", 2), ("c d", 0)]
    data = load_labelled_file(write_table(tmp_path / f"i{ext}", ids), "sentences", "emotion", NAMES, False)
    assert data.labels == [2, 0]


def test_prediction_streams_every_format_in_order(tmp_path):
    from dataset import iter_predict_file
    texts = [t for t, _ in make_rows(23, seed=4)]
    for ext in (".csv", ".tsv", ".jsonl", ".parquet"):
        path = write_table(tmp_path / f"p{ext}", [(t, "") for t in texts] + [("  ", "")])
        skipped = [0]
        chunks = list(iter_predict_file(path, "sentences", 5, skipped))
        assert [len(c[1]) for c in chunks] == [5, 5, 5, 5, 3], ext
        assert sum((c[1] for c in chunks), []) == texts, ext
        assert skipped == [1], ext
    rows = list(iter_predict_file(str(tmp_path / "p.jsonl"), "sentences", 100))[0][0]
    assert rows[:3] == [1, 2, 3]  # JSON lines are counted from line 1, CSV from row 2 (row 1 is the header)
    assert list(iter_predict_file(str(tmp_path / "p.csv"), "sentences", 100))[0][0][:3] == [2, 3, 4]


def read_predictions(path) -> tuple:
    """(header, rows as lists of str) of a predictions file of any --out_format."""
    if path.endswith(".csv"):
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        return rows[0], rows[1:]
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as f:
            objs = [json.loads(line) for line in f]
        return list(objs[0]), [list(o.values()) for o in objs]
    table = pq.read_table(path)
    return table.column_names, [list(r.values()) for r in table.to_pylist()]


@pytest.fixture(scope="module")
def trained_jsonl(tmp_path_factory, tiny_bert):
    """A tiny model trained from a JSON-lines file with a Parquet validation file."""
    import train
    folder = tmp_path_factory.mktemp("formats")
    classes = write_classes(folder / "classes.json")
    train_path = write_table(folder / "train.jsonl", make_rows(60, seed=1))
    valid_path = write_table(folder / "valid.parquet", make_rows(15, seed=2))
    save = str(folder / "model")
    code, out, err = call(train.main, ["-d", classes, "-p", "False", "--train_path", train_path,
                                       "--valid_path", valid_path, "--bert_name", tiny_bert, "--save_path", save,
                                       "--n_epochs", "1", "--batch_size", "16", "--max_length", "32",
                                       "--precision", "fp32"])
    assert code == 0, err
    return folder, classes, save


def test_trained_from_jsonl_and_parquet_predicts_the_same_in_every_format(trained_jsonl, tmp_path):
    import predict
    folder, classes, save = trained_jsonl
    inputs = tmp_path / "in"
    inputs.mkdir()
    for ext in (".csv", ".tsv", ".jsonl", ".parquet"):
        write_table(inputs / f"x{ext}", [(t,) for t, _ in TRICKY], columns=("sentences",))
    results = {}
    for out_format in ("csv", "jsonl", "parquet"):
        out = tmp_path / f"out_{out_format}"
        code, _, err = call(predict.main, ["-f", str(inputs), "-d", classes, "-p", "False", "--save_path", save,
                                           "--out_dir", str(out), "--out_format", out_format])
        assert code == 0, err
        names = sorted(n for n in os.listdir(out) if n.endswith(f".{out_format}"))
        assert names == sorted(f"x.{e}.{out_format}" if e != out_format else f"x.{out_format}"
                               for e in ("csv", "tsv", "jsonl", "parquet")), names
        for name in names:
            header, rows = read_predictions(str(out / name))
            assert header == ["sentences", "label", *NAMES]
            assert [r[0] for r in rows] == [t for t, _ in TRICKY]
            results[(out_format, name)] = np.array([[float(x) for x in r[2:]] for r in rows])
    reference = results[("csv", "x.csv")]
    for key, probs in results.items():
        np.testing.assert_allclose(probs, reference, atol=1e-6, err_msg=str(key))


# ------------------------------------------------------------------------------------------- bad input
# (test id, file name, its content: text, or a dict of Parquet columns, what the one line says)
OK_JSON = '{"sentences": "ok", "emotion": "joy"}\n'
BAD = [
    ("bad_jsonl", "t.jsonl", OK_JSON + '{"sentences": "broken", "emotion": \n', "t.jsonl, line 2: not valid JSON"),
    ("jsonl_array", "t.jsonl", OK_JSON + '["a list", "joy"]\n', "t.jsonl, line 2: a JSON list, expected an object"),
    ("jsonl_number_text", "t.jsonl", OK_JSON + '{"sentences": 12, "emotion": "joy"}\n',
     "t.jsonl, line 2: key 'sentences' holds int 12, expected text"),
    ("jsonl_missing_key", "t.jsonl", '{"text": "ok", "emotion": "joy"}\n',
     "t.jsonl, line 1: no key 'sentences' (keys: text, emotion); name it with --text_col"),
    ("jsonl_wrong_label", "t.jsonl", OK_JSON + '\n{"sentences": "no", "emotion": "fear"}\n',
     "t.jsonl, line 3, column 'emotion': label 'fear' is not a class of the label map"),
    ("parquet_int_text", "t.parquet", {"sentences": [1, 2], "emotion": ["joy", "anger"]},
     "t.parquet, column 'sentences': holds int64, expected text (strings)"),
    ("parquet_float_label", "t.parquet", {"sentences": ["a", "b"], "emotion": [0.5, 1.0]},
     "t.parquet, column 'emotion': holds double, expected text (strings)"),
    ("parquet_control_char", "t.parquet", {"sentences": ["fine", "bad\x07bell"], "emotion": ["joy", "anger"]},
     "t.parquet, row 2, column 'sentences': control character U+0007"),
    ("not_parquet", "t.parquet", "sentences,emotion\nhello,joy\n", "t.parquet: not a readable Parquet file"),
    ("tsv_stray_quote", "t.tsv", 'sentences\temotion\nfine\tjoy\n"unclosed quote\tanger\nmore\tjoy\n',
     "t.tsv, row 3 (line 4): malformed TSV"),
    ("tsv_fields", "t.tsv", "sentences\temotion\nfine\tjoy\textra\n", "t.tsv, row 2: 3 fields where the header has 2"),
]


def plant(path, content) -> None:
    if isinstance(content, dict):
        pq.write_table(pa.table(content), str(path))
    else:
        path.write_text(content, "utf-8")


@pytest.mark.parametrize("name, content, expected", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_training_file_is_one_line_exit_2(tmp_path, tiny_bert, name, content, expected):
    import train
    plant(tmp_path / name, content)
    classes = write_classes(tmp_path / "classes.json")
    before = sorted(os.listdir(tmp_path))
    code, out, err = call(train.main, ["-d", classes, "-p", "False", "--train_path", str(tmp_path / name),
                                       "--bert_name", tiny_bert, "--save_path", str(tmp_path / "model")])
    assert code == 2, (out, err)
    assert expected in err, err
    assert "Traceback" not in err + out
    assert sorted(os.listdir(tmp_path)) == before, "a refused run wrote files"


PREDICT_BAD = [b for b in BAD if b[0] not in ("jsonl_wrong_label", "parquet_float_label", "jsonl_missing_key")]


@pytest.mark.parametrize("name, content, expected", [b[1:] for b in PREDICT_BAD], ids=[b[0] for b in PREDICT_BAD])
def test_bad_prediction_file_is_reported_and_skipped(trained_jsonl, tmp_path, name, content, expected):
    import predict
    _, classes, save = trained_jsonl
    inputs = tmp_path / "in"
    inputs.mkdir()
    plant(inputs / name, content)
    write_table(inputs / "good.jsonl", [("i feel happy",)], columns=("sentences",))
    out = tmp_path / "out"
    code, _, err = call(predict.main, ["-f", str(inputs), "-d", classes, "-p", "False", "--save_path", save,
                                       "--out_dir", str(out)])
    assert code == 1, err  # the bad file failed, the good one was predicted
    assert expected in err, err
    assert "Traceback" not in err
    assert sorted(n for n in os.listdir(out) if n.endswith(".csv")) == ["good.csv"]


def test_unknown_training_extension(tmp_path):
    from config import InputError
    from dataset import load_labelled_file
    (tmp_path / "t.xlsx").write_bytes(b"PK")
    with pytest.raises(InputError, match=r"t.xlsx: unknown file type; use .csv, .tsv, .jsonl or .parquet"):
        load_labelled_file(str(tmp_path / "t.xlsx"), "sentences", "emotion", NAMES, False)


def test_report_reads_labels_from_a_parquet_input(trained_jsonl, tmp_path):
    import predict
    _, classes, save = trained_jsonl
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_table(inputs / "dev.parquet", make_rows(12, seed=5))
    out = tmp_path / "out"
    code, stdout, err = call(predict.main, ["-f", str(inputs), "-d", classes, "-p", "False", "--save_path", save,
                                            "--out_dir", str(out), "--report", "True", "--out_format", "jsonl"])
    assert code == 0, err
    assert "dev.parquet: accuracy" in stdout
    assert os.path.isfile(out / "report_dev" / "metrics.json")
    assert not [n for n in os.listdir(out / "report_dev") if n.endswith((".csv", ".jsonl", ".parquet"))]


@pytest.mark.parametrize("name, line", [("t.tsv", 4), ("t.jsonl", 3)])
def test_a_byte_that_is_not_utf8_is_named_by_line_when_streamed(tmp_path, name, line):
    from config import InputError
    from dataset import iter_predict_file
    good = '{"sentences": "fine"}\n' if name.endswith(".jsonl") else "sentences\nfine\n"
    bad = '{"sentences": "caf\xe9"}\n'.encode("latin-1") if name.endswith(".jsonl") else "caf\xe9\n".encode("latin-1")
    filler = ('{"sentences": "%s"}\n' if name.endswith(".jsonl") else "%s\n") % ("x" * 20000)  # past a read buffer
    (tmp_path / name).write_bytes((good + filler).encode() + bad)
    with pytest.raises(InputError, match=rf"{name}, line {line}: not UTF-8 text, byte 0xe9 \(it looks like Latin-1 "
                                         r"or Windows-1252\); save it as UTF-8"):
        list(iter_predict_file(str(tmp_path / name), "sentences", 100))
