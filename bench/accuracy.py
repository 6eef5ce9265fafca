"""Reproduce the accuracy table of bench/README.md: GoEmotions dev macro-F1 with the embedded checkpoint.

    python bench/accuracy.py                       # every row: 1 epoch each, about 4 min per row on 2 free
                                                   # cores, 48 min when the CPU is shared (bench/README.md)
    python bench/accuracy.py --rows ekman_ml       # one row
    python bench/accuracy.py --convert_only        # only write the CSVs and label maps, print their paths
    python bench/accuracy.py --train_rows 8000 --rows ekman_ml -- --pooling cls_last4  # a subset; flags after --
                                                                                        # go to every train.py

The multi-label rows read the GoEmotions TSVs (text, comma-separated label ids, comment id) from
../shared/data/goemotions/{original,ekman,group} relative to the repository root, convert them to the CSV
format train.py reads (columns sentences,emotion; label ids joined by commas) in a temporary folder, and
train with --valid_path = the dev split. The single-label rows use the shipped data/train.csv and
data/dev.csv. Each row prints its command and wall time; the table is written to bench/results/accuracy.md.
Thresholds (multi-label) and the temperature are tuned on that same dev split, as train.py does with any
--valid_path, so the table also gives macro-F1 at the fixed 0.5 threshold and a 2-fold cross-fitted
estimate (thresholds tuned on one half of dev, scored on the other) that is not optimistic.
"""
import argparse
import csv
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOEMOTIONS = os.path.join(ROOT, "..", "shared", "data", "goemotions")
PYTHON = sys.executable

# One epoch over the 43k rows reached every target (bench/README.md); the other settings are config.py's defaults.
EPOCHS = ["--n_epochs", "1"]
# name -> (taxonomy or None for the shipped single-label data, extra train.py flags, target macro-F1 or None)
ROWS = {
    "ekman_ml": ("ekman", ["--multi_label", "True"], 0.62),
    "original_ml": ("original", ["--multi_label", "True"], 0.46),
    "group_ml": ("group", ["--multi_label", "True"], 0.68),
    "ekman_sl": (None, [], None),
    "ekman_sl_balanced": (None, ["--class_weights", "balanced"], None),
}


