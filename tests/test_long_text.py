"""--long_text windows: texts cut into overlapping windows that cover every token once, logits pooled per document
(mean or max) in training as in prediction, batches counted in windows, and the same numbers from predict.py, the
Python API and an ONNX export; bad window options are refused before anything is written."""
import csv
import json
import os
import random

import numpy as np
import pytest
import torch

from conftest import NAMES, ROOT, WORDS, call, load_bench, make_rows, write_classes, write_csv

WINDOW = ["--long_text", "windows", "--max_length", "16", "--stride", "4", "--max_windows", "3"]


def content(tokenizer, text: str) -> list:
    """The text's token ids, whole, without special tokens."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def long_rows(n: int, seed: int = 0) -> list:
    """(text, class) rows of 1 to 7 sentences of the class's words: at --max_length 16, from one window to six."""
    rows = []
    for i, (text, name) in enumerate(make_rows(n, seed)):
        extra = [t for t, other in make_rows(24, seed=1000 * (seed + 1) + i) if other == name][:(0, 1, 3, 6)[i % 4]]
        rows.append((" ".join([text, *extra]), name))
    return rows


def read_probabilities(path: str, names=NAMES) -> tuple:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, np.array([[float(r[n]) for n in names] for r in rows])


def predict_folder(save: str, classes: str, inputs: str, out_dir: str) -> tuple:
    """predict.py (fp32 on the CPU) on the folder `inputs`: (exit code, stdout, stderr)."""
    import predict
    return call(predict.main, ["-f", inputs, "-d", classes, "-p", "False", "--save_path", save, "--out_dir", out_dir,
                               "--device", "cpu", "--precision", "fp32"])


