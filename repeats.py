"""--seeds N and --cv K: one configuration trained several times, its spread measured, the best member kept.

    python train.py -d classes.json --seeds 5                   # seeds 42..46 on one validation split (seed 42's)
    python train.py -d classes.json --cv 5                      # 5 stratified folds of --train_path
    python train.py -d classes.json --seeds 5 --ensemble True   # save_path predicts with all five
    python train.py -d classes.json --seeds 5 --resume auto     # finished members are not trained again

Members train one after another in this process (train.train on data read once), each a complete model folder,
save_path/members/seed_<s>/ or fold_<k>/, with its own metrics.json, report/, logs/ and resume/. Seeds share the
validation rows, so members differ only by initialisation, dropout and batch order, and two configurations run with
the same seeds compare pair by pair (bench/compare.py). A member that finished gets member.json (its options and the
hash of its manifest): with --resume auto it is not trained again; one that was stopped resumes from its own resume/
folder. At the end: save_path/repeats.json (each member's best-epoch record, their mean and sample standard
deviation), and at save_path the best member by --metric, its files copied in through the manifest in one commit,
or with --ensemble True an ensemble of every member (ensemble.py).
"""
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass

import numpy as np

from checkpoint import MANIFEST, commit_copy, sha256_file, verify_folder, write_atomic, write_json, writing
from config import Config, InputError
from dataset import data_fingerprint, split_keys, stratified_folds, stratify_keys, warn
from ensemble import write_ensemble
from label_groups import load_label_groups
from metrics import is_better
from resume import MAY_CHANGE
from tasks import is_multitask, split_option, tasks_from_folder

SUMMARY_FILE = "repeats.json"
MEMBER_FILE = "member.json"
# Options a finished member may have been trained under and still count as this run's: --seeds 5 reuses the
# members of --seeds 3; --ensemble only changes what save_path holds.
NOT_THE_MEMBERS = MAY_CHANGE | {"seeds", "ensemble"}
# (key in a member's record, how the summary line names it), in the order printed
SHOWN = (("valid_macro_f1", "valid macro-F1"), ("valid_accuracy", "accuracy"), ("valid_loss", "loss"),
         ("macro_f1_cross_fitted", "cross-fitted macro-F1"), ("macro_f1_at_0.5", "macro-F1 at 0.5"))


@dataclass
class Plan:
    """One member to train: its name and folder (cfg.save_path), its seed and fold, and the data it trains on."""
    name: str
    cfg: Config
    data: tuple  # (names, train LabelledData, valid LabelledData), as train.load_data returns them
    fold: int = None

    @property
    def folder(self) -> str:
        return self.cfg.save_path


def repeated(cfg: Config) -> bool:
    """Whether this run trains members (--seeds > 1 or --cv)."""
    return cfg.seeds > 1 or cfg.cv != 0


def check_repeat_options(cfg: Config, processes: int) -> None:
    """The rules of --seeds, --cv and --ensemble, checked before anything is read or written."""
    several = repeated(cfg)
    rules = [(cfg.seeds >= 1, "--seeds must be at least 1"),
             (cfg.cv == 0 or cfg.cv >= 2, "--cv must be 0 (off) or at least 2 folds"),
             (not (cfg.cv and cfg.seeds > 1), "--cv with --seeds > 1: choose one (folds are members already; "
                                              "for other folds, run again with another --seed)"),
             (not (cfg.cv and cfg.valid_path), "--cv splits --train_path into folds and validates on each of them; "
                                               "it takes no --valid_path"),
             (not cfg.ensemble or several, "--ensemble True needs members to average: --seeds > 1 or --cv >= 2"),
             (not several or cfg.resume in ("", "auto"),
              f"--resume {cfg.resume} names one checkpoint; with --seeds or --cv use --resume auto (each member "
              "resumes from its own folder)"),
             (not several or processes <= 1, "--seeds and --cv train their members one after another in one "
                                             "process; with several processes (DDP) train each seed or fold as a "
                                             "train.py run of its own")]
    for ok, message in rules:
        if not ok:
            raise InputError(message)


