"""Sentence pairs (--text_col2): the tokenizer's own pair encoding, token type ids where the model reads them,
the same checks for both columns, both columns in the predictions, and pairs with --boost, multi-label and
class weights."""
import csv
import os

import torch

from conftest import NAMES, WORDS, call, make_rows, write_classes, write_csv


def roberta_style_tokenizer():
    """A RoBERTa tokenizer over single characters (no merges): pairs as <s> a </s></s> b </s>, no type ids."""
    from transformers import RobertaTokenizer
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "\u0120": 5}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c], vocab["\u0120" + c] = len(vocab), len(vocab) + 1
    return RobertaTokenizer(vocab=vocab, merges=[])


def test_bert_pairs_are_cls_a_sep_b_sep_with_segment_ids_and_the_longer_side_is_cut_first(tiny_bert):
    from dataset import tokenize
    from model import load_tokenizer
    tokenizer = load_tokenizer(tiny_bert)
    ids, types = tokenize(tokenizer, ["happy day"], 16, ["sad night"], token_types=True)
    assert tokenizer.convert_ids_to_tokens(ids[0]) == ["[CLS]", "happy", "day", "[SEP]", "sad", "night", "[SEP]"]
    assert types == [[0, 0, 0, 0, 1, 1, 1]]
    long_a = " ".join(["happy"] * 20)
    ids, types = tokenize(tokenizer, [long_a], 12, ["sad night"], token_types=True)
    assert len(ids[0]) == 12 and tokenizer.convert_ids_to_tokens(ids[0])[-4:] == ["[SEP]", "sad", "night", "[SEP]"]
    # single texts: no type ids at all (all zero, what the encoder assumes)
    assert tokenize(tokenizer, ["happy day"], 16, None, token_types=True)[1] is None


def test_roberta_pairs_are_its_own_format_and_carry_no_token_type_ids(tiny_family):
    from transformers import AutoModel

    from dataset import tokenize
    from model import takes_token_types
    tokenizer = roberta_style_tokenizer()
    ids, types = tokenize(tokenizer, ["ab"], 16, ["cd"], token_types=True)
    assert tokenizer.convert_ids_to_tokens(ids[0]) == ["<s>", "a", "b", "</s>", "</s>", "c", "d", "</s>"]
    roberta = AutoModel.from_pretrained(tiny_family("roberta"))
    distilbert = AutoModel.from_pretrained(tiny_family("distilbert"))
    bert = AutoModel.from_pretrained(tiny_family("bert"))
    from model import load_tokenizer
    bert_tokenizer = load_tokenizer(tiny_family("bert"))
    assert not takes_token_types(roberta, tokenizer)  # its tokenizer gives none
    assert not takes_token_types(distilbert, bert_tokenizer)  # its forward takes none
    assert takes_token_types(bert, bert_tokenizer)


def test_token_type_ids_reach_the_encoder(tiny_bert):
    from dataset import Collator, EncodedDataset, tokenize
    from model import BertClassifier, load_pretrained_encoder, load_tokenizer
    tokenizer = load_tokenizer(tiny_bert)
    torch.manual_seed(0)
    model = BertClassifier(load_pretrained_encoder(tiny_bert), 3, "cls").eval()
    ids, types = tokenize(tokenizer, ["happy day", "i cry"], 16, ["sad night", "lonely"], token_types=True)
    batch = Collator(tokenizer.pad_token_id)([EncodedDataset(ids, token_type_ids=types)[i] for i in range(2)])
    assert batch["token_type_ids"].tolist()[1] == [0, 0, 0, 0, 1, 1, 0] and batch["attention_mask"][1, 6] == 0
    with torch.no_grad():
        with_types = model(batch["input_ids"], batch["attention_mask"], token_type_ids=batch["token_type_ids"])
        without = model(batch["input_ids"], batch["attention_mask"])
    assert (with_types - without).abs().max() > 1e-4


