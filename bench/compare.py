"""Does configuration B beat A? Both trained with --seeds N on the same data and seeds, compared seed by seed.

    python bench/compare.py --taxonomy ekman --seeds 3 --train_rows 4000 --a "" --b "--pooling mean"
    python bench/compare.py --train_path my.csv --valid_path dev.csv -d classes.json --seeds 5 --a "" \\
        --b "--lr_main 1e-4"
    python bench/compare.py --taxonomy group --seeds 3 --a "" --b "--class_weights balanced" -- --n_epochs 2  # --: both

A and B are each one train.py run with --seeds N (repeats.py), in a process of their own: every member validates
on the same rows (a GoEmotions taxonomy's dev split, converted by bench/accuracy.py and trained multi-label, or
--valid_path; without one, the split of --seed), and A's and B's members of one seed differ only by the flags
compared. B - A of each seed is a paired difference, which cancels what the seed alone moves. Printed: each seed's
macro-F1 of A and B (multi-label: also the cross-fitted macro-F1, thresholds tuned on one half of the validation
rows and scored on the other), the mean difference with its 95% t interval, and a verdict; everything is saved to
bench/results/compare_<data>_<time>.json. A flag value without a space is given as --b=--flag.
"""
import argparse
import json
import math
import os
import shlex
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from accuracy import convert_taxonomy, sample_csv
from common import ROOT, load_average, print_table, run_child, save_result

# (key in repeats.json's member records, name in the table)
SCORES = (("valid_macro_f1", "macro-F1"), ("macro_f1_cross_fitted", "cross-fitted macro-F1"))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--taxonomy", choices=("ekman", "original", "group"), default="",
                        help="a GoEmotions taxonomy (multi-label, its dev split validates); else --train_path")
    parser.add_argument("--train_path", default="")
    parser.add_argument("--valid_path", default="")
    parser.add_argument("-d", "--dict_path", default="classes.json")
    parser.add_argument("--train_rows", type=int, default=0, help="sample this many training rows (0 = all)")
    parser.add_argument("--seeds", type=int, default=3, help="members per configuration (at least 2)")
    parser.add_argument("--seed", type=int, default=42, help="the first seed (and the validation split's)")
    parser.add_argument("--a", default="", help="train.py flags of configuration A (one string)")
    parser.add_argument("--b", default="", help="train.py flags of configuration B (one string)")
    parser.add_argument("--work_dir", default="", help="folder for data and models (default: a temporary one)")
    parser.add_argument("--results", default=os.path.join(ROOT, "bench", "results"), help="folder of the JSON")
    parser.add_argument("--variant", default="", help=argparse.SUPPRESS)  # a child: train one configuration
    parser.add_argument("--workdir", default="", help=argparse.SUPPRESS)
    parser.add_argument("extra", nargs="*", help="flags passed to both train.py runs (after --)")
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error("--seeds must be at least 2: an interval needs two paired differences")
    if not args.taxonomy and not args.train_path:
        parser.error("give --taxonomy, or --train_path (with -d, and --valid_path if you have one)")
    return args


def paired_interval(a: list, b: list, confidence: float = 0.95) -> dict:
    """The paired differences b - a, their mean and sample standard deviation, and the two-sided t interval of the
    mean: mean ± t((1 + confidence) / 2, n - 1) * sd / sqrt(n)."""
    from scipy.stats import t
    differences = [y - x for x, y in zip(a, b)]
    n = len(differences)
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = float(t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "differences": differences, "mean": mean, "sd": sd, "half_width": half,
            "low": mean - half, "high": mean + half, "confidence": confidence}


def verdict(interval: dict) -> str:
    if interval["low"] > 0:
        return "B beats A: the interval excludes 0"
    if interval["high"] < 0:
        return "A beats B: the interval excludes 0"
    return "no difference shown: the interval includes 0"


def prepare_data(args, work: str) -> dict:
    """{train, valid, classes, multi_label}: a converted taxonomy, or the files given (--train_rows sampled)."""
    if args.taxonomy:
        paths = convert_taxonomy(args.taxonomy, os.path.join(work, args.taxonomy), args.train_rows)
        return {"train": paths["train"], "valid": paths["dev"], "classes": paths["classes"], "multi_label": True}
    train = args.train_path
    if args.train_rows:
        train = sample_csv(train, os.path.join(work, f"train_{args.train_rows}.csv"), args.train_rows)
    return {"train": os.path.abspath(train), "valid": os.path.abspath(args.valid_path) if args.valid_path else "",
            "classes": os.path.abspath(args.dict_path), "multi_label": False}