# ------------------------------------------------------------------------------------------ window arithmetic
def test_windows_of_a_long_text_are_bounded_framed_overlap_by_stride_and_cover_it_exactly(tiny_bert):
    from long_text import tokenize_windows
    from model import load_tokenizer
    tokenizer = load_tokenizer(tiny_bert)
    text = " ".join(f"{random.Random(i).choice(WORDS['joy'])} day{i}" for i in range(70))
    full = content(tokenizer, text)
    assert 190 <= len(full) <= 260
    (windows,), types = tokenize_windows(tokenizer, [text], 16, 4)
    assert types is None  # single texts carry no type ids
    assert len(windows) == 1 + -(-(len(full) - 14) // 10)  # 14 tokens of text a window, each 10 further on
    for w in windows:
        assert len(w) <= 16 and w[0] == tokenizer.cls_token_id and w[-1] == tokenizer.sep_token_id
        assert tokenizer.cls_token_id not in w[1:-1] and tokenizer.sep_token_id not in w[1:-1]
    bodies = [w[1:-1] for w in windows]
    assert all(a[-4:] == b[:4] for a, b in zip(bodies, bodies[1:]))  # each repeats the last `stride` tokens
    assert bodies[0] + [t for b in bodies[1:] for t in b[4:]] == full


def test_a_text_that_fits_is_one_window_equal_to_its_truncated_tokens(tiny_bert):
    from dataset import tokenize
    from long_text import tokenize_windows
    from model import load_tokenizer
    tokenizer = load_tokenizer(tiny_bert)
    texts = ["i feel happy", "i am so furious about the rage of it all"]
    windows, _ = tokenize_windows(tokenizer, texts, 16, 4)
    ids, _ = tokenize(tokenizer, texts, 16)
    assert windows == [[i] for i in ids]
    exactly_full = " ".join(["happy"] * 14)  # 14 tokens of text + [CLS] + [SEP]: one window, not two
    assert tokenize_windows(tokenizer, [exactly_full], 16, 4)[0] == [tokenize(tokenizer, [exactly_full], 16)[0]]
    assert len(tokenize_windows(tokenizer, [exactly_full + " happy"], 16, 4)[0][0]) == 2


def test_pair_windows_repeat_the_second_text_whole_with_type_ids_one_on_it(tiny_bert):
    from long_text import tokenize_windows
    from model import load_tokenizer
    tokenizer = load_tokenizer(tiny_bert)
    first = " ".join(f"great day{i}" for i in range(30))
    second = "sad lonely night"
    windows, types = tokenize_windows(tokenizer, [first, "i cry"], 16, 4, [second, second], token_types=True)
    tail = [tokenizer.sep_token_id, *content(tokenizer, second), tokenizer.sep_token_id]
    assert len(windows[0]) > 3 and len(windows[1]) == 1
    firsts = []
    for w, t in zip(windows[0], types[0]):
        assert len(w) <= 16 and w[0] == tokenizer.cls_token_id and w[-len(tail):] == tail
        cut = len(w) - len(tail) + 1  # [CLS] a [SEP] | b [SEP]
        assert t == [0] * cut + [1] * (len(w) - cut)
        firsts.append(w[1:cut - 1])
    assert all(a[-4:] == b[:4] for a, b in zip(firsts, firsts[1:]))
    assert firsts[0] + [x for f in firsts[1:] for x in f[4:]] == content(tokenizer, first)


def test_a_second_text_that_fills_the_window_and_a_stride_as_long_as_it_are_refused(tiny_bert):
    from config import InputError
    from long_text import check_window_options, tokenize_windows
    from model import load_tokenizer
    tokenizer = load_tokenizer(tiny_bert)
    # 16 - 3 special tokens - stride 4 = 9: a second text of 8 tokens leaves the first text 5, one more than stride
    fits, fills = " ".join(["sad"] * 8), " ".join(["sad"] * 9)
    windows, _ = tokenize_windows(tokenizer, ["i feel " * 10] * 2, 16, 4, ["x", fits])
    assert len(windows[1]) > len(windows[0]) > 1
    with pytest.raises(InputError, match=r"^train\.csv, row 7: the second text has 9 tokens"):
        tokenize_windows(tokenizer, ["a", "b"], 16, 4, ["x", fills], rows=[6, 7], where="train.csv")
    with pytest.raises(InputError, match="row 2: "):  # without row numbers: the position, from 1
        tokenize_windows(tokenizer, ["a", "b"], 16, 4, ["x", fills])
    check_window_options(tokenizer, 16, 13, pair=False)
    for stride, pair in ((14, False), (20, False), (13, True)):
        with pytest.raises(InputError, match=f"--stride {stride}: must be smaller than the window"):
            check_window_options(tokenizer, 16, stride, pair)
        with pytest.raises(InputError, match=f"--stride {stride}"):
            tokenize_windows(tokenizer, ["a"], 16, stride, ["b"] if pair else None)


# -------------------------------------------------------------------------------------------------- pooling
def test_window_logits_pool_to_their_documents_mean_and_max_with_gradients():
    from long_text import pool_window_logits
    logits = torch.tensor([[1., -2.], [3., 0.], [5., 4.], [-1., 7.], [2., 2.], [0., -3.]], requires_grad=True)
    counts = torch.tensor([3, 1, 2])
    mean = pool_window_logits(logits, counts, "mean")
    assert torch.allclose(mean, torch.tensor([[3., 2 / 3], [-1., 7.], [1., -0.5]]))
    mean.sum().backward()
    assert torch.allclose(logits.grad, torch.tensor([[1 / 3] * 2] * 3 + [[1.] * 2] + [[0.5] * 2] * 2))
    logits.grad = None
    top = pool_window_logits(logits, counts, "max")
    assert torch.equal(top, torch.tensor([[5., 4.], [-1., 7.], [2., 2.]]))
    top.sum().backward()
    assert torch.equal(logits.grad, torch.tensor([[0., 0.], [0., 0.], [1., 1.], [1., 1.], [1., 1.], [0., 0.]]))
    assert torch.equal(pool_window_logits(logits[:2], torch.tensor([1, 1]), "mean"), logits[:2])


def test_the_classifier_pools_its_window_rows_into_one_row_per_document(tiny_bert):
    from dataset import Collator
    from long_text import WindowedDataset, tokenize_windows
    from model import BertClassifier, load_pretrained_encoder, load_tokenizer
    tokenizer = load_tokenizer(tiny_bert)
    torch.manual_seed(0)
    model = BertClassifier(load_pretrained_encoder(tiny_bert), 3, "cls", window_pool="max").eval()
    windows, _ = tokenize_windows(tokenizer, ["i feel happy " * 12, "i cry"], 16, 4)
    data = WindowedDataset(windows, [1, 2])
    batch = Collator(tokenizer.pad_token_id, 3)([data[0], data[1]])
    assert batch["window_counts"].tolist() == [len(windows[0]), 1] and batch["labels"].tolist() == [1, 2]
    assert batch["input_ids"].shape[0] == len(windows[0]) + 1
    with torch.no_grad():
        pooled = model(batch["input_ids"], batch["attention_mask"], window_counts=batch["window_counts"])
        each = [model(torch.tensor([w]), torch.ones(1, len(w), dtype=torch.long))[0] for w in windows[0]]
    assert pooled.shape == (2, 3)
    torch.testing.assert_close(pooled[0], torch.stack(each).max(0).values, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------- training's windows
def test_a_training_epoch_reads_a_seeded_contiguous_run_of_at_most_the_cap():
    from long_text import training_windows
    assert training_windows(3, 5, 0, 1, 0) == slice(0, 3) and training_windows(5, 5, 0, 1, 0) == slice(0, 5)
    starts = set()
    for epoch in range(1, 41):
        run = training_windows(10, 4, 7, epoch, 3)
        assert run == training_windows(10, 4, 7, epoch, 3)  # the same (seed, epoch, document): the same run
        assert run.stop - run.start == 4 and 0 <= run.start <= 6 and run.step is None
        starts.add(run.start)
    assert len(starts) >= 4  # other epochs read other parts of the document
    assert len({training_windows(10, 4, seed, 1, 3).start for seed in range(40)}) >= 4
    assert len({training_windows(10, 4, 7, 1, doc).start for doc in range(40)}) >= 4


def test_a_windowed_dataset_caps_windows_in_training_only_and_costs_count_them():
    from long_text import WindowedDataset
    docs = [[[101, d, w, 102] for w in range(n)] for d, n in enumerate((1, 3, 7, 12))]
    train = WindowedDataset(docs, [0, 1, 2, 0], train_cap=3, seed=5)
    assert train.costs() == [1, 3, 3, 3] and train.lengths() == [4, 12, 28, 48] and len(train) == 4
    seen = set()
    for epoch in range(1, 30):
        train.set_epoch(epoch)
        item = train[3]
        got = [w[2] for w in item["windows"]]
        assert got == list(range(got[0], got[0] + 3)) and item["labels"] == 0 and item["index"] == 3
        assert item["windows"] == docs[3][train.chosen(3)]
        seen.add(got[0])
        assert train[1]["windows"] == docs[1] and train[0]["windows"] == docs[0]
    assert len(seen) > 3
    whole = WindowedDataset(docs, [0, 1, 2, 0])
    assert whole.costs() == [1, 3, 7, 12] and all(whole[i]["windows"] == docs[i] for i in range(4))
    vectors = WindowedDataset(labels=[0, 1], features=[torch.zeros(2, 4), torch.ones(9, 4)], train_cap=4)
    assert vectors.costs() == [2, 4] and vectors[1]["window_features"].shape == (4, 4)


def test_batches_hold_at_most_batch_size_windows_and_every_document_once_an_epoch():
    from dataset import BucketBatchSampler
    rng = random.Random(0)
    costs = [rng.choice((1, 1, 2, 3, 5, 8, 11)) for _ in range(300)]
    lengths = [c * 16 - rng.randrange(8) for c in costs]
    for shuffle in (True, False):
        sampler = BucketBatchSampler(lengths, 8, shuffle, seed=3, costs=costs)
        counts = set()
        for epoch in (1, 2, 3):
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert len(sampler) == sampler.batches_in_epoch(epoch) == len(batches)
            assert sorted(i for b in batches for i in b) == list(range(300))
            assert all(sum(costs[i] for i in b) <= 8 or len(b) == 1 for b in batches)
            assert any(len(b) == 1 and costs[b[0]] > 8 for b in batches)  # a long document alone
            counts.add(len(batches))
        sampler.set_epoch(2, skip_batches=3)
        assert len(sampler) == sampler.batches_in_epoch(2) - 3 == len(list(sampler))
    plain = BucketBatchSampler(lengths, 8, True, seed=3)
    assert len(plain) == plain.batches_in_epoch(1) == 38  # without costs: rows count, as before windows


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def windows_model(tiny_bert, tmp_path_factory):
    """A model trained with WINDOW on long rows, its files, and train.py's stdout."""
    import train
    folder = tmp_path_factory.mktemp("windows")
    classes = write_classes(folder / "classes.json")
    train_rows, valid_rows = long_rows(48), long_rows(15, seed=1)
    data, valid = write_csv(folder / "train.csv", train_rows), folder / "inputs" / "valid.csv"
    valid.parent.mkdir()
    write_csv(valid, valid_rows)
    save = str(folder / "model")
    code, out, err = call(train.main, ["-d", classes, "-p", "False", "--train_path", data, "--valid_path", str(valid),
                                       "--bert_name", tiny_bert, "--save_path", save, "--n_epochs", "2",
                                       "--batch_size", "8", "--lr_main", "1e-3", "--lr", "5e-3",
                                       "--precision", "fp32", *WINDOW])
    assert code == 0, err
    return {"dir": folder, "save": save, "classes": classes, "out": out, "train_rows": train_rows,
            "valid": str(valid), "inputs": str(valid.parent), "texts": [t for t, _ in valid_rows]}


def test_training_reports_how_many_documents_need_several_windows(windows_model, tiny_bert):
    from model import load_tokenizer
    tokenizer = load_tokenizer(tiny_bert)
    lengths = [len(content(tokenizer, t)) for t, _ in windows_model["train_rows"]]
    several = sum(n > 14 for n in lengths)
    most = max(1 + -(-(n - 14) // 10) for n in lengths)
    assert 12 <= several < 48 and most > 3  # the rows need it, and some are capped by --max_windows 3
    line = next(x for x in windows_model["out"].splitlines() if x.startswith("long texts:"))
    assert line == (f"long texts: windows of 16 tokens overlapping by 4, logits pooled by mean, batches of at most "
                    f"8 windows; {several} of 48 training document(s) need more than one window, the most {most}, "
                    f"at most 3 per document in each training epoch")
    saved = json.load(open(os.path.join(windows_model["save"], "train_config.json"), encoding="utf-8"))
    assert (saved["long_text"], saved["stride"], saved["window_pool"], saved["max_windows"]) == ("windows", 4,
                                                                                                 "mean", 3)


def hand_logits(save: str, texts: list) -> np.ndarray:
    """Every window through the saved model one at a time, the mean of their logits: what a windows model's
    documents must score."""
    from checkpoint import load_model
    from long_text import tokenize_windows
    model, tokenizer, cfg, _, _ = load_model(save, torch.device("cpu"))
    model.float().eval()
    windows, _ = tokenize_windows(tokenizer, texts, 16, 4)
    out = []
    with torch.no_grad():
        for doc in windows:
            logits = torch.stack([model(torch.tensor([w]), torch.ones(1, len(w), dtype=torch.long))[0] for w in doc])
            out.append(logits.mean(0).numpy())
    assert any(len(doc) > 3 for doc in windows)  # more windows than a training epoch reads
    return np.array(out)


def hand_probabilities(save: str, texts: list) -> np.ndarray:
    """Softmax of hand_logits at the saved temperature: what predict.py must give."""
    temperature = json.load(open(os.path.join(save, "calibration.json"), encoding="utf-8"))["temperature"]
    return torch.softmax(torch.as_tensor(hand_logits(save, texts)) / temperature, -1).numpy()


def test_validation_scores_every_window_of_a_document(windows_model):
    save = windows_model["save"]
    metrics = json.load(open(os.path.join(save, "metrics.json"), encoding="utf-8"))
    best = metrics["epochs"][metrics["best_epoch"] - 1]
    logits = torch.as_tensor(hand_logits(save, windows_model["texts"]))
    labels = torch.tensor([NAMES.index(n) for _, n in long_rows(15, seed=1)])
    assert abs(best["valid_loss"] - torch.nn.functional.cross_entropy(logits, labels).item()) < 1e-5
    assert best["valid_accuracy"] == pytest.approx((logits.argmax(1) == labels).sum().item() / 15)


def test_predictions_are_the_softmax_of_the_mean_of_every_windows_logits(windows_model):
    import predict
    save = windows_model["save"]
    expected = hand_probabilities(save, windows_model["texts"])
    out_dir = str(windows_model["dir"] / "preds")
    code, _, err = predict_folder(save, windows_model["classes"], windows_model["inputs"], out_dir)
    assert code == 0, err
    rows, written = read_probabilities(os.path.join(out_dir, "valid.csv"))
    assert [r["sentences"] for r in rows] == windows_model["texts"]
    np.testing.assert_allclose(written, expected, atol=1e-5, rtol=0)
    assert [r["label"] for r in rows] == [NAMES[j] for j in expected.argmax(1)]
    api = predict.load_classifier(save, device="cpu", precision="fp32").predict(windows_model["texts"])
    np.testing.assert_allclose(api.probabilities, expected, atol=1e-5, rtol=0)
    small = predict.load_classifier(save, device="cpu", precision="fp32", batch_size=2)
    np.testing.assert_allclose(small.predict(windows_model["texts"]).probabilities, expected, atol=1e-5, rtol=0)


def test_no_texts_predict_no_rows_with_windows_as_with_truncation(windows_model):
    """Classifier.predict([]), and the empty share a rank gets under predict_sharded when a chunk has fewer rows
    than there are processes."""
    import predict
    clf = predict.load_classifier(windows_model["save"], device="cpu", precision="fp32")
    assert clf.predict([]).probabilities.shape == (0, len(NAMES))


def test_truncate_and_windows_train_and_predict_alike_when_every_text_fits_one_window(tiny_bert, tmp_path):
    import predict
    from conftest import train_tiny
    from long_text import tokenize_windows
    from model import load_tokenizer
    texts = [t for t, _ in make_rows(20, seed=4)]
    fits = [t for t, _ in make_rows(60)] + texts
    assert all(len(w) == 1 for w in tokenize_windows(load_tokenizer(tiny_bert), fits, 32, 8)[0])
    results = []
    for mode in ("truncate", "windows"):
        (tmp_path / mode).mkdir()
        save, _, _ = train_tiny(tmp_path / mode, tiny_bert, 60, 2, "--long_text", mode, "--stride", "8", "--seed",
                                "3", "--batch_size", "8", "--lr_main", "1e-3", "--lr", "5e-3")
        metrics = json.load(open(os.path.join(save, "metrics.json"), encoding="utf-8"))
        scores = [{k: v for k, v in e.items() if k.startswith(("valid_", "train_loss"))} for e in metrics["epochs"]]
        clf = predict.load_classifier(save, device="cpu", precision="fp32")
        results.append((scores, metrics["best_epoch"], clf.predict(texts).probabilities))
    (truncated, best_t, probs_t), (windowed, best_w, probs_w) = results
    assert truncated == windowed and best_t == best_w and "valid_macro_f1" in truncated[0]
    np.testing.assert_allclose(probs_w, probs_t, atol=1e-6, rtol=0)


def variant_task(tmp_path, kind: str) -> tuple:
    """(classes.json, train file, file to predict, train.py flags) of a pair, multi-label or boost task whose
    (first) texts need several windows."""
    texts = [t for t, _ in long_rows(60, seed=2)]
    if kind == "pairs":
        names = ["no", "yes"]
        rows = [(t, NAMES[(i + i // 2) % 3], "yes" if NAMES[(i + i // 2) % 3] == NAMES[i % 3] else "no")
                for i, t in enumerate(texts)]
        header, flags = ("sentence", "emotion", "answer"), ["--text_col", "sentence", "--text_col2", "emotion",
                                                            "--label_col", "answer"]
    elif kind == "multi_label":
        names = NAMES
        rows = [(t + " " + " ".join(WORDS[NAMES[(i + 1) % 3]][:2]) * (i % 2), ",".join(sorted(
            {NAMES[i % 3], *([NAMES[(i + 1) % 3]] if i % 2 else [])}))) for i, t in enumerate(texts)]
        header, flags = ("sentences", "emotion"), ["--multi_label", "True"]
    else:
        names, rows, header = NAMES, long_rows(60, seed=2), ("sentences", "emotion")
        flags = ["--boost", "True", "--bert_finetuning", "False"]
    classes = write_classes(tmp_path / "classes.json", names)
    data = write_csv(tmp_path / "train.csv", rows, header)
    (tmp_path / "inputs").mkdir()
    write_csv(tmp_path / "inputs" / "new.csv", [r[:len(header) - 1] for r in rows[:9]], header[:-1])
    return classes, data, str(tmp_path / "inputs"), flags, names


@pytest.mark.parametrize("kind", ["pairs", "multi_label", "boost"])
def test_windows_train_and_predict_with_pairs_multi_label_and_boost(tiny_bert, tmp_path, kind):
    import train
    classes, data, inputs, flags, names = variant_task(tmp_path, kind)
    save = str(tmp_path / "model")
    code, out, err = call(train.main, ["-d", classes, "-p", "False", "--train_path", data, "--bert_name", tiny_bert,
                                       "--save_path", save, "--n_epochs", "2", "--batch_size", "8", *WINDOW, *flags])
    assert code == 0, err
    assert "need more than one window" in out
    if kind == "boost":
        assert "--boost: encoded" in out and os.listdir(os.path.join(save, "boost_cache"))
    code, _, err = predict_folder(save, classes, inputs, str(tmp_path / "preds"))
    assert code == 0, err
    rows, probs = read_probabilities(str(tmp_path / "preds" / "new.csv"), names)
    assert len(rows) == 9 and np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()
    if kind == "pairs":
        assert list(rows[0])[:3] == ["sentence", "emotion", "label"]
    if kind != "multi_label":
        np.testing.assert_allclose(probs.sum(1), 1, atol=1e-4)


def pair_file(tmp_path) -> tuple:
    """A pair file whose data row 5 (file row 6) has a second text that leaves the first no room at
    --max_length 16 --stride 4."""
    rows = [(t, "sad" if i != 4 else " ".join(["sad"] * 9), n) for i, (t, n) in enumerate(long_rows(30))]
    return write_csv(tmp_path / "pairs.csv", rows, ("a", "b", "emotion")), ["--text_col", "a", "--text_col2", "b"]


BAD = [
    (["--stride", "-1"], "--stride must be 0 or more"),
    (["--max_windows", "0"], "--max_windows must be at least 1"),
    (["--stride", "14"], "--stride 14: must be smaller than the window, --max_length 16 less the model's 2 special"),
    (["pairs"], "pairs.csv, row 6: the second text has 9 tokens"),
    (["-p", "True", "--parallel_mode", "dp"], "--long_text windows with --parallel_mode dp"),
]


@pytest.mark.parametrize("flags,message", BAD, ids=["negative_stride", "no_windows", "stride_fills_window",
                                                    "second_text_fills_window", "data_parallel"])
def test_bad_window_options_are_one_line_exit_2_and_write_nothing(tiny_bert, tmp_path, flags, message):
    import train
    classes = write_classes(tmp_path / "classes.json")
    data = write_csv(tmp_path / "train.csv", long_rows(30))
    if flags == ["pairs"]:
        data, flags = pair_file(tmp_path)
    save = tmp_path / "model"
    argv = ["-d", classes, "--train_path", data, "--bert_name", tiny_bert, "--save_path", str(save),
            "--n_epochs", "1", *WINDOW, *flags]
    if "-p" not in flags:
        argv = ["-p", "False", *argv]
    code, out, err = call(train.main, argv)
    assert code == 2, (out, err)
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not save.exists()


def test_a_windows_model_exports_to_onnx_with_predict_py_numbers_and_not_to_hf(windows_model):
    import export
    folder, save = windows_model["dir"], windows_model["save"]
    out = str(folder / "exported")
    code, stdout, err = call(export.main, ["--save_path", save, "--out", out, "--check", windows_model["valid"]])
    assert code == 0, err
    report = json.load(open(os.path.join(out, "export.json"), encoding="utf-8"))
    assert report["graphs"]["model.onnx"]["max_abs_difference"] < 1e-4
    runs = []
    for name, model in (("torch", save), ("onnx", out)):
        code, _, err = predict_folder(model, windows_model["classes"], windows_model["inputs"], str(folder / name))
        assert code == 0, err
        runs.append(read_probabilities(str(folder / name / "valid.csv"))[1])
    np.testing.assert_allclose(runs[1], runs[0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(runs[0], hand_probabilities(save, windows_model["texts"]), atol=1e-5, rtol=0)
    hf = folder / "hf"
    code, _, err = call(export.main, ["--save_path", save, "--out", str(hf), "--format", "hf"])
    assert code == 2 and "--long_text windows" in err and "export --format onnx" in err and not hf.exists(), err


# ------------------------------------------------------------------------------------------- the benchmark
def emotion_word_index(document: str, emotion: str, sentences: dict) -> int:
    """The word index where the document's one sentence of `emotion` starts, by parsing the document as data
    sentences: neutral ones, that one, neutral ones (neutral tried first, so the emotion is placed as late as can be).
    `sentences`: the first 12 characters of each sentence ("" for shorter ones) -> [(label, sentence)]."""
    def parse(pos, found):
        if pos >= len(document):
            return found
        for label, s in sentences.get(document[pos:pos + 12], []) + sentences.get("", []):
            end = pos + len(s)
            if (label == "neutral" or (label == emotion and found is None)) and document.startswith(s, pos) \
                    and (end == len(document) or document[end] == " "):
                done = parse(end + 1, found if label == "neutral" else len(document[:pos].split()))
                if done is not None:
                    return done
        return None
    return parse(0, None)


def test_bench_long_documents_put_the_emotion_past_the_prefix_and_balance_emotions(tmp_path):
    bench = load_bench("long_documents")
    src = os.path.join(ROOT, "data", "train.csv")
    dst = str(tmp_path / "docs.csv")
    bench.build_documents(src, dst, 18, 5, 64)
    with open(src, encoding="utf-8", newline="") as f:
        labelled = [(r["emotion"], r["sentences"]) for r in csv.DictReader(f)]
    sentences = {}
    for label, s in labelled:
        if label == "neutral" or label in bench.EMOTIONS:
            sentences.setdefault(s[:12] if len(s) >= 12 else "", []).append((label, s))
    with open(dst, encoding="utf-8", newline="") as f:
        docs = list(csv.DictReader(f))
    assert len(docs) == 18 and list(docs[0]) == ["document", "emotion"]
    assert {e: sum(d["emotion"] == e for d in docs) for e in bench.EMOTIONS} == {e: 3 for e in bench.EMOTIONS}
    for d in docs:
        start = emotion_word_index(d["document"], d["emotion"], sentences)
        assert start is not None and start >= 64, d
