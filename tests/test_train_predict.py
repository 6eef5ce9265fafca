"""train.py and predict.py end to end on a tiny random BERT, and the model pieces they rely on."""
import csv
import json
import os

import pytest
import torch

import predict
import train
from conftest import NAMES, call, make_rows, write_classes, write_csv


def read_predictions(path):
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_train_then_predict_folder(tiny_task):
    code, out, err = call(train.main, tiny_task["args"])
    assert code == 0, err
    assert "done: best epoch" in out and "samples/s" in out and "tokens/s" in out
    save = tiny_task["save"]
    for name in ("model.safetensors", "config.json", "train_config.json", "classes.json", "metrics.json",
                 "manifest.json", "tokenizer/tokenizer.json"):
        assert os.path.exists(os.path.join(save, name)), name
    metrics = json.load(open(os.path.join(save, "metrics.json")))
    assert len(metrics["epochs"]) == 2 and metrics["best_epoch"] in (1, 2)
    assert {"valid_loss", "valid_accuracy", "valid_macro_f1", "train_loss"} <= set(metrics["epochs"][0])
    saved_cfg = json.load(open(os.path.join(save, "train_config.json")))
    assert saved_cfg["max_length"] == 32 and saved_cfg["n_epochs"] == 2

    out_dir = str(tiny_task["dir"] / "preds")
    code, out, err = call(predict.main, ["-f", tiny_task["inputs"], "-d", tiny_task["classes"], "-p", "False",
                                         "--save_path", save, "--out_dir", out_dir])
    assert code == 0, err
    assert "sentences/s" in out
    assert sorted(n for n in os.listdir(out_dir) if n.endswith(".csv")) == ["a.csv", "b.csv"]
    expected_texts = {"a.csv": [t for t, _ in make_rows(12, seed=1)], "b.csv": [t for t, _ in make_rows(7, seed=2)]}
    for name, texts in expected_texts.items():
        rows = read_predictions(os.path.join(out_dir, name))
        assert list(rows[0]) == ["sentences", "label", *NAMES]
        assert [r["sentences"] for r in rows] == texts  # input order kept
        for r in rows:
            probs = [float(r[n]) for n in NAMES]
            assert abs(sum(probs) - 1) < 1e-4
            assert r["label"] == NAMES[max(range(len(NAMES)), key=probs.__getitem__)]


def test_trained_tiny_model_learns_the_task(tiny_task):
    args = tiny_task["args"] + ["--n_epochs", "4"]
    code, out, err = call(train.main, args)
    assert code == 0, err
    best = json.load(open(os.path.join(tiny_task["save"], "metrics.json")))
    accuracy = max(e["valid_accuracy"] for e in best["epochs"])
    assert accuracy > 0.6, out  # three balanced classes: chance is 0.33


def test_predict_refuses_a_different_label_map(tiny_task, tmp_path):
    assert call(train.main, tiny_task["args"] + ["--n_epochs", "1"])[0] == 0
    other = write_classes(tmp_path / "other.json", ["joy", "anger", "sadness"])
    code, out, err = call(predict.main, ["-f", tiny_task["inputs"], "-d", other, "--save_path", tiny_task["save"],
                                         "--out_dir", str(tmp_path / "p")])
    assert code == 2
    assert "differs from the one the model was trained with" in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "p")


def test_predict_takes_model_settings_from_the_training_run(tiny_task, tmp_path):
    train_csv = write_csv(tmp_path / "t.csv", make_rows(60), header=("text", "target"))
    args = tiny_task["args"] + ["--train_path", train_csv, "--text_col", "text", "--label_col", "target",
                                "--n_epochs", "1", "--max_length", "12"]
    assert call(train.main, args)[0] == 0
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_csv(inputs / "x.csv", [("i feel happy",), ("so sad",)], header=("text",))
    code, out, err = call(predict.main, ["-f", str(inputs), "-d", tiny_task["classes"],
                                         "--save_path", tiny_task["save"], "--out_dir", str(tmp_path / "p")])
    assert code == 0, err
    assert list(read_predictions(tmp_path / "p" / "x.csv")[0])[0] == "text"


def test_valid_path_is_used_instead_of_a_split(tiny_task, tmp_path):
    valid = write_csv(tmp_path / "valid.csv", make_rows(21, seed=5))
    code, out, err = call(train.main, tiny_task["args"] + ["--valid_path", valid, "--n_epochs", "1"])
    assert code == 0, err
    assert "train 90 rows, validation 21 rows" in out


