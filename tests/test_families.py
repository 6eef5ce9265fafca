"""Every checkpoint family of seed 003 (and ModernBERT, DeBERTa-v2, a Llama-style decoder), as tiny random models.

For each family, through the same code train.py and predict.py run: (a) in eval mode our sentence vector is the
plain AutoModel forward at the pooled position; (b) a few training steps lower the loss; (c) different sentences
get different probabilities; (d) the model saved and loaded by predict.py gives the same probabilities.
"""
import csv
import json
import os

import pytest
import torch

from conftest import DECODERS, FAMILIES, NAMES, call, make_rows, write_classes, write_csv

SENTENCES = ["i feel happy today", "this makes me so angry", "i miss you and i cry", "great",
             "what a wonderful lovely day it is", "i hate this rage"]
LAST_TOKEN_FAMILIES = ("xlnet", "gpt2", "llama")


def cpu_run():
    from runtime import setup_run
    return setup_run("cpu", "fp32")


def built_model(folder: str, pooling: str = "auto"):
    """(classifier, tokenizer, cfg) exactly as train.py builds them for --bert_name folder."""
    import train
    from config import Config
    cfg = Config(bert_name=folder, max_length=32, pooling=pooling)
    torch.manual_seed(0)
    model, tokenizer, _ = train.build_model(cfg, len(NAMES), cpu_run())
    return model, tokenizer, cfg


def padded_batch(tokenizer, model, texts):
    from dataset import Collator, EncodedDataset, tokenize
    from model import takes_token_types
    ids, types = tokenize(tokenizer, texts, 32, None, takes_token_types(model.encoder, tokenizer))
    dataset = EncodedDataset(ids, token_type_ids=types)
    return Collator(tokenizer.pad_token_id)([dataset[i] for i in range(len(ids))])


def mean_loss(model, batch, labels) -> float:
    with torch.no_grad():
        return torch.nn.functional.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), labels).item()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_pools_trains_and_predicts_what_it_saved(family, tiny_family, tmp_path):
    from transformers import AutoModel

    import predict
    from checkpoint import save_model
    from model import last_real_token
    folder = tiny_family(family)
    model, tokenizer, cfg = built_model(folder)
    assert model.pooling == ("last" if family in LAST_TOKEN_FAMILIES else "cls")
    batch = padded_batch(tokenizer, model, SENTENCES)
    assert batch["attention_mask"].sum(1).unique().numel() > 2  # lengths differ: padding is exercised

    # (a) the sentence vector is the plain forward of the same weights at the pooled position
    reference = AutoModel.from_pretrained(folder).eval()
    model.eval()
    with torch.no_grad():
        ours = model.sentence_vector(batch["input_ids"], batch["attention_mask"])
        hidden = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    position = last_real_token(batch["attention_mask"]) if model.pooling == "last" else torch.zeros(len(SENTENCES),
                                                                                                    dtype=torch.long)
    torch.testing.assert_close(ours, hidden[torch.arange(len(SENTENCES)), position], atol=1e-5, rtol=1e-5)

    # (b) a few training steps, dropout on, lower the loss
    labels = torch.tensor([1, 0, 2, 1, 1, 0])
    before = mean_loss(model, batch, labels)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for _ in range(15):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(batch["input_ids"], batch["attention_mask"]), labels).backward()
        optimizer.step()
    model.eval()
    assert mean_loss(model, batch, labels) < before * 0.8

    # (c) different sentences, different probabilities
    probs = predict.predict_probabilities(model, tokenizer, SENTENCES, 32, 4, cpu_run(), False)
    assert (probs.max(0) - probs.min(0)).max() > 1e-3

    # (d) saved, loaded by predict.py: the same probabilities
    save, out, inputs = str(tmp_path / "model"), tmp_path / "preds", tmp_path / "inputs"
    inputs.mkdir()
    write_csv(inputs / "s.csv", [(t,) for t in SENTENCES], header=("sentences",))
    save_model(save, model, tokenizer, cfg, NAMES, {"temperature": 1.0})
    code, _, err = call(predict.main, ["-f", str(inputs), "-d", write_classes(tmp_path / "classes.json"),
                                       "--save_path", save, "--out_dir", str(out), "--device", "cpu",
                                       "--precision", "fp32"])
    assert code == 0, err
    with open(out / "s.csv", encoding="utf-8") as f:
        saved = [[float(r[n]) for n in NAMES] for r in csv.DictReader(f)]
    torch.testing.assert_close(torch.tensor(saved), torch.from_numpy(probs), atol=2e-6, rtol=0)


