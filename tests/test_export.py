"""export.py: the whole classifier as one ONNX graph (fp32, and int8 with --quantize), checked against PyTorch
before it is written under its final name."""
import json
import os

import numpy as np
import pytest

from conftest import NAMES, call, make_rows, train_tiny, write_csv


@pytest.fixture(scope="module")
def trained(tiny_bert, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    save, classes, _ = train_tiny(folder, tiny_bert, 90, 2)
    check = write_csv(folder / "check.csv", make_rows(30, seed=9))
    return {"dir": folder, "save": save, "check": check}


def test_onnx_export_fp32_and_int8_agree_with_pytorch_and_hold_everything_needed(trained, capsys):
    import onnxruntime

    import export
    import predict
    out = str(trained["dir"] / "exported")
    code, stdout, err = call(export.main, ["--save_path", trained["save"], "--out", out, "--quantize", "int8",
                                           "--check", trained["check"]])
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["calibration.json", "classes.json", "export.json", "model.int8.onnx",
                                       "model.onnx", "tokenizer", "train_config.json"]
    with open(os.path.join(out, "export.json"), encoding="utf-8") as f:
        report = json.load(f)
    assert report["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]  # BERT reads segment ids
    assert report["graphs"]["model.onnx"]["max_abs_difference"] < 1e-4
    assert "pytorch fp32: accuracy" in stdout and "onnx int8: accuracy" in stdout
    # the graph, run by onnxruntime on new sentences of other lengths and batch sizes, gives predict's numbers
    texts = [t for t, _ in make_rows(5, seed=11)]
    clf = predict.load_classifier(trained["save"], device="cpu", precision="fp32")
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(out, "tokenizer"))
    got = export.onnx_probabilities(os.path.join(out, "model.onnx"), tokenizer, texts, None, clf.cfg, clf.extra,
                                    report["inputs"], len(NAMES))
    np.testing.assert_allclose(got, clf.predict(texts).probabilities, atol=1e-5)
    session = onnxruntime.InferenceSession(os.path.join(out, "model.int8.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == report["inputs"]


def test_an_export_that_differs_from_pytorch_is_not_written(trained, monkeypatch):
    import export
    out = str(trained["dir"] / "bad_export")
    real = export.onnx_probabilities
    monkeypatch.setattr(export, "onnx_probabilities", lambda *a: real(*a) + 1e-3)  # as a broken graph would
    code, _, err = call(export.main, ["--save_path", trained["save"], "--out", out])
    assert code == 3 and "differs from PyTorch by 1.00e-03" in err and not os.path.exists(out), err
    assert not [n for n in os.listdir(trained["dir"]) if n.startswith(".bad_export")]  # staging removed


def test_export_refuses_to_replace_a_folder_that_is_not_an_export(trained):
    import export
    out = trained["dir"] / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    code, _, err = call(export.main, ["--save_path", trained["save"], "--out", str(out)])
    assert code == 2 and "is not an earlier export" in err and (out / "notes.txt").exists()


@pytest.mark.parametrize("windows", [False, True])
def test_a_pair_model_exports_with_both_texts(tiny_bert, tmp_path, windows):
    """With --check, and for windows also without: the built-in parity texts must fit a window's second text."""
    import export
    from test_pairs import pair_rows
    from conftest import write_classes
    import train
    classes = write_classes(tmp_path / "yesno.json", ["no", "yes"])
    data = write_csv(tmp_path / "pairs.csv", pair_rows(60), header=("sentence", "emotion", "answer"))
    save = str(tmp_path / "model")
    shape = ["--long_text", "windows", "--stride", "8"] if windows else []
    code, _, err = call(train.main, ["-d", classes, "--train_path", data, "--bert_name", tiny_bert, "--save_path",
                                     save, "--n_epochs", "1", "--max_length", "32", "--text_col", "sentence",
                                     "--text_col2", "emotion", "--label_col", "answer", *shape])
    assert code == 0, err
    checks = [["--check", data], []] if windows else [["--check", data]]
    for i, check in enumerate(checks):
        code, out, err = call(export.main, ["--save_path", save, "--out", str(tmp_path / f"exp{i}"), *check])
        assert code == 0 and "model.onnx (fp32)" in out, err


def test_predict_py_runs_an_export_with_onnxruntime_and_writes_the_same_csvs(trained, tmp_path):
    import export
    import predict
    from conftest import write_classes
    out = str(tmp_path / "exported")
    code, _, err = call(export.main, ["--save_path", trained["save"], "--out", out])
    assert code == 0, err
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_csv(inputs / "a.csv", make_rows(25, seed=12))  # labelled: --report runs too
    (inputs / "b.txt").write_text("i feel happy\ni miss you\n", encoding="utf-8")
    classes = write_classes(tmp_path / "classes.json")
    results = {}
    for name, folder in (("torch", trained["save"]), ("onnx", out)):
        code, stdout, err = call(predict.main, ["-f", str(inputs), "-d", classes, "--save_path", folder, "--out_dir",
                                                str(tmp_path / name), "--report", "True", "--precision",
                                                "fp32" if name == "torch" else "bf16"])
        assert code == 0, err
        assert "precision fp32" in stdout  # what ran, also where --precision asked for more
        results[name] = {f: open(tmp_path / name / f, encoding="utf-8").read().splitlines() for f in ("a.csv", "b.csv")}
        assert "a.csv: accuracy" in stdout and os.path.isdir(tmp_path / name / "report_a")
    for f in ("a.csv", "b.csv"):
        torch_rows, onnx_rows = results["torch"][f], results["onnx"][f]
        assert torch_rows[0] == onnx_rows[0] and len(torch_rows) == len(onnx_rows)
        for t, o in zip(torch_rows[1:], onnx_rows[1:]):
            t, o = t.rsplit(",", 4), o.rsplit(",", 4)
            assert t[:2] == o[:2]  # text and label
            assert max(abs(float(x) - float(y)) for x, y in zip(t[2:], o[2:])) <= 2e-6
    clf = predict.load_classifier(out)  # the Python API reads an export too
    assert clf.predict(["i feel happy"]).probabilities.shape == (1, 3)


def test_hf_export_loads_in_transformers_and_its_pipeline_gives_our_calibrated_probabilities(tiny_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification, pipeline

    import export
    import predict
    save, _, _ = train_tiny(tmp_path, tiny_bert, 90, 2, "--pooling", "pooler")
    out = str(tmp_path / "hf")
    code, stdout, err = call(export.main, ["--save_path", save, "--format", "hf", "--out", out])
    assert code == 0 and "Hugging Face pipeline: max |probability difference|" in stdout, err
    hf = AutoModelForSequenceClassification.from_pretrained(out)
    assert hf.config.id2label == dict(enumerate(NAMES)) and hf.config.label2id == {n: i for i, n in enumerate(NAMES)}
    texts = [t for t, _ in make_rows(6, seed=13)]
    scores = pipeline("text-classification", model=out, top_k=None, device="cpu")(texts)
    theirs = np.array([[next(d["score"] for d in row if d["label"] == n) for n in NAMES] for row in scores])
    clf = predict.load_classifier(save, device="cpu", precision="fp32")
    assert clf.extra["temperature"] != 1.0  # the folded temperature is really tested
    np.testing.assert_allclose(theirs, clf.predict(texts).probabilities, atol=1e-5)
    code, _, err = call(predict.main, ["-f", str(tmp_path), "--save_path", out])
    assert code == 2 and err.startswith(f"error: {out}: a Hugging Face export"), err  # not "model.onnx: ..."


def test_hf_export_refuses_a_pooling_its_head_does_not_compute(trained):
    import export
    code, _, err = call(export.main, ["--save_path", trained["save"], "--format", "hf", "--out",
                                      str(trained["dir"] / "hf_refused")])
    assert code == 2 and "train with --pooling pooler" in err and len(err.strip().splitlines()) == 1, err


def test_precision_int8_runs_the_int8_graph_and_is_refused_where_there_is_none(trained, tmp_path):
    import export
    import predict
    import train
    out, plain = str(tmp_path / "int8"), str(tmp_path / "fp32_only")
    assert call(export.main, ["--save_path", trained["save"], "--out", out, "--quantize", "int8"])[0] == 0
    assert call(export.main, ["--save_path", trained["save"], "--out", plain])[0] == 0
    texts = [t for t, _ in make_rows(9, seed=13)]
    int8 = predict.load_classifier(out, device="cpu", precision="int8").predict(texts).probabilities
    fp32 = predict.load_classifier(out, device="cpu", precision="fp32").predict(texts).probabilities
    clf = predict.load_classifier(out, device="cpu", precision="fp32")
    direct = export.onnx_probabilities(os.path.join(out, "model.int8.onnx"), clf.tokenizer, texts, None, clf.cfg,
                                       clf.extra, clf.model.inputs, len(NAMES))
    np.testing.assert_allclose(int8, direct, atol=1e-6)  # the int8 graph, not the fp32 one
    assert 0 < np.abs(int8 - fp32).max() < 0.25  # quantised: close to fp32 (a tiny random model), not equal
    from config import InputError
    with pytest.raises(InputError, match="this export has no model.int8.onnx; make one with export.py --quantize int8"):
        predict.load_classifier(plain, device="cpu", precision="int8")
    with pytest.raises(InputError, match="runs the int8 graph of an ONNX export"):
        predict.load_classifier(trained["save"], device="cpu", precision="int8")
    code, _, err = call(train.main, ["--precision", "int8", "--save_path", str(tmp_path / "m")])
    assert code == 2 and "--precision int8 is for predicting with an ONNX export" in err


def test_an_out_folder_that_cannot_be_made_or_a_full_disk_is_one_line(trained, monkeypatch):
    """--out under a file: exit 2; the disk full while the graph is written: exit 3, the earlier export stays."""
    import errno

    import export
    (trained["dir"] / "a_file").write_text("x", encoding="utf-8")
    code, _, err = call(export.main, ["--save_path", trained["save"], "--out", str(trained["dir"] / "a_file" / "ex")])
    assert code == 2 and err.startswith(f"error: --out {trained['dir']}/a_file/ex: cannot write there"), err
    assert err.count("\n") == 1 and "Traceback" not in err

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device", "model.onnx")
    monkeypatch.setattr(export, "replace_folder", full)
    code, _, err = call(export.main, ["--save_path", trained["save"], "--out", str(trained["dir"] / "full")])
    assert code == 3 and "No space left on device" in err and err.count("\n") == 1, err
    assert not os.path.exists(trained["dir"] / "full")
    assert not [n for n in os.listdir(trained["dir"]) if n.startswith(".full")]  # staging removed


def test_quantize_is_refused_for_a_hugging_face_folder(trained):
    import export
    code, _, err = call(export.main, ["--save_path", trained["save"], "--format", "hf", "--quantize", "int8",
                                      "--out", str(trained["dir"] / "hf_int8")])
    assert code == 2 and "--quantize int8 quantises the ONNX graph: use it with --format onnx" in err, err
    assert err.count("\n") == 1 and not os.path.exists(trained["dir"] / "hf_int8")
