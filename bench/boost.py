"""Frozen-encoder training with and without the --boost sentence-vector cache, in one run.

    python bench/boost.py                          # 2,000 training rows, 500 validation rows, 3 epochs (~2 min)
    python bench/boost.py --rows 8000 --n_epochs 5

Contenders, each train.py with --bert_finetuning False on the same rows (precision auto):
  frozen       no cache: every epoch runs the encoder forward over the training and validation rows
  boost        --boost True, empty cache: the vectors are computed once (counted in epoch 1), then epochs train
               the head on the stored vectors
  boost_again  --boost True again in the same save_path: every vector comes from the cache on disk
An epoch's seconds are those of train_one_epoch plus evaluate (timed around engine's functions); the encoding of
the cache is added to the first epoch. The ratio compares the mean of epochs 2..n.
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, load_average, print_table, run_child, save_result, set_threads, write_slice


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=2000, help="training rows (first rows of data/train.csv)")
    p.add_argument("--valid_rows", type=int, default=500, help="validation rows (first rows of data/dev.csv)")
    p.add_argument("--n_epochs", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="CPU threads of every contender (0 = one per core); "
                   "on a machine shared with other jobs, 1 avoids OpenMP threads waiting on each other")
    p.add_argument("--workdir", default="")
    p.add_argument("--variant", default="", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run_variant(args, variant: str) -> dict:
    """train.py in this process, with engine's epoch and evaluation functions timed."""
    import boost_cache
    import engine
    import train
    seconds = {"train_one_epoch": [], "evaluate": [], "cached_sentence_vectors": []}

    def timed(fn):
        def wrapper(*a, **k):
            started = time.perf_counter()
            out = fn(*a, **k)
            seconds[fn.__name__].append(time.perf_counter() - started)
            return out
        return wrapper
    # train.py calls these through their modules (engine.train_one_epoch) or imports them when called, so patching
    # the modules suffices
    for module, name in ((engine, "train_one_epoch"), (engine, "evaluate"), (boost_cache, "cached_sentence_vectors")):
        setattr(module, name, timed(getattr(module, name)))
    save = os.path.join(args.workdir, "model_frozen" if variant == "frozen" else "model_boost")
    argv = ["-d", os.path.join(ROOT, "classes.json"), "-p", "False", "--bert_finetuning", "False",
            "--train_path", os.path.join(args.workdir, "train.csv"),
            "--valid_path", os.path.join(args.workdir, "valid.csv"), "--n_epochs", str(args.n_epochs),
            "--save_path", save, "--log_every", "1000", "--boost", str(variant != "frozen")]
    started = time.perf_counter()
    assert train.main(argv) == 0
    epochs = [t + e for t, e in zip(seconds["train_one_epoch"], seconds["evaluate"])]
    epochs[0] += sum(seconds["cached_sentence_vectors"])
    return {"epochs": epochs, "encode_s": sum(seconds["cached_sentence_vectors"]),
            "run_s": time.perf_counter() - started}


def main(argv=None) -> int:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    if args.variant:
        save_result(args.workdir, args.variant, run_variant(args, args.variant))
        return 0
    if args.n_epochs < 2:
        raise SystemExit("--n_epochs must be at least 2: the ratio compares the epochs after the first")
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="bench_boost_")
    os.makedirs(args.workdir, exist_ok=True)
    write_slice(os.path.join(ROOT, "data", "train.csv"), os.path.join(args.workdir, "train.csv"), 0, args.rows)
    write_slice(os.path.join(ROOT, "data", "dev.csv"), os.path.join(args.workdir, "valid.csv"), 0, args.valid_rows)
    print(f"boost: {args.rows} training rows, {args.valid_rows} validation rows, {args.n_epochs} epochs, "
          f"encoder frozen, {threads} CPU thread(s); workdir {args.workdir}; load before: {load_average()}", flush=True)
    extra = ["--threads", str(args.threads), "--rows", str(args.rows), "--valid_rows", str(args.valid_rows),
             "--n_epochs", str(args.n_epochs)]
    results = {v: run_child(os.path.abspath(__file__), v, args.workdir, extra)
               for v in ("frozen", "boost", "boost_again")}

    def later(v):
        return sum(results[v]["epochs"][1:]) / (len(results[v]["epochs"]) - 1)
    rows = []
    for v, r in results.items():
        rows.append([v, f"{r['encode_s']:.2f}", f"{r['epochs'][0]:.2f}", f"{later(v):.3f}",
                     f"{later('frozen') / later(v):.0f}x", f"{r['run_s']:.1f}", f"{r['peak_rss_mb']:.0f}"])
    print(f"load after: {load_average()}")
    print_table(["contender", "encoding s", "epoch 1 s", "epochs 2.. s (mean)", "epochs 2.. vs frozen",
                 "train.py total s", "peak RSS MB"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