def member_plans(cfg: Config, load_data) -> list:
    """The members of this run, their data read and checked once by `load_data` (train.load_data)."""
    def member(name: str, seed: int, data: tuple, fold: int = None) -> Plan:
        folder = os.path.join(cfg.save_path, "members", name)
        # the frozen encoder's vectors are the same for every seed and fold: one --boost cache for all members
        return Plan(name, dataclasses.replace(cfg, seed=seed, save_path=folder, boost_cache=cfg.boost_folder()),
                    data, fold)
    if not cfg.cv:
        data = load_data(cfg)  # the split of --seed, for every member
        return [member(f"seed_{seed}", seed, data) for seed in range(cfg.seed, cfg.seed + cfg.seeds)]
    names, rows, _ = load_data(cfg, whole=True)
    if cfg.cv > len(rows.labels):
        raise InputError(f"--cv {cfg.cv}: more folds than the {len(rows.labels)} rows of {cfg.train_path}")
    keys = fold_keys(cfg, names, rows.labels)
    counts = {key: keys.count(key) for key in set(keys)}
    rare = sorted(names[key] for key, n in counts.items() if n < cfg.cv and not is_multitask(cfg))
    if rare:
        warn(f"class(es) {', '.join(rare)} have fewer rows than --cv {cfg.cv} folds: absent from the validation of "
             "some folds")
    folds = stratified_folds(keys, cfg.cv, cfg.seed)
    plans = []
    for k, valid_idx in enumerate(folds):
        train_idx = sorted(set(range(len(keys))) - set(valid_idx))
        plans.append(member(f"fold_{k}", cfg.seed, (names, rows.subset(train_idx), rows.subset(valid_idx)), k))
    return plans


def fold_keys(cfg: Config, names: list, labels: list) -> list:
    """The class each row's fold is balanced by, as the validation split balances it."""
    if is_multitask(cfg):
        return split_keys(labels, tasks_from_folder(cfg, names, {}))
    return stratify_keys(labels, len(names), cfg.multi_label)


def train_members(cfg: Config, stop, train, load_data) -> int:
    """Train every member (with --resume auto, not those already complete), then write the summary and put the
    best member, or the ensemble, at save_path. `train` and `load_data` are train.py's (which imports this
    module). A member stopped by a signal ends the run with its exit code."""
    plans = member_plans(cfg, load_data)
    options = member_options(cfg)
    for k, plan in enumerate(plans):
        where = f"member {plan.name} ({k + 1} of {len(plans)})"
        if cfg.resume == "auto" and is_complete(plan, options):
            print(f"{where}: complete in {plan.folder}, not trained again (--resume auto)", flush=True)
            continue
        print(f"\n== {where}: seed {plan.cfg.seed}, {describe_rows(plan)} -> {plan.folder}", flush=True)
        with writing(plan.folder):
            if os.path.exists(os.path.join(plan.folder, MEMBER_FILE)):
                os.remove(os.path.join(plan.folder, MEMBER_FILE))  # complete again only once trained again
        code = train(plan.cfg, stop, plan.data)
        if code:
            return code
        with writing(plan.folder):
            write_json(os.path.join(plan.folder, MEMBER_FILE), {
                "name": plan.name, "seed": plan.cfg.seed, "fold": plan.fold, "options": options,
                "data_sha256": plan.cfg._data_sha256, "manifest_sha256": sha256_file(os.path.join(plan.folder,
                                                                                                   MANIFEST))})
    with writing(cfg.save_path):
        summary = finish_members(cfg, plans)
    print_summary(cfg, plans, summary)
    return 0


def describe_rows(plan: Plan) -> str:
    _, train_rows, valid_rows = plan.data
    what = f"validation fold {plan.fold}" if plan.fold is not None else "validation"
    return f"train {len(train_rows.labels)} rows, {what} {len(valid_rows.labels)} rows"


