"""Rebuild data/train.csv and data/dev.csv from GoEmotions (Demszky et al. 2020, CC BY 4.0).

Keeps the rows with exactly one label in Ekman's taxonomy and writes them with the project's default
columns `sentences` and `emotion` (the class name). Usage:
    python data/make_goemotions_csv.py ../shared/data/goemotions/ekman
"""
import csv
import json
import os
import sys


def convert(src_dir: str, split: str, out_path: str, names: list) -> int:
    with open(os.path.join(src_dir, f"{split}.tsv"), encoding="utf-8", newline="") as f:
        rows = [r for r in csv.reader(f, delimiter="\t") if "," not in r[1]]
    tmp = out_path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentences", "emotion"])
        writer.writerows([text, names[int(label)]] for text, label, _ in rows)
    os.replace(tmp, out_path)
    return len(rows)


if __name__ == "__main__":
    src = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/goemotions/ekman"
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(src, "labels.txt"), encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    for split in ("train", "dev"):
        n = convert(src, split, os.path.join(here, f"{split}.csv"), names)
        print(f"{split}: {n} single-label rows")
    with open(os.path.join(here, "..", "classes.json"), "w", encoding="utf-8") as f:
        json.dump({name: i for i, name in enumerate(names)}, f, indent=2)
        f.write("\n")
