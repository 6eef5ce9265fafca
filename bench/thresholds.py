"""How much multi-label threshold estimators are worth on rows they did not see, from kept validation probabilities.

    python bench/thresholds.py DIR/data/dev.csv DIR/ensemble_3x1/seed_42/members/seed_*/report/validation_probabilities.npy
    python bench/thresholds.py DIR/data/dev.csv PREDS/dev.csv --classes DIR/data/classes.json   # predict.py's output
    python bench/thresholds.py DIR/data/dev_all.csv PREDS/dev_all.csv --classes DIR/data/classes_original.json \
        --label_col original --task original                # one head of a model of several tasks
    python bench/thresholds.py GROUP/data/dev.csv PREDS/dev.csv --classes GROUP/data/classes.json \
        --fine FINE_PREDS/dev.csv --fine_classes ORIGINAL/data/classes.json --fine_map group_map.json
                            # a 28-emotion model read out as sentiment groups (the map: bench/accuracy.py
                            # --write_fine_map group group_map.json)

Reads the labelled validation file (label column --label_col, comma-separated class ids, as bench/recipes.py
writes it) and one or more members' report/validation_probabilities.npy (kept by members of --seeds and --cv; with
several, their mean is scored too, as the ensemble's report does), or predictions CSVs that predict.py wrote for
that file (a probability column per class of --classes, `<--task>:<class>` for one task of several; its rows and
texts must be the validation file's). With --fine (once per file), predictions of models trained on finer classes
(--fine_classes, each of which belongs to one class of the validation file: --fine_map, {class: [its fine classes]})
are read out as the validation file's classes, each class's probability the chance that at least one of its fine
classes is present (1 - the product of 1 - p over them, as if independent); they join the other sets and the mean.
For --halves random halves of the rows, each estimator tunes per-class thresholds on one half and is scored on the
other (both ways round, as the report's cross-fitted macro-F1 does with one fixed half); it prints the mean ± std of
that macro-F1 per estimator:
    exact       calibrate.tune_thresholds (train.py's): the F1-maximising cut of each class's ranked rows
    grid        the best of the thresholds 0.01, 0.02, ..., 0.99
    smooth_2/5/10  the same after averaging the F1 curve over ±2 / ±5 / ±10 grid steps (less swayed by a few rows)
    f1_half     half the best F1 of the exact cut: for calibrated probabilities the F1-optimal threshold is half the
                best F1 reachable (Lipton, Elkan & Narayanaswamy 2014); steadier, as a best F1 varies less than its cut
    half        0.5 for every class
and the tuned score (thresholds tuned and scored on all rows: optimistic).
"""
import argparse
import csv
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import calibrate  # noqa: E402
from dataset import load_label_map  # noqa: E402
from tasks import SEPARATOR  # noqa: E402

GRID = np.linspace(0.01, 0.99, 99)


def grid_thresholds(probs: np.ndarray, y: np.ndarray, width: int = 0) -> np.ndarray:
    """Per class, the grid threshold whose F1 (averaged over ±width neighbours) is the highest."""
    thresholds = np.empty(probs.shape[1])
    for c in range(probs.shape[1]):
        chosen = probs[:, c][:, None] >= GRID[None, :]
        true_positives = (chosen & (y[:, c][:, None] == 1)).sum(0)
        f1 = 2 * true_positives / np.maximum(chosen.sum(0) + y[:, c].sum(), 1)
        if width:
            f1 = np.convolve(np.pad(f1, width, mode="edge"), np.ones(2 * width + 1) / (2 * width + 1), mode="valid")
        thresholds[c] = GRID[int(np.argmax(f1))]
    return thresholds