def member_options(cfg: Config) -> dict:
    """The options that make a member what it is (the run's, less those that may change between runs)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_THE_MEMBERS}


def is_complete(plan: Plan, options: dict) -> bool:
    """Whether the member finished under these options: member.json (written once its training, calibration and
    report were done) matches them, and the model folder it recorded is whole, with its metrics."""
    try:
        with open(os.path.join(plan.folder, MEMBER_FILE), encoding="utf-8") as f:
            done = json.load(f)
        verify_folder(plan.folder)
        manifest = sha256_file(os.path.join(plan.folder, MANIFEST))
    except (OSError, ValueError, InputError):
        return False
    changed = "with other options" if done.get("options") != options else \
        "on other rows or classes" if done.get("data_sha256") not in (None, data_fingerprint(*plan.data)) else None
    if changed:  # (a data_sha256 of None: written before it was recorded)
        print(f"member {plan.name}: trained {changed}, training it again", flush=True)
        # afresh: its resumable checkpoints belong to the run it was, and --resume auto would refuse them
        shutil.rmtree(os.path.join(plan.folder, "resume"), ignore_errors=True)
        return False
    return done.get("manifest_sha256") == manifest and os.path.isfile(os.path.join(plan.folder, "metrics.json"))


def task_names(cfg: Config) -> list:
    """Several tasks: their names (each has its own report folder); else none."""
    return split_option(cfg.label_col) if is_multitask(cfg) else []


# ------------------------------------------------------------------------------------------ summary, best model
def member_record(plan: Plan) -> dict:
    """A member's best epoch (its valid_* scores, per task too) from metrics.json, and, multi-label, the macro-F1
    at 0.5, cross-fitted and with tuned thresholds from report.calibrated_report's metrics.json."""
    with open(os.path.join(plan.folder, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    best = metrics["epochs"][metrics["best_epoch"] - 1]
    record = {"name": plan.name, "seed": plan.cfg.seed, "fold": plan.fold, "path": f"members/{plan.name}",
              "train_rows": len(plan.data[1].labels), "valid_rows": len(plan.data[2].labels),
              "best_epoch": metrics["best_epoch"], **{k: v for k, v in best.items() if k.startswith("valid_")}}
    for task in task_names(plan.cfg) or [""]:
        path = os.path.join(plan.folder, "report", task, "metrics.json")
        if not os.path.isfile(path):  # a task without labelled validation rows has no report
            continue
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
        record.update(threshold_record(report, f"{task}_" if task else ""))
    return record


def threshold_record(report: dict, prefix: str = "") -> dict:
    """A multi-label report's macro-F1 cross-fitted, at 0.5 and with tuned thresholds, as records name them."""
    if "macro_f1_cross_fitted" not in report:
        return {}
    return {f"{prefix}macro_f1_cross_fitted": report["macro_f1_cross_fitted"],
            f"{prefix}macro_f1_at_0.5": report["macro_f1_at_0.5"], f"{prefix}macro_f1_tuned": report["macro_f1"]}


def spread(records: list) -> tuple:
    """(mean, sample standard deviation) of every score the members' records share."""
    keys = [k for k, v in records[0].items() if isinstance(v, float) and all(k in r for r in records)]
    mean = {k: float(np.mean([r[k] for r in records])) for k in keys}
    std = {k: float(np.std([r[k] for r in records], ddof=1)) for k in keys}
    return mean, std


def finish_members(cfg: Config, plans: list) -> dict:
    """repeats.json, and save_path's model: the best member (by --metric), or the ensemble of all."""
    records = [member_record(plan) for plan in plans]
    best = None
    for plan, record in zip(plans, records):
        if best is None or is_better(cfg.metric, record[f"valid_{cfg.metric}"], best[1][f"valid_{cfg.metric}"]):
            best = plan, record
    ensemble = None
    if cfg.ensemble:
        ensemble = write_members_ensemble(cfg, plans)
    else:
        put_best_in_place(cfg.save_path, best[0].folder)
    mean, std = spread(records)
    summary = {"kind": "cv" if cfg.cv else "seeds", "seeds": [plan.cfg.seed for plan in plans],
               "split_seed": cfg.seed, "folds": cfg.cv or None, "metric": cfg.metric, "best": best[0].name,
               "save_path": "ensemble of every member" if cfg.ensemble else f"copy of members/{best[0].name}",
               "members": records, "mean": mean, "std": std, **({"ensemble": ensemble} if ensemble else {})}
    write_json(os.path.join(cfg.save_path, SUMMARY_FILE), summary)
    return summary


def write_members_ensemble(cfg: Config, plans: list) -> dict:
    """save_path as the ensemble of every member. With --seeds (one validation set for all) it gets a report of its
    own, save_path/report/, and thresholds tuned on it; returns its scores (as a member record names them), or
    None with --cv, whose members validated on different folds."""
    from report import ensemble_calibration, ensemble_parts, ensemble_report
    names, _, valid = plans[0].data
    labels = valid.labels
    if cfg.label_groups:  # the members validated, and the ensemble predicts, the groups of the classes
        groups = load_label_groups(cfg.label_groups, names, cfg.multi_label)
        names, labels = groups.names, groups.group_labels(labels, cfg.multi_label)
    tasks = tasks_from_folder(cfg, names, {}) if is_multitask(cfg) else None
    parts, why_not = (None, None) if cfg.cv else ensemble_parts([p.folder for p in plans], labels, names,
                                                                cfg.multi_label, tasks)
    if why_not:
        print(f"the ensemble gets no validation report of its own and the mean of the members' thresholds: {why_not}"
              f" (delete that member's {MEMBER_FILE} and run again with --resume auto to train it again)", flush=True)
    remove_path(os.path.join(cfg.save_path, SUMMARY_FILE))  # an earlier run's, never beside this ensemble
    write_ensemble(cfg.save_path, cfg, [(plan.name, plan.folder) for plan in plans],
                   ensemble_calibration(parts) if parts else None)
    for stale in ("metrics.json", "report"):  # a single model's, from an earlier run: not the ensemble's
        remove_path(os.path.join(cfg.save_path, stale))
    if not parts:
        return None
    scores = {}
    for task, metrics in ensemble_report(cfg.save_path, parts, len(plans)).items():
        prefix = f"{task}_" if task else ""
        if "macro_f1_cross_fitted" in metrics:  # multi-label: valid_ at 0.5, as a member's epochs score it
            scores.update({f"valid_{prefix}macro_f1": metrics["macro_f1_at_0.5"], **threshold_record(metrics, prefix)})
        else:
            scores.update({f"valid_{prefix}macro_f1": metrics["macro_f1"],
                           f"valid_{prefix}accuracy": metrics["accuracy"]})
    if tasks:  # the run's macro-F1 is the mean of its tasks', as each member's is
        scores["valid_macro_f1"] = float(np.mean([scores[f"valid_{part.task}_macro_f1"] for part in parts]))
    return scores


def put_best_in_place(save_path: str, member: str) -> None:
    """Copy the member's model files into save_path in one commit (a former ensemble or model is replaced), then
    its metrics.json and report/, each file written atomically."""
    from report import PROBABILITIES_FILE  # report (and its plotting) loads only when a run ends
    manifest = verify_folder(member)
    commit_copy(save_path, {name: os.path.join(member, name) for name in manifest["files"]})
    copy_file(os.path.join(member, "metrics.json"), os.path.join(save_path, "metrics.json"))
    target = os.path.join(save_path, "report")
    copied = set()
    for root, _, files in os.walk(os.path.join(member, "report")):
        for name in files:
            if name == PROBABILITIES_FILE:  # the member's, for an ensemble: not part of a model's report
                continue
            relative = os.path.relpath(os.path.join(root, name), os.path.join(member, "report"))
            copy_file(os.path.join(root, name), os.path.join(target, relative))
            copied.add(relative)
    for root, _, files in os.walk(target):  # an earlier model's report files that this one does not have
        for name in files:
            if os.path.relpath(os.path.join(root, name), target) not in copied:
                os.remove(os.path.join(root, name))


def copy_file(src: str, dst: str) -> None:
    with open(src, "rb") as f:
        write_atomic(dst, f.read())


def remove_path(path: str) -> None:
    import shutil
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def print_summary(cfg: Config, plans: list, summary: dict) -> None:
    """A line per member, then the mean and spread of each score, per task too, and where the model is."""
    for record in summary["members"]:
        print(f"member {record['name']}: best epoch {record['best_epoch']}, " + scores_line(record), flush=True)
    which = f"folds {cfg.cv} (seed {cfg.seed})" if cfg.cv else "seeds " + ",".join(map(str, summary["seeds"]))
    mean, std = summary["mean"], summary["std"]
    both = {k: f"{mean[k]:.4f} ± {std[k]:.4f}" for k in mean}
    print(f"{which}: {scores_line(both)} (mean ± sample standard deviation of {len(plans)} members)", flush=True)
    for task in task_names(cfg):
        print(f"  task {task}: " + scores_line(both, f"{task}_"), flush=True)
    if "ensemble" in summary:
        print(f"ensemble of the {len(plans)} members: {scores_line(summary['ensemble'])}", flush=True)
        for task in task_names(cfg):
            print(f"  task {task}: " + scores_line(summary["ensemble"], f"{task}_"), flush=True)
    model = "an ensemble of every member" if cfg.ensemble else f"the best member, {summary['best']} (by valid " \
        f"{cfg.metric})"
    print(f"{cfg.save_path}: {model}; every member's record in {os.path.join(cfg.save_path, SUMMARY_FILE)}",
          flush=True)


def scores_line(values: dict, prefix: str = "") -> str:
    """'valid macro-F1 0.6312 | accuracy ...' for the scores in `values` (numbers or already formatted)."""
    def shown(value):
        return f"{value:.4f}" if isinstance(value, float) else value
    parts = []
    for key, label in SHOWN:
        name = f"valid_{prefix}{key[len('valid_'):]}" if key.startswith("valid_") else f"{prefix}{key}"
        if name in values:
            parts.append(f"{label} {shown(values[name])}")
    return " | ".join(parts)