def read_names(folder: str) -> list:
    with open(os.path.join(folder, "labels.txt"), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


TAXONOMIES = ("original", "ekman", "group")


def read_tsv_rows(tsv_path: str) -> list:
    """(text, comma-separated label ids) of each row of a GoEmotions TSV, in file order."""
    with open(tsv_path, encoding="utf-8", newline="") as f:
        return [(r[0], r[1]) for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if len(r) >= 2]


def read_rows_of_same_comments(other_path: str, rows: list, rows_name: str) -> list:
    """read_tsv_rows of another taxonomy's TSV of the same split as `rows` (read from the file named rows_name in
    messages); refused unless its rows are the same comments in the same order."""
    other = read_tsv_rows(other_path)
    if [other_row[0] for other_row in other] != [row[0] for row in rows]:
        raise SystemExit(f"{other_path}: its rows are not those of {rows_name}")
    return other


def convert_split(tsv_path: str, csv_path: str, keep: int = 0, seed: int = 0, other_label_tsvs: dict = None) -> int:
    """GoEmotions TSV -> the tool's CSV (sentences, emotion = ids joined by commas); `keep` > 0 samples rows.
    `other_label_tsvs` ({column: the same split's TSV in another taxonomy}, whose rows are the same comments in the
    same order) adds each row's labels there as that column."""
    rows = read_tsv_rows(tsv_path)
    header = ["sentences", "emotion"]
    for column, other_path in (other_label_tsvs or {}).items():
        other = read_rows_of_same_comments(other_path, rows, tsv_path)
        rows = [(*row, labels) for row, (_, labels) in zip(rows, other)]
        header.append(column)
    if 0 < keep < len(rows):  # sample() draws by position only: the same rows with or without other labels
        rows = random.Random(seed).sample(rows, keep)
    with open(csv_path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return len(rows)


def write_label_map(taxonomy: str, path: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        json.dump({name: i for i, name in enumerate(read_names(os.path.join(GOEMOTIONS, taxonomy)))}, f, indent=2)
    return path


def convert_taxonomy(taxonomy: str, out_dir: str, train_rows: int = 0, with_other_taxonomies: bool = False) -> dict:
    """Write train.csv, dev.csv and classes.json of one taxonomy into out_dir; return their paths. With
    `with_other_taxonomies` also train_all.csv and dev_all.csv, the same rows with a column of each other taxonomy's
    labels (named after it; their names in paths["other_taxonomies"]) and their label maps classes_<taxonomy>.json,
    for runs that train on every taxonomy at once."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"train": os.path.join(out_dir, "train.csv"), "dev": os.path.join(out_dir, "dev.csv"),
             "classes": write_label_map(taxonomy, os.path.join(out_dir, "classes.json"))}
    others = [t for t in TAXONOMIES if t != taxonomy] if with_other_taxonomies else []
    for split in ("train", "dev"):
        tsv, keep = os.path.join(GOEMOTIONS, taxonomy, f"{split}.tsv"), train_rows if split == "train" else 0
        convert_split(tsv, paths[split], keep)
        if others:
            paths[f"{split}_all"] = os.path.join(out_dir, f"{split}_all.csv")
            convert_split(tsv, paths[f"{split}_all"], keep,
                          other_label_tsvs={t: os.path.join(GOEMOTIONS, t, f"{split}.tsv") for t in others})
    if others:
        paths["other_taxonomies"] = others
    for other in others:
        paths[f"classes_{other}"] = write_label_map(other, os.path.join(out_dir, f"classes_{other}.json"))
    return paths


def fine_map(taxonomy: str) -> dict:
    """{class of `taxonomy`: [the original 28 classes that belong to it]}, from the labels both taxonomies give the
    same training comments: a fine class belongs to the coarse class present in every row it labels. SystemExit unless
    every row's labels in `taxonomy` are exactly the classes its original labels belong to (GoEmotions' Ekman and
    sentiment groups were made so)."""
    names = {t: read_names(os.path.join(GOEMOTIONS, t)) for t in ("original", taxonomy)}
    rows = {"original": read_tsv_rows(os.path.join(GOEMOTIONS, "original", "train.tsv"))}
    rows[taxonomy] = read_rows_of_same_comments(os.path.join(GOEMOTIONS, taxonomy, "train.tsv"), rows["original"],
                                                "original/train.tsv")
    label_sets = {t: [{names[t][int(i)] for i in labels.split(",")} for _, labels in rows[t]] for t in rows}
    owners = {}
    for fine_labels, coarse_labels in zip(label_sets["original"], label_sets[taxonomy]):
        for fine in fine_labels:
            owners[fine] = owners.get(fine, coarse_labels) & coarse_labels
    for fine in names["original"]:
        if len(owners.get(fine, ())) != 1:
            why = (f"{fine} labels no training row" if fine not in owners else
                   f"no class of it is in every row {fine} labels" if not owners[fine] else
                   f"{', '.join(sorted(owners[fine]))} are all in every row {fine} labels, so it belongs to no one")
            raise SystemExit(f"{taxonomy}: its labels are not a grouping of the original ones: {why}")
    for row, (fine_labels, coarse_labels) in enumerate(zip(label_sets["original"], label_sets[taxonomy]), start=1):
        image = {min(owners[f]) for f in fine_labels}
        if image != coarse_labels:
            raise SystemExit(f"{taxonomy}/train.tsv, row {row}: labelled {', '.join(sorted(coarse_labels))}, but its "
                             f"original labels ({', '.join(sorted(fine_labels))}) belong to {', '.join(sorted(image))}")
    return {coarse: [f for f in names["original"] if owners[f] == {coarse}] for coarse in names[taxonomy]}


def sample_csv(src: str, dst: str, keep: int, seed: int = 0) -> str:
    """The first `keep` rows of a seeded shuffle of a CSV (header kept)."""
    with open(src, encoding="utf-8", newline="") as f:
        header, *rows = list(csv.reader(f))
    rows = random.Random(seed).sample(rows, keep) if 0 < keep < len(rows) else rows
    with open(dst, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return dst


def row_command(name: str, work: str, train_rows: int, extra: list) -> list:
    taxonomy, flags, _ = ROWS[name]
    save = os.path.join(work, f"model_{name}")
    if taxonomy:
        paths = convert_taxonomy(taxonomy, os.path.join(work, taxonomy), train_rows)
    else:
        train = os.path.join(ROOT, "data", "train.csv")
        if train_rows:
            train = sample_csv(train, os.path.join(work, f"train_{train_rows}.csv"), train_rows)
        paths = {"train": train, "dev": os.path.join(ROOT, "data", "dev.csv"),
                 "classes": os.path.join(ROOT, "classes.json")}
    return [PYTHON, os.path.join(ROOT, "train.py"), "-d", paths["classes"], "-p", "False",
            "--train_path", paths["train"], "--valid_path", paths["dev"], "--save_path", save, *EPOCHS, *flags,
            *extra]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--train_rows", type=int, default=0, help="sample this many training rows (0 = all)")
    parser.add_argument("--work_dir", default="", help="folder for CSVs and models (default: a temporary one)")
    parser.add_argument("--convert_only", action="store_true")
    parser.add_argument("--write_fine_map", nargs=2, metavar=("TAXONOMY", "PATH"),
                        help="write the JSON {class: [its original classes]} of ekman or group to PATH, and stop")
    parser.add_argument("extra", nargs="*", help="flags passed to every train.py run (after --)")
    args = parser.parse_args(argv)
    if args.write_fine_map:
        taxonomy, path = args.write_fine_map
        coarse = [t for t in TAXONOMIES if t != "original"]
        if taxonomy not in coarse:
            raise SystemExit(f"--write_fine_map {taxonomy}: the taxonomies grouping the original one are "
                             f"{', '.join(coarse)}")
        grouping = fine_map(taxonomy)  # before opening the file: a refusal leaves an earlier map as it was
        with open(path, "w", encoding="utf-8") as f:
            json.dump(grouping, f, indent=2)
        print(path)
        return 0
    work = args.work_dir or tempfile.mkdtemp(prefix="goemotions_")
    os.makedirs(work, exist_ok=True)
    results = []
    for name in args.rows:
        command = row_command(name, work, args.train_rows, args.extra)
        if args.convert_only:
            print(shlex.join(command))
            continue
        print(f"== {name}: {shlex.join(command)}", flush=True)
        started = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            print(f"{name}: train.py failed with exit code {done.returncode}", file=sys.stderr)
            return 1
        with open(os.path.join(command[command.index("--save_path") + 1], "report", "metrics.json")) as f:
            metrics = json.load(f)
        results.append((name, [a.replace(work, "$WORK").replace(ROOT + os.sep, "") for a in command], wall,
                        metrics))
        print(f"{name}: macro-F1 {metrics['macro_f1']:.4f} in {wall / 60:.1f} min", flush=True)
    if results:
        write_table(results, args)
    return 0


def write_table(results: list, args) -> None:
    lines = ["$WORK = the --work_dir holding the converted CSVs (`python bench/accuracy.py --convert_only` writes them)",
             "", "| row | dev macro-F1 (tuned thresholds) | at 0.5 | cross-fitted | accuracy | target | "
             "ECE before -> after | best epoch | wall time | command |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, command, wall, m in results:
        target = ROWS[name][2]
        lines.append(f"| {name} | {m['macro_f1']:.4f} | {m.get('macro_f1_at_0.5', m['macro_f1']):.4f} | "
                     f"{m.get('macro_f1_cross_fitted', m['macro_f1']):.4f} | {m['accuracy']:.4f} | "
                     f"{'-' if target is None else f'>= {target}'} | {m['ece_before']:.4f} -> "
                     f"{m['ece_after']:.4f} | {m['best_epoch']} | {wall / 60:.1f} min | "
                     f"`python {' '.join(command[1:])}` |")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    path = os.path.join(ROOT, "bench", "results", "accuracy.md")
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"\n<!-- python bench/accuracy.py {' '.join(argv_of(args))} -->\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"appended to {path}")


def argv_of(args) -> list:
    out = ["--rows", *args.rows]
    if args.train_rows:
        out += ["--train_rows", str(args.train_rows)]
    return out + (["--", *args.extra] if args.extra else [])


if __name__ == "__main__":
    sys.exit(main())