def test_labels_may_be_ids_or_names(tiny_task, tmp_path):
    rows = [(t, str(NAMES.index(n)) if i % 2 else n) for i, (t, n) in enumerate(make_rows(60))]
    path = write_csv(tmp_path / "mixed.csv", rows)
    code, out, err = call(train.main, tiny_task["args"] + ["--train_path", path, "--n_epochs", "1"])
    assert code == 0, err


def test_p_true_without_gpus_says_so_and_trains(tiny_task):
    args = [a if a != "False" else "True" for a in tiny_task["args"]] + ["--n_epochs", "1"]
    assert "-p" in args and args[args.index("-p") + 1] == "True"
    code, out, err = call(train.main, args)
    assert code == 0, err
    assert "-p True: 0 GPU(s) on this machine, training in one process on cpu" in out


def test_frozen_encoder_keeps_its_weights_and_boost_caches_vectors(tiny_task, tiny_bert):
    from safetensors.torch import load_file
    args = tiny_task["args"] + ["--bert_finetuning", "False", "--boost", "True", "--n_epochs", "2"]
    code, out, err = call(train.main, args)
    assert code == 0, err
    saved = load_file(os.path.join(tiny_task["save"], "model.safetensors"))
    original = load_file(os.path.join(tiny_bert, "model.safetensors"))
    for key, value in original.items():
        assert torch.equal(saved["encoder." + key], value), key
    cache = os.listdir(os.path.join(tiny_task["save"], "boost_cache"))
    assert len(cache) == 1 and cache[0].endswith(".safetensors")
    code, out, err = call(train.main, args)  # second run: every vector from the cache
    assert code == 0 and "from the cache" in out and "encoded 0" not in out


@pytest.mark.parametrize("freeze", ["True", "False"])
def test_word_embeddings_stay_pretrained_unless_asked_to_train(tiny_task, tiny_bert, freeze):
    from safetensors.torch import load_file
    code, out, err = call(train.main, tiny_task["args"] + ["--freeze_word_embeddings", freeze, "--n_epochs", "1"])
    assert code == 0, err
    saved = load_file(os.path.join(tiny_task["save"], "model.safetensors"))
    original = load_file(os.path.join(tiny_bert, "model.safetensors"))
    words = "embeddings.word_embeddings.weight"
    assert torch.equal(saved["encoder." + words], original[words]) == (freeze == "True")
    for trained_anyway in ("embeddings.position_embeddings.weight", "embeddings.LayerNorm.weight",
                           "encoder.layer.0.attention.self.query.weight"):
        assert (saved["encoder." + trained_anyway] - original[trained_anyway]).abs().max() > 1e-4, trained_anyway


def test_boost_needs_a_frozen_encoder(tiny_task):
    code, out, err = call(train.main, tiny_task["args"] + ["--boost", "True"])
    assert code == 2 and "--boost True needs --bert_finetuning False" in err


def test_help_names_every_seed_option():
    from config import build_parser
    text = build_parser("train.py", ("train", "both"), "").format_help()
    for option in ("--train_path", "--valid_path", "--max_length", "--save_path", "--bert_name", "--bert_finetuning",
                   "--dropout_p", "--boost", "--n_epochs", "--lr ", "--lr_main", "--early_stop", "--batch_size",
                   "--gradient_accumulation_steps", "-d", "-p", "--seed", "--warmup_ratio", "--weight_decay",
                   "--max_grad_norm", "--metric", "--device", "--pooling", "--text_col", "--label_col",
                   "--valid_frac"):
        assert option in text, option


@pytest.mark.parametrize("value,expected", [("True", True), ("False", False), ("true", True), ("0", False)])
def test_booleans_are_written_as_the_seeds_write_them(value, expected):
    assert train.parse_config(["--bert_finetuning", value]).bert_finetuning is expected


