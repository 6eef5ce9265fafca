"""Long documents whose label lies past what truncation reads: --long_text truncate against windows.

    python bench/long_documents.py                        # 1,800 training documents, 600 dev, max_length 64
    python bench/long_documents.py --max_length 128 --only windows --seed 1

Each document is made of real GoEmotions sentences (the shipped data/train.csv for training documents,
data/dev.csv for dev ones): neutral rows as filler, and one emotional row, whose Ekman class is the document's
label, at a random place past the first --max_length words (so past the first --max_length tokens: every word is
at least one WordPiece token). The six emotions are drawn equally often, so the majority class is 1/6. Contenders:
  truncate   train.py with its defaults (--long_text truncate): it reads the first --max_length tokens, filler only
  windows    train.py --long_text windows --stride 16 (mean of the windows' logits), the rest as above
  windows_max  the same with --window_pool max (the max of the windows' logits)
All train 3 epochs at --max_length with --lr_main 5e-5 on the same documents and are scored on the dev documents by
their best epoch. Why 5e-5, not the default 2e-4: a batch holds --batch_size windows, so only a few documents, and
at 2e-4 the windowed model collapsed to one class (accuracy 1/6 after 2 epochs, measured); --lr_main is a flag.
"""
import argparse
import csv
import json
import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, load_average, print_table, run_child, save_result, set_threads, train_best_epoch

DEFAULT_VARIANTS = ("truncate", "windows", "windows_max")
EMOTIONS = ["anger", "disgust", "fear", "joy", "sadness", "surprise"]
EXTRA_FLAGS = {"truncate": [], "windows": ["--long_text", "windows", "--stride", "16"],
               "windows_max": ["--long_text", "windows", "--stride", "16", "--window_pool", "max"]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train_docs", type=int, default=1800)
    p.add_argument("--dev_docs", type=int, default=600)
    p.add_argument("--max_length", type=int, default=64)
    p.add_argument("--n_epochs", type=int, default=3)
    p.add_argument("--lr_main", default="5e-5", help="encoder learning rate of every contender")
    p.add_argument("--seed", type=int, default=42, help="seed of the documents and of every contender")
    p.add_argument("--only", default=",".join(DEFAULT_VARIANTS), help="comma-separated contenders to run")
    p.add_argument("--threads", type=int, default=0, help="CPU threads of every contender (0 = one per core)")
    p.add_argument("--workdir", default="", help="folder for the documents, logs and results (default: a temp dir)")
    p.add_argument("--variant", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def build_documents(src: str, dst: str, n: int, seed: int, prefix_words: int) -> None:
    """n (document, emotion) rows from the (sentences, emotion) CSV `src`: neutral sentences until at least
    `prefix_words` words (drawn between 1x and 2x), one sentence of the document's emotion (the six in turn),
    then zero to three more neutral sentences."""
    with open(src, encoding="utf-8", newline="") as f:
        rows = [(r["sentences"], r["emotion"]) for r in csv.DictReader(f)]
    neutral = [s for s, e in rows if e == "neutral"]
    by_emotion = {e: [s for s, label in rows if label == e] for e in EMOTIONS}
    rng = random.Random(seed)
    documents = []
    for i in range(n):
        emotion = EMOTIONS[i % len(EMOTIONS)]
        target, words, parts = rng.randint(prefix_words, 2 * prefix_words), 0, []
        while words < target:
            parts.append(rng.choice(neutral))
            words += len(parts[-1].split())
        parts.append(rng.choice(by_emotion[emotion]))
        parts += [rng.choice(neutral) for _ in range(rng.randint(0, 3))]
        documents.append((" ".join(parts), emotion))
    rng.shuffle(documents)
    with open(dst, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["document", "emotion"])
        writer.writerows(documents)


def run_ours(args, variant: str) -> dict:
    set_threads(args.threads)
    save = os.path.join(args.workdir, f"model_{variant}")
    argv = ["-d", os.path.join(args.workdir, "emotions.json"), "--train_path", os.path.join(args.workdir, "train.csv"),
            "--valid_path", os.path.join(args.workdir, "dev.csv"), "--text_col", "document", "--label_col", "emotion",
            "--max_length", str(args.max_length), "--n_epochs", str(args.n_epochs), "--seed", str(args.seed),
            "--lr_main", args.lr_main, "--save_path", save, "--tensorboard", "False", *EXTRA_FLAGS[variant]]
    best, seconds = train_best_epoch(argv, save)
    return {"variant": variant, "valid_accuracy": best["valid_accuracy"], "valid_macro_f1": best["valid_macro_f1"],
            "seconds": seconds, "samples_per_s": best["train_samples_per_s"]}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.variant:
        save_result(args.workdir, args.variant, run_ours(args, args.variant))
        return 0
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench_long_")
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "emotions.json"), "w", encoding="utf-8") as f:
        json.dump({e: i for i, e in enumerate(EMOTIONS)}, f)
    build_documents(os.path.join(ROOT, "data", "train.csv"), os.path.join(args.workdir, "train.csv"), args.train_docs,
                    args.seed, args.max_length)
    build_documents(os.path.join(ROOT, "data", "dev.csv"), os.path.join(args.workdir, "dev.csv"), args.dev_docs,
                    args.seed + 1, args.max_length)
    print(f"{args.train_docs} training and {args.dev_docs} dev documents in {args.workdir}, label past the first "
          f"{args.max_length} words; load average {load_average()}")
    extra = ["--max_length", str(args.max_length), "--n_epochs", str(args.n_epochs), "--seed", str(args.seed),
             "--threads", str(args.threads), "--lr_main", args.lr_main]
    results = [run_child(__file__, variant, args.workdir, extra) for variant in args.only.split(",")]
    print(f"long documents, max_length {args.max_length}, {args.n_epochs} epoch(s), lr_main {args.lr_main}; "
          "majority class = 1/6")
    print_table(["contender", "dev accuracy", "dev macro-F1", "train samples/s", "wall s", "peak RSS MB"],
                [[r["variant"], f"{r['valid_accuracy']:.4f}", f"{r['valid_macro_f1']:.4f}",
                  f"{r['samples_per_s']:.1f}", f"{r['wall_s']:.0f}", f"{r['peak_rss_mb']:.0f}"] for r in results])
    return 0


if __name__ == "__main__":
    sys.exit(main())
