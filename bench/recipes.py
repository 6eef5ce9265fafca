"""Issue 17's recipes against the defaults, over the same seeds: mean ± std of each, and each one's paired gain.

    python bench/recipes.py                                   # Ekman multi-label, 6,000 training rows, 1 epoch, 3 seeds
    python bench/recipes.py --taxonomy group --seeds 5 --only baseline,llrd_0.9
    python bench/recipes.py --train_rows 0 --n_epochs 3       # the whole taxonomy (hours on 2 cores)

Every run is one train.py process on a GoEmotions taxonomy (../shared/data/goemotions, converted by
bench/accuracy.py's convert_taxonomy; multi-label; the dev split is --valid_path, so every seed validates on the
same rows and seeds differ only by initialisation, dropout and batch order). Each recipe runs with the seeds
--seed .. --seed + --seeds - 1; its score on a seed is paired with the baseline's on the same seed. The table gives
the cross-fitted macro-F1 (thresholds tuned on one half of dev, scored on the other: not optimistic), the tuned one,
and each recipe's paired difference from the baseline with a 95% t interval. Finished runs are kept in --work_dir
and not run again, so an interrupted sweep continues where it stopped. all_taxonomies trains a head per taxonomy
on the same rows (the other two taxonomies' labels as more tasks) and is scored on this taxonomy's head; its
recipe_result.json also holds the other heads' scores ("tasks").
"""
import argparse
import dataclasses
import json
import os
import string
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from accuracy import convert_taxonomy, fine_map  # noqa: E402
from common import ROOT, load_average, print_table  # noqa: E402
from compare import paired_interval, verdict  # noqa: E402

RECIPES = {"baseline": [], "llrd_0.9": ["--llrd", "0.9"], "reinit_1": ["--reinit_layers", "1"],
           "ema_0.99": ["--ema", "0.99"], "focal": ["--loss", "focal"], "asl": ["--loss", "asl"],
           "llrd_0.9+reinit_1": ["--llrd", "0.9", "--reinit_layers", "1"], "reinit_2": ["--reinit_layers", "2"],
           "pooling_mean": ["--pooling", "mean"],
           # issue 16's larger token budget per step: batch 64, the encoder's lr by the square-root rule for Adam
           # (2e-4 x 1.41, rounded); bench/train_vs_hf.py's ours_b64 scales linearly instead, since its one epoch of
           # 4,000 rows has only 63 updates at batch 64, where the full sets' 2,000 leave room for the gentler rule
           "batch_64": ["--batch_size", "64", "--lr_main", "3e-4"],
           # three members of one epoch each (seeds s, s+1, s+2), about the time of one 3-epoch run; scored by the
           # ensemble's own validation report (the mean of the members' calibrated probabilities)
           "ensemble_3x1": ["--seeds", "3", "--ensemble", "True", "--n_epochs", "1"],
           # one encoder with a head per taxonomy, trained on the labels of all three (the other two as more tasks
           # on the same rows: GoEmotions labels every comment in every taxonomy); scored on this taxonomy's head
           "all_taxonomies": ["--train_path", "$train_all", "--valid_path", "$dev_all", "--label_col",
                              "emotion,$other_taxonomies", "-d", "$classes,$other_label_maps"],
           # Ekman or the sentiment groups: learn the 28 original emotions of the same rows, validate, calibrate and
           # predict their groups (--label_groups, the grouping accuracy.py's fine_map derives)
           "from_original": ["--train_path", "$train_all", "--valid_path", "$dev_all", "--label_col", "original",
                             "-d", "$classes_original", "--label_groups", "$fine_map"],
           # knowledge distillation: the ensemble of this sweep's baselines (every seed's) as the teacher, half of
           # each training target its calibrated probabilities (distill.py); the teacher costs its members' runs
           "distill": ["--teacher", "$teacher", "--teacher_weight", "0.5"]}