def test_a_bad_boolean_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        train.parse_config(["-p", "maybe"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "expected True or False" in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------- model
@pytest.mark.parametrize("pooling", ["cls", "pooler", "mean", "max", "cls_last4"])
def test_every_pooling_gives_logits_and_ignores_padding(tiny_bert, pooling):
    from transformers import BertConfig, BertModel

    from model import BertClassifier
    torch.manual_seed(0)
    encoder = BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=64))
    model = BertClassifier(encoder, 3, pooling, 0.0).eval()
    ids = torch.tensor([[101, 7592, 2088, 102, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    with torch.inference_mode():
        padded = model(input_ids=ids, attention_mask=mask)
        alone = model(input_ids=ids[:, :4], attention_mask=mask[:, :4])
    assert padded.shape == (1, 3)
    assert torch.allclose(padded, alone, atol=1e-5)
    hidden = model.encoder.config.hidden_size
    assert model.n_features == (4 * hidden if pooling == "cls_last4" else hidden)


def test_cls_last4_needs_four_layers(tiny_bert):
    from config import InputError
    from model import BertClassifier, load_pretrained_encoder
    with pytest.raises(InputError, match="needs at least 4"):
        BertClassifier(load_pretrained_encoder(tiny_bert), 3, "cls_last4")


def test_head_size_comes_from_the_encoder_config(tiny_bert):
    from model import BertClassifier, load_pretrained_encoder
    model = BertClassifier(load_pretrained_encoder(tiny_bert), 5)
    assert model.classifier.in_features == 32 and model.classifier.out_features == 5


def test_optimizer_groups_encoder_and_head_learning_rates(tiny_bert):
    from engine import build_optimizer
    from model import BertClassifier, load_pretrained_encoder
    model = BertClassifier(load_pretrained_encoder(tiny_bert), 3)
    optimizer = build_optimizer(model, lr_main=1e-5, lr_head=1e-3, weight_decay=0.1, device=torch.device("cpu"))
    head = {id(p) for p in model.classifier.parameters()}
    for group in optimizer.param_groups:
        is_head = all(id(p) in head for p in group["params"])
        assert group["lr"] == (1e-3 if is_head else 1e-5)
        if any(p.ndim == 1 for p in group["params"]):
            assert group["weight_decay"] == 0.0  # biases and LayerNorm


def test_gradient_accumulation_matches_one_large_batch(tiny_bert):
    """Two micro-batches of 4 accumulated give the update of one batch of 8 (dropout off, fp32)."""
    from dataset import Collator
    from engine import build_optimizer, build_scheduler, train_one_epoch
    from runlog import EpochLog
    from runtime import Run
    from model import BertClassifier, load_pretrained_encoder
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    rows = make_rows(8)
    ids = tok([t for t, _ in rows], truncation=True, max_length=16)["input_ids"]
    items = [{"index": i, "input_ids": ids[i], "labels": NAMES.index(rows[i][1])} for i in range(8)]
    collate = Collator(0, 3)
    weights = []
    for batches in ([items], [items[:4], items[4:]]):
        torch.manual_seed(0)
        encoder = load_pretrained_encoder(tiny_bert)
        encoder.config.hidden_dropout_prob = 0
        model = BertClassifier(encoder, 3, "cls", 0.0)
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        optimizer = build_optimizer(model, 1e-3, 1e-3, 0.0, torch.device("cpu"))
        scheduler = build_scheduler(optimizer, 0, 10)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        loader = [collate(b) for b in batches]
        train_one_epoch(model, loader, optimizer, scheduler, scaler, torch.nn.CrossEntropyLoss(),
                        Run(torch.device("cpu")), len(batches), 0.0, EpochLog(Run(torch.device("cpu")), 100))
        weights.append(model.classifier.weight.detach().clone())
    assert torch.allclose(weights[0], weights[1], atol=1e-5)


def test_the_closing_line_says_where_the_time_went(tmp_path, tiny_bert):
    import re

    from conftest import train_tiny
    _, _, out = train_tiny(tmp_path, tiny_bert, 40, 2)
    line = next(l for l in out.splitlines() if l.startswith("time: "))
    total = float(re.match(r"time: ([\d.]+)s in all: ", line).group(1))
    parts = dict((name, float(s)) for name, s in re.findall(r"([a-z][a-z -]+?) ([\d.]+)s \(\d+%\)", line))
    assert {"read and check data", "load the model", "tokenise", "set up training", "train", "validate", "save",
            "calibrate and report"} <= set(parts), line
    assert abs(sum(parts.values()) - total) <= 0.1 * len(parts) + 0.05, line  # the parts add up (rounding)
