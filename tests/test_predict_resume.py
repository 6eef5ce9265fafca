"""predict.py on a folder: bad files are skipped (exit 1), finished files are not predicted again unless they,
the model or --overwrite say so, big files stream in chunks and keep their row order."""
import csv
import json
import os
import time
import tracemalloc

import numpy as np
import pytest

from conftest import call, make_rows, write_classes, write_csv

HEADER = ["sentences", "label", "anger", "joy", "sadness"]


def train_into(folder, tiny_bert, save, seed):
    import train
    classes = write_classes(folder / "classes.json")
    data = write_csv(folder / f"train{seed}.csv", make_rows(60, seed=seed))
    code, _, err = call(train.main, ["-d", classes, "-p", "False", "--train_path", data, "--bert_name", tiny_bert,
                                     "--save_path", save, "--n_epochs", "1", "--batch_size", "16", "--seed", str(seed),
                                     "--max_length", "32", "--precision", "fp32"])
    assert code == 0, err
    return classes


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert):
    folder = tmp_path_factory.mktemp("resume")
    save = str(folder / "model")
    return {"classes": train_into(folder, tiny_bert, save, 1), "save": save}


@pytest.fixture
def inputs(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_csv(folder / "a.csv", [(t, "x") for t, _ in make_rows(9, seed=4)], header=("sentences", "other"))
    (folder / "b.txt").write_text("i feel happy\n\ni feel sad\n", encoding="utf-8")
    return folder


def predict_args(trained, inputs, out, *extra):
    return ["-f", str(inputs), "-d", trained["classes"], "-p", "False", "--save_path", trained["save"],
            "--out_dir", str(out), "--precision", "fp32", *extra]


def read(path) -> list:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == HEADER
    return rows[1:]


def test_bad_files_are_reported_and_skipped_the_rest_predicted(tmp_path, trained, inputs):
    import predict
    (inputs / "latin.txt").write_bytes("caf\u00e9 time\n".encode("latin-1"))
    write_csv(inputs / "nocol.csv", [("hello",)], header=("text",))
    (inputs / "blank.txt").write_text("\n  \n", encoding="utf-8")
    (inputs / "ctrl.txt").write_text("fine\nbell \x07 here\n", encoding="utf-8")
    (inputs / "dup.csv").write_text("sentences,sentences\nhi,there\n", encoding="utf-8")
    out = tmp_path / "out"
    code, stdout, err = call(predict.main, predict_args(trained, inputs, out))
    assert code == 1
    assert "latin.txt, row 1: not UTF-8 text, byte 0xe9 (it looks like Latin-1 or Windows-1252)" in err
    assert "nocol.csv, row 1: no column 'sentences' (columns: text); name it with --text_col" in err
    assert "blank.txt: no sentences to predict" in err
    assert "ctrl.txt, row 2: control character U+0007 at position 6" in err
    assert "dup.csv, row 1: duplicated column name(s) 'sentences'" in err
    assert "5 file(s) failed: blank.txt, ctrl.txt, dup.csv, latin.txt, nocol.csv" in err
    assert "Traceback" not in err
    assert sorted(os.listdir(out)) == ["a.csv", "b.csv", "predict_state.json"]  # nothing half-written
    assert [r[0] for r in read(out / "b.csv")] == ["i feel happy", "i feel sad"]
    assert "skipped 1 blank row(s)" in err
    rows = read(out / "a.csv")
    assert len(rows) == 9
    for row in rows:
        assert row[1] in HEADER[2:] and row[1] == HEADER[2 + int(np.argmax([float(p) for p in row[2:]]))]
        assert abs(sum(float(p) for p in row[2:]) - 1) < 1e-4


def test_unchanged_files_are_skipped_changed_ones_predicted_again(tmp_path, trained, inputs):
    import predict
    out = tmp_path / "out"
    assert call(predict.main, predict_args(trained, inputs, out))[0] == 0
    before = {n: os.stat(out / n).st_mtime_ns for n in ("a.csv", "b.csv")}

    code, stdout, _ = call(predict.main, predict_args(trained, inputs, out))
    assert code == 0 and stdout.count("up to date") == 2 and "rows ->" not in stdout
    assert {n: os.stat(out / n).st_mtime_ns for n in before} == before

    (inputs / "b.txt").write_text("i feel happy\ni feel sad\ni feel angry\n", encoding="utf-8")
    code, stdout, _ = call(predict.main, predict_args(trained, inputs, out))
    assert code == 0 and "a.csv: up to date" in stdout and "b.txt: 3 rows" in stdout
    assert len(read(out / "b.csv")) == 3

    code, stdout, _ = call(predict.main, predict_args(trained, inputs, out, "--overwrite", "True"))
    assert code == 0 and "a.csv: 9 rows" in stdout and "b.txt: 3 rows" in stdout

    os.remove(out / "a.csv")  # an output deleted by hand is made again
    code, stdout, _ = call(predict.main, predict_args(trained, inputs, out))
    assert "a.csv: 9 rows" in stdout and "b.txt: up to date" in stdout

    with open(out / "predict_state.json", "w") as f:
        f.write("{not json")  # a damaged state file only costs a re-run
    code, stdout, _ = call(predict.main, predict_args(trained, inputs, out))
    assert code == 0 and "a.csv: 9 rows" in stdout
    assert json.load(open(out / "predict_state.json"))["a.csv"]["output"] == "a.csv"


def test_a_different_model_predicts_everything_again(tmp_path, tiny_bert, inputs):
    import predict
    save = str(tmp_path / "model")
    model = {"classes": train_into(tmp_path, tiny_bert, save, 1), "save": save}
    out = tmp_path / "out"
    assert call(predict.main, predict_args(model, inputs, out))[0] == 0
    train_into(tmp_path, tiny_bert, save, 2)  # retrained into the same folder
    code, stdout, _ = call(predict.main, predict_args(model, inputs, out))
    assert code == 0 and "up to date" not in stdout and "a.csv: 9 rows" in stdout
    code, stdout, _ = call(predict.main, predict_args(model, inputs, out, "--max_length", "16"))
    assert code == 0 and "up to date" not in stdout  # other settings, other predictions


def test_rows_keep_input_order_across_chunks(tmp_path, trained, monkeypatch):
    """Chunks are sorted by length inside; each output row must still be its own input's prediction."""
    import torch

    import predict
    from checkpoint import load_model
    monkeypatch.setattr(predict, "CHUNK_ROWS", 7)
    texts = [t for t, _ in make_rows(40, seed=9)]
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "s.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    code, _, err = call(predict.main, predict_args(trained, folder, tmp_path / "out", "--batch_size", "4"))
    assert code == 0, err
    rows = read(tmp_path / "out" / "s.csv")
    assert [r[0] for r in rows] == texts
    model, tokenizer, _, _, extra = load_model(trained["save"], torch.device("cpu"))
    for text, row in zip(texts[:8], rows):
        ids = torch.tensor([tokenizer(text, truncation=True, max_length=32)["input_ids"]])
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids))
            alone = torch.softmax(logits / extra["temperature"], -1)[0]  # predict.py applies the calibration
        assert np.allclose([float(p) for p in row[2:]], alone.numpy(), atol=1e-4)


