"""Two tasks on one encoder against two single-task models: Ekman's 7 emotions and the sentiment groups.

    python bench/multitask.py                          # 4,000 training rows, the whole dev split, 1 epoch
    python bench/multitask.py --train_rows 8000 --n_epochs 2 --only both

The rows are GoEmotions comments with one Ekman label (as data/train.csv keeps them), each also labelled with its
sentiment group (ambiguous, negative, neutral, positive) from ../shared/data/goemotions/group, joined by comment id.
Contenders, all train.py with its defaults on the same rows and seed:
  emotion     --label_col emotion -d emotion.json
  sentiment   --label_col sentiment -d sentiment.json
  both        --label_col emotion,sentiment -d emotion.json,sentiment.json (one encoder, two heads)
Each is scored on the dev rows by its best epoch; the table gives each task's macro-F1 and the training time.
"""
import argparse
import csv
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from accuracy import read_names  # noqa: E402
from common import ROOT, load_average, print_table, run_child, save_result, set_threads, train_best_epoch

DEFAULT_VARIANTS = ("emotion", "sentiment", "both")
GOEMOTIONS = os.path.join(ROOT, "..", "shared", "data", "goemotions")
TASKS = {"emotion": ["emotion"], "sentiment": ["sentiment"], "both": ["emotion", "sentiment"]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train_rows", type=int, default=4000)
    p.add_argument("--n_epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--goemotions", default=GOEMOTIONS, help="folder with ekman/ and group/ (train.tsv, dev.tsv)")
    p.add_argument("--only", default=",".join(DEFAULT_VARIANTS), help="comma-separated contenders to run")
    p.add_argument("--threads", type=int, default=0, help="CPU threads of every contender (0 = one per core)")
    p.add_argument("--workdir", default="", help="folder for the data, logs and results (default: a temp dir)")
    p.add_argument("--variant", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def read_split(folder: str, split: str) -> dict:
    """comment id -> (text, label ids as written) of one taxonomy's split."""
    with open(os.path.join(folder, f"{split}.tsv"), encoding="utf-8", newline="") as f:
        return {r[2]: (r[0], r[1]) for r in csv.reader(f, delimiter="\t")}


def build_rows(goemotions: str, split: str, dst: str, limit: int = 0) -> int:
    """(sentences, emotion, sentiment) rows of comments with exactly one Ekman label and one sentiment group."""
    ekman, group = read_split(os.path.join(goemotions, "ekman"), split), read_split(
        os.path.join(goemotions, "group"), split)
    emotions, sentiments = read_names(os.path.join(goemotions, "ekman")), read_names(os.path.join(goemotions, "group"))
    rows = [(text, emotions[int(e)], sentiments[int(group[cid][1])]) for cid, (text, e) in ekman.items()
            if "," not in e and cid in group and "," not in group[cid][1]]
    rows = rows[:limit] if limit else rows
    with open(dst, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentences", "emotion", "sentiment"])
        writer.writerows(rows)
    return len(rows)


def run_ours(args, variant: str) -> dict:
    set_threads(args.threads)
    tasks = TASKS[variant]
    save = os.path.join(args.workdir, f"model_{variant}")
    label_maps = ",".join(os.path.join(args.workdir, f"labels_{t}.json") for t in tasks)
    argv = ["-d", label_maps, "--label_col", ",".join(tasks),
            "--train_path", os.path.join(args.workdir, "train.csv"), "--valid_path",
            os.path.join(args.workdir, "dev.csv"), "--n_epochs", str(args.n_epochs), "--seed", str(args.seed),
            "--save_path", save, "--tensorboard", "False"]
    best, seconds = train_best_epoch(argv, save)
    prefix = (lambda t: f"valid_{t}_") if len(tasks) > 1 else (lambda t: "valid_")
    return {"variant": variant, "seconds": seconds, **{f"{t}_macro_f1": best[prefix(t) + "macro_f1"] for t in tasks},
            **{f"{t}_accuracy": best[prefix(t) + "accuracy"] for t in tasks}}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.variant:
        save_result(args.workdir, args.variant, run_ours(args, args.variant))
        return 0
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench_multitask_")
    os.makedirs(args.workdir, exist_ok=True)
    for task, folder in (("emotion", "ekman"), ("sentiment", "group")):
        with open(os.path.join(args.workdir, f"labels_{task}.json"), "w", encoding="utf-8") as f:
            json.dump({n: i for i, n in enumerate(read_names(os.path.join(args.goemotions, folder)))}, f)
    n_train = build_rows(args.goemotions, "train", os.path.join(args.workdir, "train.csv"), args.train_rows)
    n_dev = build_rows(args.goemotions, "dev", os.path.join(args.workdir, "dev.csv"))
    print(f"{n_train} training rows, {n_dev} dev rows in {args.workdir}; load average {load_average()}")
    extra = ["--train_rows", str(args.train_rows), "--n_epochs", str(args.n_epochs), "--seed", str(args.seed),
             "--threads", str(args.threads), "--goemotions", args.goemotions]
    results = [run_child(__file__, variant, args.workdir, extra) for variant in args.only.split(",")]
    cell = lambda r, key: f"{r[key]:.4f}" if key in r else "-"
    print(f"two tasks on one encoder, {n_train} rows, {args.n_epochs} epoch(s), dev {n_dev} rows")
    print_table(["contender", "emotion macro-F1", "emotion accuracy", "sentiment macro-F1", "sentiment accuracy",
                 "train.py wall s"],
                [[r["variant"], cell(r, "emotion_macro_f1"), cell(r, "emotion_accuracy"),
                  cell(r, "sentiment_macro_f1"), cell(r, "sentiment_accuracy"), f"{r['seconds']:.0f}"]
                 for r in results])
    return 0


if __name__ == "__main__":
    sys.exit(main())