def pair_rows(n: int, seed: int = 0) -> list:
    """(sentence, emotion name, yes/no): yes when the sentence is of that emotion."""
    rows = []
    for i, (text, name) in enumerate(make_rows(n, seed)):
        asked = name if i % 2 == 0 else NAMES[(NAMES.index(name) + 1 + i // 2 % 2) % len(NAMES)]
        rows.append((text, asked, "yes" if asked == name else "no"))
    return rows


def test_pairs_train_and_predict_with_both_columns_in_the_predictions(tiny_bert, tmp_path):
    import predict
    import train
    classes = write_classes(tmp_path / "yesno.json", ["no", "yes"])
    data = write_csv(tmp_path / "pairs.csv", pair_rows(80), header=("sentence", "emotion", "answer"))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_csv(inputs / "q.csv", [r[:2] for r in pair_rows(10, seed=3)], header=("sentence", "emotion"))
    write_csv(inputs / "r.csv", pair_rows(12, seed=4), header=("sentence", "emotion", "answer"))  # labelled
    save = str(tmp_path / "model")
    flags = ["--text_col", "sentence", "--text_col2", "emotion", "--label_col", "answer"]
    code, out, err = call(train.main, ["-d", classes, "--train_path", data, "--bert_name", tiny_bert, "--save_path",
                                       save, "--n_epochs", "1", "--max_length", "32", *flags])
    assert code == 0, err
    assert "pairs sentence + emotion" in out
    code, out, err = call(predict.main, ["-f", str(inputs), "-d", classes, "--save_path", save,
                                         "--out_dir", str(tmp_path / "preds"), "--report", "True"])
    assert code == 0, err
    assert "r.csv: accuracy" in out and os.path.isdir(tmp_path / "preds" / "report_r")
    with open(tmp_path / "preds" / "q.csv", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["sentence", "emotion", "label", "no", "yes"]
    assert [r[:2] for r in rows[1:]] == [list(r[:2]) for r in pair_rows(10, seed=3)]
    # the same sentence asked about two emotions gets two answers' probabilities, not one
    model_out = {tuple(r[:2]): float(r[4]) for r in rows[1:]}
    assert len(set(model_out.values())) > 1
    # the Python API reads the pair the same way
    out = predict.load_classifier(save).predict([r[0] for r in rows[1:]], [r[1] for r in rows[1:]])
    assert abs(out.probabilities[:, 1] - [float(r[4]) for r in rows[1:]]).max() < 1e-6
    assert out.labels == [r[2] for r in rows[1:]]


def test_a_pair_model_refuses_txt_inputs_and_a_missing_second_column(tiny_bert, tmp_path):
    import predict
    import train
    classes = write_classes(tmp_path / "yesno.json", ["no", "yes"])
    data = write_csv(tmp_path / "pairs.csv", pair_rows(40), header=("sentence", "emotion", "answer"))
    save = str(tmp_path / "model")
    flags = ["--text_col", "sentence", "--label_col", "answer"]
    code, _, err = call(train.main, ["-d", classes, "--train_path", data, "--bert_name", tiny_bert, "--save_path",
                                     save, "--n_epochs", "1", "--max_length", "32", "--text_col2", "question", *flags])
    assert code == 2 and "row 1: no column 'question'" in err and "--text_col2" in err, err
    code, _, err = call(train.main, ["-d", classes, "--train_path", data, "--bert_name", tiny_bert, "--save_path",
                                     save, "--n_epochs", "1", "--max_length", "32", "--text_col2", "emotion", *flags])
    assert code == 0, err
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "a.txt").write_text("i feel happy\n", encoding="utf-8")
    write_csv(inputs / "b.csv", [("i feel happy",)], header=("sentence",))
    code, _, err = call(predict.main, ["-f", str(inputs), "-d", classes, "--save_path", save,
                                       "--out_dir", str(tmp_path / "preds")])
    assert code == 1
    assert "a.txt: a .txt file holds one text a line, and this model reads pairs" in err
    assert "b.csv, row 1: no column 'emotion'" in err and "--text_col2" in err


def test_both_text_columns_get_the_row_and_column_checks(tmp_path):
    from config import InputError
    from dataset import load_labelled_file
    path = write_csv(tmp_path / "p.csv", [("i feel happy", "joy", "yes"), ("i feel sad", "jo\x07y", "no"),
                                           ("i cry", "  ", "no"), ("i hate", "anger", "yes")],
                     header=("sentence", "emotion", "answer"))
    try:
        load_labelled_file(path, "sentence", "answer", ["no", "yes"], False, "emotion")
        raise AssertionError("a control character passed")
    except InputError as e:
        assert str(e) == f"{path}, row 3, column 'emotion': control character U+0007 at position 3"
    path = write_csv(tmp_path / "q.csv", [("i feel happy", "joy", "yes"), ("i cry", "  ", "no"),
                                           ("i hate", "anger", "yes")], header=("sentence", "emotion", "answer"))
    data = load_labelled_file(path, "sentence", "answer", ["no", "yes"], False, "emotion")
    assert data.texts == ["i feel happy", "i hate"] and data.texts2 == ["joy", "anger"] and data.rows == [2, 4]


def test_pairs_with_boost_multi_label_and_class_weights(tiny_bert, tmp_path):
    import train
    from boost_cache import text_digest
    assert text_digest("a", "b") != text_digest("a", "c") != text_digest("a")
    names = ["first_is_joy", "second_is_joy"]
    rows = []
    for i, (text, name) in enumerate(make_rows(60)):
        other = " ".join(WORDS[NAMES[(i // 3) % 3]][:2])
        labels = [n for n, t in zip(names, (text, other)) if any(w in t for w in WORDS["joy"])]
        rows.append((text, other, ",".join(labels) or "first_is_joy"))
    classes = write_classes(tmp_path / "c.json", names)
    data = write_csv(tmp_path / "p.csv", rows, header=("a", "b", "labels"))
    save = str(tmp_path / "model")
    args = ["-d", classes, "--train_path", data, "--bert_name", tiny_bert, "--save_path", save, "--n_epochs", "2",
            "--max_length", "32", "--text_col", "a", "--text_col2", "b", "--label_col", "labels",
            "--multi_label", "True", "--class_weights", "balanced", "--bert_finetuning", "False", "--boost", "True"]
    code, out, err = call(train.main, args)
    assert code == 0, err
    assert "--boost: encoded" in out and os.listdir(os.path.join(save, "boost_cache"))
    code, out, err = call(train.main, args)  # the same pairs again: every vector from the cache
    assert code == 0 and "--boost: all" in out, err


def test_bench_pairs_are_balanced_and_ask_about_the_own_emotion_exactly_when_the_answer_is_yes(tmp_path):
    from conftest import ROOT, load_bench
    pairs = load_bench("pairs")
    emotions = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
    dst = str(tmp_path / "p.csv")
    pairs.build_pairs(os.path.join(ROOT, "data", "dev.csv"), dst, 400, 7, emotions)
    with open(os.path.join(ROOT, "data", "dev.csv"), encoding="utf-8", newline="") as f:
        own = {r["sentences"]: r["emotion"] for r in csv.DictReader(f)}
    with open(dst, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 400 and sum(r["answer"] == "yes" for r in rows) == 200
    assert len({r["sentence"] for r in rows}) == 400  # each sentence once: it cannot tell its own answer
    assert all((r["emotion"] == own[r["sentence"]]) == (r["answer"] == "yes") for r in rows)
    assert all(r["emotion"] in emotions for r in rows)