def test_big_files_stream_in_flat_memory(tmp_path, monkeypatch):
    """Python memory at its peak does not grow with the file: 12 times the rows, about the same peak.
    The model is replaced by constant probabilities: what is measured is reading, chunking and writing."""
    import torch

    import predict
    from config import Config
    from runtime import Run
    monkeypatch.setattr(predict, "CHUNK_ROWS", 1000)
    monkeypatch.setattr(predict, "predict_probabilities",
                        lambda model, tokenizer, texts, *a, **k: np.full((len(texts), 3), 1 / 3, dtype=np.float32))
    peaks = {}
    for n in (5_000, 60_000):
        path = tmp_path / f"big{n}.txt"
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(f"sentence {i}: i feel happy, then sad, then angry again\n" for i in range(n))
        tracemalloc.start()
        started = time.perf_counter()
        stats = predict.predict_file(str(path), str(tmp_path / f"big{n}.csv"), None, None, Config(),
                                     ["anger", "joy", "sadness"], Run(torch.device("cpu")), {})
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert stats["rows"] == n, time.perf_counter() - started
    assert peaks[60_000] < 1.5 * peaks[5_000], peaks
    with open(tmp_path / "big60000.csv", newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        next(rows)
        assert all(row[0].startswith(f"sentence {i}:") for i, row in enumerate(rows))


@pytest.mark.parametrize("state", ["[]", '{"a.csv": "done"}', "[" * 100000])
def test_a_state_file_of_another_shape_means_predict_everything(tmp_path, trained, inputs, state):
    import predict
    out = tmp_path / "out"
    out.mkdir()
    (out / "predict_state.json").write_text(state, encoding="utf-8")
    code, _, err = call(predict.main, predict_args(trained, inputs, out))
    assert code == 0 and "Traceback" not in err and os.path.exists(out / "b.csv"), err
    with open(out / "predict_state.json", encoding="utf-8") as f:
        assert set(json.load(f)) == {"a.csv", "b.txt"}


def test_a_full_disk_when_noting_a_file_done_is_one_line_exit_3(tmp_path, trained, inputs, monkeypatch):
    import errno

    import predict

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", path)
    monkeypatch.setattr(predict, "write_json", full)
    code, _, err = call(predict.main, predict_args(trained, inputs, tmp_path / "out"))
    assert code == 3 and err.count("\n") == 1 and "No space left on device" in err, err
    assert "predict_state.json: cannot write" in err and "a rerun predicts it again" in err
    written = [n for n in os.listdir(tmp_path / "out") if not n.startswith(".")]
    assert len(written) == 1 and written[0].endswith(".csv")  # the first file, whole; nothing half-written


def test_two_inputs_that_would_share_a_predictions_file_are_refused(tmp_path):
    from config import InputError
    from predict import output_names
    assert output_names(["a.csv", "a.txt"]) == {"a.csv": "a.csv", "a.txt": "a.txt.csv"}
    assert output_names(["A.csv", "a.csv", "Notes.txt", "notes.csv"]) == {  # names differing in case are two files
        "A.csv": "A.csv", "a.csv": "a.csv", "Notes.txt": "Notes.csv", "notes.csv": "notes.csv"}
    with pytest.raises(InputError, match=r"a.txt and a.txt.csv: both would be predicted into a.txt.csv"):
        output_names(["a.csv", "a.txt", "a.txt.csv"])


def test_a_model_from_before_the_column_rule_still_predicts_to_csv_with_a_warning(capsys):
    """train.py now refuses a class named like another column; a model trained before still writes its CSV (two
    columns of one name, in order), and JSON lines and Parquet, which would drop one, are refused."""
    import torch

    from config import Config, InputError
    from predict import check_columns
    from runtime import Run
    run = Run(torch.device("cpu"))
    check_columns(Config(out_format="csv"), ["anger", "label"], run)
    assert "warning: 'label' would name two of predict.py's columns" in capsys.readouterr().err
    with pytest.raises(InputError, match="--out_format jsonl: 'label' would name two"):
        check_columns(Config(out_format="jsonl"), ["anger", "label"], run)
    check_columns(Config(out_format="parquet"), ["anger", "joy"], run)  # no clash: nothing said
    assert capsys.readouterr().err == ""