@pytest.mark.parametrize("family", ["bert", "xlnet", "gpt2"])
def test_train_py_says_which_pooling_auto_chose_and_records_it(family, tiny_family, tmp_path):
    import train
    classes = write_classes(tmp_path / "classes.json")
    data = write_csv(tmp_path / "train.csv", make_rows(60))
    save = str(tmp_path / "model")
    code, out, err = call(train.main, ["-d", classes, "--train_path", data, "--bert_name", tiny_family(family),
                                       "--save_path", save, "--n_epochs", "1", "--max_length", "32"])
    assert code == 0, err
    chosen = "last" if family in LAST_TOKEN_FAMILIES else "cls"
    assert f"pooling auto -> {chosen}: " in out
    with open(os.path.join(save, "train_config.json"), encoding="utf-8") as f:
        assert json.load(f)["pooling"] == chosen
    if family in DECODERS:  # no pad token of its own: it pads with its end-of-text token, saved with the model
        with open(os.path.join(save, "tokenizer", "tokenizer_config.json"), encoding="utf-8") as f:
            assert json.load(f)["pad_token"] == "[SEP]"


@pytest.mark.parametrize("pooling", ["cls", "cls_last4", "pooler"])
def test_first_token_pooling_of_a_causal_decoder_is_refused_in_one_line(pooling, tiny_family, tmp_path):
    import train
    classes = write_classes(tmp_path / "classes.json")
    data = write_csv(tmp_path / "train.csv", make_rows(30))
    code, _, err = call(train.main, ["-d", classes, "--train_path", data, "--bert_name", tiny_family("gpt2"),
                                     "--save_path", str(tmp_path / "m"), "--pooling", pooling, "--max_length", "32"])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--pooling {pooling}: GPT2Model is a causal decoder" in err and "--pooling auto" in err


def test_last_and_mean_pooling_of_a_decoder_see_the_whole_sentence(tiny_family):
    for pooling in ("last", "mean"):
        model, tokenizer, _ = built_model(tiny_family("gpt2"), pooling)
        model.eval()
        batch = padded_batch(tokenizer, model, ["i feel happy", "i feel sad"])  # same first tokens, same length
        with torch.no_grad():
            vectors = model.sentence_vector(batch["input_ids"], batch["attention_mask"])
        assert (vectors[0] - vectors[1]).abs().max() > 1e-4


def test_length_limit_of_every_kind_of_checkpoint(tiny_family):
    from model import UNBOUNDED_LENGTH_CAP, load_pretrained_encoder, load_tokenizer, max_supported_length

    def limit(family):
        folder = tiny_family(family)
        return max_supported_length(load_pretrained_encoder(folder), load_tokenizer(folder))
    assert limit("bert") == (64, "its position table")
    assert limit("roberta")[0] == 65  # 66 positions, the first pad_token_id + 1 = 1 of them never used
    assert limit("mpnet")[0] == 66 - 2  # MPNet keeps padding_idx 1 whatever the config says
    assert limit("gpt2")[0] == 64
    assert limit("xlnet") == (min(UNBOUNDED_LENGTH_CAP, 512), "its tokenizer's limit")  # the tokenizer says 512


def test_xlnet_without_any_limit_is_capped_and_says_so(tiny_family):
    from model import UNBOUNDED_LENGTH_CAP, load_pretrained_encoder, load_tokenizer, max_supported_length
    folder = tiny_family("xlnet")
    tokenizer = load_tokenizer(folder)
    tokenizer.model_max_length = int(1e30)  # what a tokenizer saved without a limit reports
    cap, why = max_supported_length(load_pretrained_encoder(folder), tokenizer)
    assert cap == UNBOUNDED_LENGTH_CAP and "no position table" in why


def test_causal_attention_stays_causal_in_training(tiny_family):
    """The fast training attention must keep GPT-2 causal: with dropout on and the same random draws, changing the
    last token changes nothing before it."""
    model, tokenizer, _ = built_model(tiny_family("gpt2"), "last")
    model.train()
    ids = torch.tensor([tokenizer.convert_tokens_to_ids(["i", "feel", "very", "happy"])])
    changed = ids.clone()
    changed[0, -1] = tokenizer.convert_tokens_to_ids("sad")
    mask = torch.ones_like(ids)
    outputs = []
    for x in (ids, changed):
        torch.manual_seed(1)
        outputs.append(model.encoder(input_ids=x, attention_mask=mask).last_hidden_state)
    torch.testing.assert_close(outputs[0][:, :-1], outputs[1][:, :-1])
    assert (outputs[0][:, -1] - outputs[1][:, -1]).abs().max() > 1e-4


def test_the_first_token_shortcut_applies_to_bert_style_stacks_and_leaves_the_rest_alone(tiny_family):
    """first_token_only is proven equal by the family test above wherever it applies; elsewhere it must not touch
    the model (each family's vector then equals the plain forward as well)."""
    from fast_encoder import first_token_only
    from model import load_pretrained_encoder
    applied = {family for family in FAMILIES if first_token_only(load_pretrained_encoder(tiny_family(family)))}
    assert applied == {"bert", "roberta", "xlm-roberta", "electra"}