def f1_half_thresholds(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per class, half the F1 that the exact cut (calibrate.tune_thresholds) reaches; 0.5 for a class without
    positive rows, as tune_thresholds keeps the default there."""
    cuts = calibrate.tune_thresholds(probs, y)
    chosen = probs >= cuts
    best_f1 = 2 * (chosen & (y == 1)).sum(0) / np.maximum(chosen.sum(0) + y.sum(0), 1)
    return np.where(y.sum(0) > 0, best_f1 / 2, calibrate.DEFAULT_THRESHOLD)


ESTIMATORS = {"exact": calibrate.tune_thresholds, "grid": grid_thresholds,
              "smooth_2": lambda p, y: grid_thresholds(p, y, 2), "smooth_5": lambda p, y: grid_thresholds(p, y, 5),
              "smooth_10": lambda p, y: grid_thresholds(p, y, 10), "f1_half": f1_half_thresholds,
              "half": lambda p, y: np.full(p.shape[1], 0.5)}


def macro_f1(y: np.ndarray, chosen: np.ndarray) -> float:
    from sklearn.metrics import f1_score
    return float(f1_score(y, chosen, average="macro", zero_division=0))


def held_out_scores(probs: np.ndarray, y: np.ndarray, halves: int, seed: int) -> dict:
    """{estimator: [macro-F1 of each random half split, thresholds tuned on the other half]}."""
    rng = np.random.default_rng(seed)
    scores = {name: [] for name in ESTIMATORS}
    for _ in range(halves):
        half = rng.permutation(len(probs)) < len(probs) // 2
        for name, estimate in ESTIMATORS.items():
            chosen = np.zeros_like(y)
            for part in (half, ~half):
                chosen[part] = calibrate.decide(probs[part], True, estimate(probs[~part], y[~part]))
            scores[name].append(macro_f1(y, chosen))
    return scores


def load_probabilities(path: str, classes_json: str, task: str = "", flag: str = "--classes") -> tuple:
    """(rows, classes) probabilities from a kept .npy, or from predict.py's predictions CSV (a column per class, or
    per `<task>:<class>`); and the CSV's texts (None for a .npy). `flag` names the label map's option in messages."""
    if not path.endswith(".csv"):
        return np.load(path).astype(float), None
    if not classes_json:
        raise SystemExit(f"{path}: a predictions CSV needs {flag} (the label map, for its columns' order)")
    columns = [f"{task}{SEPARATOR}{name}" if task else name for name in load_label_map(classes_json)]
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise SystemExit(f"{path}: no column {', '.join(missing)} ({flag} {classes_json}"
                             f"{f', --task {task}' if task else ''})")
        rows = list(reader)
    return np.array([[float(row[c]) for c in columns] for row in rows]), [row.get("sentences") for row in rows]


def read_out(fine_probs: np.ndarray, fine_names: list, fine_map: dict, names: list) -> np.ndarray:
    """(rows, len(names)) probabilities of the coarse classes `names` from the fine classes' probabilities: for each,
    1 - prod(1 - p) over the fine classes fine_map lists for it. Every fine class must belong to exactly one."""
    if not isinstance(fine_map, dict) or not all(isinstance(m, list) for m in fine_map.values()):
        raise SystemExit("--fine_map: not a JSON object of lists ({class: [its fine classes]})")
    if sorted(fine_map) != sorted(names):
        raise SystemExit(f"--fine_map: its classes ({', '.join(sorted(fine_map))}) are not those of --classes "
                         f"({', '.join(names)})")
    listed = [fine for members in fine_map.values() for fine in members]
    wrong = sorted({f for f in listed if listed.count(f) > 1} | (set(listed) ^ set(fine_names)))
    if wrong:
        raise SystemExit(f"--fine_map: each class of --fine_classes must be listed once; not so for {', '.join(wrong)}")
    columns = [[fine_names.index(fine) for fine in fine_map[coarse]] for coarse in names]
    return np.stack([1 - np.prod(1 - fine_probs[:, c], axis=1) for c in columns], axis=1)


def load_read_out(path: str, args) -> tuple:
    """--fine's predictions at `path`, read out as --classes' classes through --fine_map; and their texts."""
    fine, texts = load_probabilities(path, args.fine_classes, flag="--fine_classes")
    with open(args.fine_map, encoding="utf-8") as f:
        fine_map = json.load(f)
    return read_out(fine, load_label_map(args.fine_classes), fine_map, load_label_map(args.classes)), texts


def read_validation(path: str, label_col: str) -> tuple:
    """The validation file's label ids per row, and its texts."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [[int(x) for x in row[label_col].split(",")] for row in rows], [row.get("sentences") for row in rows]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("valid_csv")
    p.add_argument("probabilities", nargs="*")
    p.add_argument("--label_col", default="emotion")
    p.add_argument("--classes", default="", help="label map (classes.json) of predictions CSVs")
    p.add_argument("--task", default="", help="predictions CSVs of a model of several tasks: the task to score")
    p.add_argument("--fine", action="append", default=[],
                   help="predictions of a model of finer classes, read out (once per file)")
    p.add_argument("--fine_classes", default="", help="the label map of --fine's models")
    p.add_argument("--fine_map", default="", help="JSON {class of --classes: [its classes of --fine_classes]}")
    p.add_argument("--halves", type=int, default=40)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_intermixed_args(argv)  # files before and after the options alike
    labels, texts = read_validation(args.valid_csv, args.label_col)
    needed = [f"--{name}" for name in ("classes", "fine_classes", "fine_map") if not getattr(args, name)]
    if args.fine and needed:
        raise SystemExit(f"--fine needs {', '.join(needed)}")
    if not args.fine and (args.fine_classes or args.fine_map):
        raise SystemExit("--fine_classes and --fine_map describe --fine's files: give --fine too")
    if not args.probabilities + args.fine:
        raise SystemExit("no probabilities to score: give kept .npy files, predictions CSVs or --fine")
    sets = {}
    named = [(path, path, False) for path in args.probabilities] + [(f"{path} (read out)", path, True)
                                                                      for path in args.fine]
    for name, path, fine in named:
        sets[name], their_texts = load_read_out(path, args) if fine else load_probabilities(path, args.classes,
                                                                                             args.task)
        if len(sets[name]) != len(labels) or (their_texts is not None and their_texts != texts):
            raise SystemExit(f"{path}: its {len(sets[name])} rows are not the {len(labels)} rows of {args.valid_csv}")
    if len(sets) > 1:
        sets["mean of the above (the ensemble)"] = np.mean(list(sets.values()), axis=0)
    y = calibrate.target_matrix(labels, next(iter(sets.values())).shape[1])
    for name, probs in sets.items():
        scores = held_out_scores(probs, y, args.halves, args.seed)
        tuned = macro_f1(y, calibrate.decide(probs, True, calibrate.tune_thresholds(probs, y)))
        print(f"{name}\n  " + " | ".join(f"{k} {np.mean(v):.4f} ± {np.std(v):.4f}" for k, v in scores.items())
              + f" | tuned on all rows {tuned:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
