"""A real sentence-pair task: "does this sentence express this emotion?", built from GoEmotions' Ekman rows.

    python bench/pairs.py                          # 4,000 training pairs, 1,000 dev pairs, all contenders
    python bench/pairs.py --only pairs,sentence_only --seed 1

Each pair is (sentence, emotion name) from the shipped data/train.csv (training pairs) and data/dev.csv (dev
pairs), drawn with --seed: half of the pairs ask about the sentence's own emotion (answer yes), half about another
emotion drawn at random (answer no). Neither text alone tells the answer: chance is 0.50. Contenders:
  pairs           train.py with its defaults and --text_col sentence --text_col2 emotion
  sentence_only   train.py with its defaults on the sentence alone (what a model without pairs can do)
  trainer_pairs   a plain Hugging Face sequence classifier on the same pairs (BertForSequenceClassification of the
                  embedded checkpoint, the tokenizer's own pair encoding, Trainer, batch 32, lr 5e-5, 1 epoch;
                  bf16 where the CPU has it, as train.py's precision auto: emulated bf16 is many times slower)
Every contender is scored on the dev pairs (accuracy, macro-F1 over yes/no); ours by its best epoch.
"""
import argparse
import csv
import json
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, load_average, print_table, run_child, save_result, set_threads

DEFAULT_VARIANTS = ("pairs", "sentence_only", "trainer_pairs")
ANSWERS = ["no", "yes"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train_pairs", type=int, default=4000)
    p.add_argument("--dev_pairs", type=int, default=1000)
    p.add_argument("--seed", type=int, default=42, help="seed of the pairs and of every contender")
    p.add_argument("--only", default=",".join(DEFAULT_VARIANTS), help="comma-separated contenders to run")
    p.add_argument("--threads", type=int, default=0, help="CPU threads of every contender (0 = one per core)")
    p.add_argument("--workdir", default="", help="folder for the pairs, logs and results (default: a temp dir)")
    p.add_argument("--variant", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def build_pairs(src: str, dst: str, n: int, seed: int, emotions: list) -> None:
    """n (sentence, emotion, answer) rows from the (sentences, emotion) CSV `src`: even rows ask about the
    sentence's own emotion, odd rows about another one drawn at random."""
    with open(src, encoding="utf-8", newline="") as f:
        rows = [(r["sentences"], r["emotion"]) for r in csv.DictReader(f)]
    rng = random.Random(seed)
    pairs = []
    for i, (sentence, own) in enumerate(rng.sample(rows, n)):
        asked = own if i % 2 == 0 else rng.choice([e for e in emotions if e != own])
        pairs.append((sentence, asked, "yes" if asked == own else "no"))
    with open(dst, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence", "emotion", "answer"])
        writer.writerows(pairs)


def run_ours(args, variant: str) -> dict:
    import runtime
    import train
    save = os.path.join(args.workdir, f"model_{variant}")
    argv = ["-d", os.path.join(args.workdir, "answers.json"), "-p", "False", "--train_path",
            os.path.join(args.workdir, "train_pairs.csv"), "--valid_path", os.path.join(args.workdir, "dev_pairs.csv"),
            "--text_col", "sentence", "--label_col", "answer", "--seed", str(args.seed), "--save_path", save,
            "--log_every", "1000"] + (["--text_col2", "emotion"] if variant == "pairs" else [])
    started = time.perf_counter()
    assert train.main(argv) == 0, "train.py failed"
    seconds = time.perf_counter() - started
    with open(os.path.join(save, "metrics.json")) as f:
        metrics = json.load(f)
    best = metrics["epochs"][metrics["best_epoch"] - 1]
    with open(os.path.join(save, "train_config.json")) as f:
        precision = json.load(f)["precision"]
    return {"accuracy": best["valid_accuracy"], "macro_f1": best["valid_macro_f1"], "epochs": len(metrics["epochs"]),
            "samples_s": best["train_samples_per_s"], "train_s": seconds,
            "precision": runtime.pick_precision(precision, runtime.pick_device("cpu"))}


def run_trainer(args, variant: str) -> dict:
    import numpy as np
    import torch
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import (AutoTokenizer, BertForSequenceClassification, DataCollatorWithPadding, Trainer,
                              TrainingArguments, set_seed)

    from config import EMBEDDED_MODEL, resolve_model_path
    from dataset import load_labelled_file
    from model import _quiet_transformers
    from runtime import cpu_has_bf16
    _quiet_transformers()
    bf16 = cpu_has_bf16()
    set_seed(args.seed)
    path = resolve_model_path(EMBEDDED_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(args.seed)
    model = BertForSequenceClassification.from_pretrained(path, num_labels=2)

    def items(name):
        data = load_labelled_file(os.path.join(args.workdir, name), "sentence", "answer", ANSWERS, False, "emotion")
        enc = tokenizer(data.texts, data.texts2, truncation=True, max_length=128)
        return [{"input_ids": i, "token_type_ids": t, "attention_mask": m, "labels": y} for i, t, m, y in
                zip(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"], data.labels)], data.labels
    train_items, _ = items("train_pairs.csv")
    dev_items, dev_labels = items("dev_pairs.csv")
    training_args = TrainingArguments(
        output_dir=os.path.join(args.workdir, "hf"), per_device_train_batch_size=32, learning_rate=5e-5,
        num_train_epochs=1, use_cpu=True, report_to="none", save_strategy="no", seed=args.seed, bf16=bf16)
    trainer = Trainer(model=model, args=training_args, train_dataset=train_items,
                      data_collator=DataCollatorWithPadding(tokenizer))
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    pred = np.asarray(trainer.predict(dev_items).predictions).argmax(axis=1)
    return {"accuracy": float(accuracy_score(dev_labels, pred)),
            "macro_f1": float(f1_score(dev_labels, pred, average="macro")), "epochs": 1,
            "samples_s": len(train_items) / seconds, "train_s": seconds, "precision": "bf16" if bf16 else "fp32"}


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    if args.variant:
        runner = run_trainer if args.variant.startswith("trainer") else run_ours
        save_result(args.workdir, args.variant, runner(args, args.variant))
        return 0
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench_pairs_")
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(ROOT, "classes.json"), encoding="utf-8") as f:
        emotions = list(json.load(f))
    build_pairs(os.path.join(ROOT, "data", "train.csv"), os.path.join(args.workdir, "train_pairs.csv"),
                args.train_pairs, args.seed, emotions)
    build_pairs(os.path.join(ROOT, "data", "dev.csv"), os.path.join(args.workdir, "dev_pairs.csv"),
                args.dev_pairs, args.seed + 1, emotions)
    with open(os.path.join(args.workdir, "answers.json"), "w", encoding="utf-8") as f:
        json.dump({a: i for i, a in enumerate(ANSWERS)}, f)
    print(f"{args.train_pairs} training pairs, {args.dev_pairs} dev pairs (seed {args.seed}), {threads} thread(s), "
          f"load {load_average()}; chance = 0.50", file=sys.stderr)
    extra = ["--seed", str(args.seed), "--threads", str(args.threads)]
    results = {v: run_child(__file__, v, args.workdir, extra) for v in args.only.split(",")}
    print_table(["contender", "dev accuracy", "dev macro-F1", "epochs", "precision", "train samples/s", "wall s"],
                [[v, f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}", r["epochs"], r["precision"],
                  f"{r['samples_s']:.1f}", f"{r['wall_s']:.0f}"] for v, r in results.items()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
