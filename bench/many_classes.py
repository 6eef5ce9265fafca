"""Peak memory of train.py (training, calibration, report) with thousands of classes.

    python bench/many_classes.py                                  # 1,000 classes, 3,000 rows, embedded checkpoint
    python bench/many_classes.py --classes 5000 --rows 20000 --multi_label True

Rows are real GoEmotions sentences (data/train.csv) with a generated label map of --classes names, each row given
class (row number mod --classes), or with --multi_label two of them; one epoch, validation split 0.2. Prints the
whole process's peak resident memory and where the report's figures went.
"""
import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, load_average, read_column


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--rows", type=int, default=3000)
    p.add_argument("--multi_label", default="False")
    p.add_argument("--workdir", default="")
    args, train_flags = p.parse_known_args(argv)
    work = args.workdir or tempfile.mkdtemp(prefix="bench_classes_")
    os.makedirs(work, exist_ok=True)
    names = [f"class{i:05d}" for i in range(args.classes)]
    with open(os.path.join(work, "classes.json"), "w", encoding="utf-8") as f:
        json.dump({n: i for i, n in enumerate(names)}, f)
    texts = read_column(os.path.join(ROOT, "data", "train.csv"), "sentences")
    multi = args.multi_label == "True"
    with open(os.path.join(work, "train.csv"), "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentences", "emotion"])
        for i in range(args.rows):
            label = names[i % args.classes] + (f",{names[(i * 7 + 1) % args.classes]}" if multi else "")
            writer.writerow([texts[i % len(texts)], label])
    started = time.perf_counter()
    done = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "-d", os.path.join(work, "classes.json"),
                           "--train_path", os.path.join(work, "train.csv"), "--save_path", os.path.join(work, "model"),
                           "--n_epochs", "1", "--valid_frac", "0.2", "--multi_label", args.multi_label,
                           "--log_every", "1000", *train_flags], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        return done.returncode
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    report = os.path.join(work, "model", "report")
    print(f"{args.classes} classes, {args.rows} rows, multi-label {multi}: exit 0 in {seconds:.0f}s, "
          f"peak RSS {peak:.0f} MB (load {load_average()}); confusion_matrix.png "
          f"{os.path.getsize(os.path.join(report, 'confusion_matrix.png')) / 1e3:.0f} kB, confusion_matrix.tsv "
          f"{os.path.getsize(os.path.join(report, 'confusion_matrix.tsv')) / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