# recipes of several tasks: train.py reports each in report/<task>/, this taxonomy's as the task `emotion`, and the
# data needs the other taxonomies' labels (convert_taxonomy's with_other_taxonomies)
MULTITASK_RECIPES = ("all_taxonomies",)
OTHER_TAXONOMY_RECIPES = MULTITASK_RECIPES + ("from_original",)
DEFAULT_RECIPES = ("llrd_0.9", "reinit_1", "ema_0.99", "focal", "asl")
SCORES = ("macro_f1_cross_fitted", "macro_f1", "macro_f1_at_0.5")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--taxonomy", default="ekman", choices=("ekman", "original", "group"))
    p.add_argument("--train_rows", type=int, default=6000, help="seeded sample of training rows (0 = all)")
    p.add_argument("--n_epochs", type=int, default=1)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed", type=int, default=42, help="the first seed")
    p.add_argument("--only", default=",".join(DEFAULT_RECIPES),
                   help=f"comma-separated recipes of {', '.join(RECIPES)} (baseline is always run)")
    p.add_argument("--work_dir", default="", help="keeps the data and every run (default: a temporary folder)")
    p.add_argument("extra", nargs="*", help="flags for every train.py run (after --)")
    return p.parse_args(argv)


def run_one(args, paths: dict, recipe: str, seed: int) -> dict:
    """One train.py run (or its result from an earlier sweep): the report's scores and the wall time."""
    save = os.path.join(args.work_dir, recipe, f"seed_{seed}")
    result_file = os.path.join(save, "recipe_result.json")
    if os.path.exists(result_file):
        with open(result_file) as f:
            return json.load(f)
    command = train_command(args, paths, recipe, seed, save)
    started = time.perf_counter()
    os.makedirs(save, exist_ok=True)
    with open(os.path.join(save, "train.log"), "w") as log:
        code = subprocess.call(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        raise SystemExit(f"{recipe} seed {seed}: train.py exited {code}; see {save}/train.log")
    several = recipe in MULTITASK_RECIPES
    result = {**report_scores(save, "emotion" if several else None), "wall_s": time.perf_counter() - started}
    if several:  # the other taxonomies' heads, each scored on its own dev labels
        result["tasks"] = {t: report_scores(save, t) for t in paths["other_taxonomies"]}
    with open(result_file, "w") as f:
        json.dump(result, f)
    print(f"  {recipe} seed {seed}: cross-fitted macro-F1 {result['macro_f1_cross_fitted']:.4f} in "
          f"{result['wall_s']:.0f}s (load {load_average()})", file=sys.stderr, flush=True)
    return result


def train_command(args, paths: dict, recipe: str, seed: int, save: str) -> list:
    """train.py with the sweep's options, those the recipe sets replaced by its values (each flag given once, so
    train.log's command is the run's), then the recipe's other flags and the extra ones after --."""
    options = {"-d": paths["classes"], "--train_path": paths["train"], "--valid_path": paths["dev"],
               "--multi_label": "True", "--n_epochs": str(args.n_epochs), "--seed": str(seed), "--save_path": save,
               "--tensorboard": "False", **recipe_options(recipe, paths)}
    return [sys.executable, os.path.join(ROOT, "train.py"), *[x for pair in options.items() for x in pair],
            *args.extra]


def recipe_options(recipe: str, paths: dict) -> dict:
    """{flag: value} of the recipe; $names in its values are filled from convert_taxonomy's paths."""
    fill = dict(paths)
    if "other_taxonomies" in paths:
        fill.update(other_taxonomies=",".join(paths["other_taxonomies"]),
                    other_label_maps=",".join(paths[f"classes_{t}"] for t in paths["other_taxonomies"]))
    flags = RECIPES[recipe]
    return {flag: string.Template(value).substitute(fill) for flag, value in zip(flags[::2], flags[1::2])}


def baselines_ensemble(work_dir: str, seeds: list) -> str:
    """work_dir/distill_teacher: an ensemble folder (ensemble.py) of copies of the baselines of `seeds`, made once."""
    import shutil

    from config import load_config
    from ensemble import is_ensemble, write_ensemble
    folder = os.path.join(work_dir, "distill_teacher")
    if not is_ensemble(folder):
        members = [(f"seed_{s}", os.path.join(folder, "members", f"seed_{s}")) for s in seeds]
        for (_, member), seed in zip(members, seeds):
            if not os.path.isdir(member):  # an ensemble's members live inside its folder
                shutil.copytree(os.path.join(work_dir, "baseline", f"seed_{seed}"), member)
        first = load_config(os.path.join(members[0][1], "train_config.json"))
        write_ensemble(folder, dataclasses.replace(first, save_path=folder), members)
    return folder


def report_scores(save: str, task: str = None) -> dict:
    """SCORES of save/report/metrics.json, or of report/<task>/metrics.json, one task's of a run of several."""
    with open(os.path.join(save, "report", *([task] if task else []), "metrics.json")) as f:
        report = json.load(f)
    return {k: report[k] for k in SCORES}


def summary_rows(results: dict, seeds: list) -> list:
    """One table row per recipe: mean ± std of each score, and the paired gain over the baseline."""
    import numpy as np
    rows = []
    for recipe, by_seed in results.items():
        cells = [recipe]
        for score in SCORES[:2]:
            values = np.array([by_seed[s][score] for s in seeds])
            cells.append(f"{values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0:.4f}")
        if recipe == "baseline":
            cells += ["-", "-"]
        elif len(seeds) == 1:  # an indication only: one difference has no interval
            gain = by_seed[seeds[0]]["macro_f1_cross_fitted"] - results["baseline"][seeds[0]]["macro_f1_cross_fitted"]
            cells += [f"{gain:+.4f}", "one seed: no interval"]
        else:
            gain = paired_interval([results["baseline"][s]["macro_f1_cross_fitted"] for s in seeds],
                                   [by_seed[s]["macro_f1_cross_fitted"] for s in seeds])
            cells += [f"{gain['mean']:+.4f} [{gain['low']:+.4f}, {gain['high']:+.4f}]",
                      verdict(gain).replace("B beats A", "recipe beats baseline")
                      .replace("A beats B", "baseline beats recipe")]
        cells.append(f"{sum(by_seed[s]['wall_s'] for s in seeds) / len(seeds):.0f}")
        rows.append(cells)
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    if "from_original" in args.only.split(",") and args.taxonomy == "original":
        raise SystemExit("--only from_original: reads the original emotions out as --taxonomy ekman or group")
    args.work_dir = args.work_dir or tempfile.mkdtemp(prefix="recipes_")
    seeds = list(range(args.seed, args.seed + args.seeds))
    recipes = ["baseline"] + [r for r in args.only.split(",") if r and r != "baseline"]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise SystemExit(f"--only: no recipe {', '.join(unknown)}; the recipes are {', '.join(RECIPES)}")
    paths = convert_taxonomy(args.taxonomy, os.path.join(args.work_dir, "data"), args.train_rows,
                             with_other_taxonomies=any(r in OTHER_TAXONOMY_RECIPES for r in recipes))
    if "from_original" in recipes:
        paths["fine_map"] = os.path.join(args.work_dir, "data", "fine_map.json")
        with open(paths["fine_map"], "w", encoding="utf-8") as f:
            json.dump(fine_map(args.taxonomy), f, indent=2)
    print(f"{args.taxonomy} multi-label, {args.train_rows or 'all'} training rows, {args.n_epochs} epoch(s), seeds "
          f"{seeds}, work dir {args.work_dir}; load average {load_average()}", flush=True)
    results = {"baseline": {s: run_one(args, paths, "baseline", s) for s in seeds}}
    if "distill" in recipes:
        paths["teacher"] = baselines_ensemble(args.work_dir, seeds)
    results.update({r: {s: run_one(args, paths, r, s) for s in seeds} for r in recipes if r != "baseline"})
    print_table(["recipe", "cross-fitted macro-F1", "tuned macro-F1", "paired gain (cross-fitted), 95% CI",
                 "verdict", "wall s per run"], summary_rows(results, seeds))
    with open(os.path.join(args.work_dir, "recipes.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