def train_configuration(args) -> dict:
    """The child: train.py --seeds N with this configuration's flags, in this process; its repeats.json."""
    import train
    from config import InputError, RunFault
    with open(os.path.join(args.workdir, "data.json"), encoding="utf-8") as f:
        data = json.load(f)
    save = os.path.join(args.workdir, f"model_{args.variant}")
    argv = ["-d", data["classes"], "-p", "False", "--train_path", data["train"], "--save_path", save,
            "--seeds", str(args.seeds), "--seed", str(args.seed)]
    argv += ["--valid_path", data["valid"]] if data["valid"] else []
    argv += ["--multi_label", "True"] if data["multi_label"] else []
    argv += [*args.extra, *shlex.split(getattr(args, args.variant))]  # the compared flags last: they win
    print(f"train.py {shlex.join(argv)}", flush=True)
    started = time.perf_counter()
    try:
        code = train.main(argv)
    except (InputError, RunFault) as e:
        raise SystemExit(f"error: {e}")
    if code:
        raise SystemExit(f"train.py stopped with exit code {code}")
    with open(os.path.join(save, "repeats.json"), encoding="utf-8") as f:
        return {"variant": args.variant, "argv": argv, "seconds": time.perf_counter() - started,
                "repeats": json.load(f)}


def compare(a: dict, b: dict) -> dict:
    """Per seed, A's and B's scores; per score both runs have, the paired interval of B - A and its verdict."""
    records_a, records_b = a["repeats"]["members"], b["repeats"]["members"]
    seeds = [r["seed"] for r in records_a]
    assert seeds == [r["seed"] for r in records_b], "A and B were trained with different seeds"
    out = {"seeds": seeds, "scores": {}}
    for key, _ in SCORES:
        if all(key in r for r in records_a + records_b):
            interval = paired_interval([r[key] for r in records_a], [r[key] for r in records_b])
            out["scores"][key] = {"a": [r[key] for r in records_a], "b": [r[key] for r in records_b],
                                  **interval, "verdict": verdict(interval)}
    return out


def print_comparison(result: dict, args) -> None:
    scores = result["scores"]
    header, rows = ["seed"], [[seed] for seed in result["seeds"]]
    for key, name in SCORES:
        if key in scores:
            header += [f"A {name}", f"B {name}", "B - A"]
            for row, x, y, d in zip(rows, scores[key]["a"], scores[key]["b"], scores[key]["differences"]):
                row += [f"{x:.4f}", f"{y:.4f}", f"{d:+.4f}"]
    print(f"\nA: {args.a or '(defaults)'}\nB: {args.b or '(defaults)'}")
    print_table(header, rows)
    for key, name in SCORES:
        if key in scores:
            s = scores[key]
            print(f"{name}: B - A = {s['mean']:+.4f} ± {s['half_width']:.4f} (95% t interval [{s['low']:+.4f}, "
                  f"{s['high']:+.4f}], {s['n']} seeds): {s['verdict']}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.variant:
        save_result(args.workdir, args.variant, train_configuration(args))
        return 0
    work = os.path.abspath(args.work_dir or tempfile.mkdtemp(prefix="bench_compare_"))
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(work, "data.json"), "w", encoding="utf-8") as f:
        json.dump(prepare_data(args, work), f)
    child = ["--seeds", str(args.seeds), "--seed", str(args.seed), f"--a={args.a}", f"--b={args.b}",
             "--taxonomy" if args.taxonomy else "--train_path", args.taxonomy or args.train_path]
    child += ["--", *args.extra] if args.extra else []
    print(f"data and models in {work}; load average {load_average()}", flush=True)
    a, b = (run_child(os.path.abspath(__file__), variant, work, child) for variant in ("a", "b"))
    result = {"command": ["python", "bench/compare.py", *(sys.argv[1:] if argv is None else argv)],
              "a": args.a, "b": args.b, **compare(a, b), "seconds": {"a": a["seconds"], "b": b["seconds"]}}
    print_comparison(result, args)
    os.makedirs(args.results, exist_ok=True)
    name = args.taxonomy or os.path.splitext(os.path.basename(args.train_path))[0]
    path = os.path.join(args.results, f"compare_{name}_{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(f"saved to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
