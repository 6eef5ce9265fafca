"""The Python API: predict.load_classifier(folder).predict(texts) gives the numbers predict.py writes."""
import csv

import numpy as np
import pytest

from conftest import NAMES, call, make_rows, train_tiny


def predictions_csv(path):
    with open(path, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["sentences"] for r in rows], np.array([[float(r[n]) for n in NAMES] for r in rows]), \
        [r["label"] for r in rows]


@pytest.mark.parametrize("multi_label", [False, True])
def test_load_classifier_predicts_what_predict_py_writes(tiny_bert, tmp_path, multi_label):
    import predict
    save, classes, _ = train_tiny(tmp_path, tiny_bert, 90, 2, "--multi_label", str(multi_label))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    texts = [t for t, _ in make_rows(20, seed=5)]
    (inputs / "s.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    code, _, err = call(predict.main, ["-f", str(inputs), "-d", classes, "--save_path", save, "--out_dir",
                                       str(tmp_path / "preds")])
    assert code == 0, err
    written_texts, written, written_labels = predictions_csv(tmp_path / "preds" / "s.csv")
    clf = predict.load_classifier(save, device="auto", precision="auto", batch_size=7)
    out = clf.predict(texts)
    assert clf.classes == NAMES and written_texts == texts
    assert out.probabilities.shape == (20, 3)
    np.testing.assert_allclose(out.probabilities, written, atol=1e-6)  # the CSV keeps 6 decimals
    labels = [",".join(x) for x in out.labels] if multi_label else out.labels
    assert labels == written_labels
    if multi_label:
        assert all(isinstance(x, list) and x for x in out.labels)  # fallback: never empty by default


def test_load_classifier_refuses_a_missing_second_text_and_a_folder_without_a_model(tiny_bert, tmp_path):
    import predict
    from config import InputError
    save, _, _ = train_tiny(tmp_path, tiny_bert, 60, 1)
    clf = predict.load_classifier(save)
    with pytest.raises(InputError, match="single texts"):
        clf.predict(["a"], texts2=["b"])
    assert len(clf.predict("i feel happy").labels) == 1  # one string is one text
    with pytest.raises(InputError, match="no trained model here"):
        predict.load_classifier(str(tmp_path / "nothing"))
    # wrong arguments: one InputError naming them, never zeros or a tokenizer's traceback
    for call_it, message in ((lambda: clf.predict(None), "texts: expected a string or a list of strings, got "
                                                         "NoneType"),
                             (lambda: clf.predict({"a": 1}), "texts: expected a string or a list of strings"),
                             (lambda: clf.predict(["ok", 3]), r"texts\[1\]: expected a string, got int"),
                             (lambda: clf.predict(["i feel \ud800 fine"]), r"texts\[0\]: lone surrogate U\+D800"),
                             (lambda: clf.predict(["a"], batch_size=-1), "batch_size -1: must be an integer"),
                             (lambda: clf.predict(["a"], batch_size=0), "batch_size 0: must be an integer"),
                             (lambda: predict.load_classifier(save, precision="fp8"), "precision 'fp8': one of"),
                             (lambda: predict.load_classifier(save, batch_size=2.5), "batch_size 2.5"),
                             (lambda: predict.load_classifier(None), "save_path and device must be strings")):
        with pytest.raises(InputError, match=message):
            call_it()


def test_auto_predicts_in_the_precision_the_model_was_trained_and_calibrated_in(tiny_bert, tmp_path):
    """A model trained with --precision fp32 had its temperature and thresholds fitted on fp32 logits: asked for
    auto, the API and predict.py run it in fp32 (an explicit precision still wins)."""
    import predict
    save, classes, _ = train_tiny(tmp_path, tiny_bert, 60, 1, "--precision", "fp32")
    assert predict.load_classifier(save).run.precision == "fp32"
    assert predict.load_classifier(save, precision="bf16").run.precision == "bf16"
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "s.txt").write_text("i feel happy\n", encoding="utf-8")
    code, out, err = call(predict.main, ["-f", str(inputs), "-d", classes, "--save_path", save, "--out_dir",
                                         str(tmp_path / "preds")])
    assert code == 0 and "precision fp32" in out, err


def test_a_flat_validation_nll_keeps_the_temperature_at_1():
    import calibrate
    assert calibrate.fit_temperature(np.zeros((4, 3)), np.array([0, 1, 2, 0]), False) == 1.0
