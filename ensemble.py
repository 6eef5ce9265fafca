"""An ensemble folder (`--ensemble True`): the members of a --seeds or --cv run, predicting as one model.

The folder holds ensemble.json (each member's folder, save_path/members/<name>/, with the SHA-256 of its
manifest.json), the run's train_config.json and classes.json, so that predict.py's settings and its -d check work as
for one model, and calibration.json with the ensemble's decision thresholds; its own manifest.json commits them
like a model folder's. Each member is a complete model folder, checked when it is loaded, and refused if it
changed since the ensemble was made.

A prediction is the mean of the members' calibrated probabilities, each member at its own temperature
(predict.predict_probabilities). Multi-label decisions: with --seeds, whose members validate on the same rows, per
class the threshold tuned for F1 on the ensemble's own mean probabilities of those rows, as one model's are tuned
on its own (report.ensemble_parts); with --cv, whose members validate on different folds, the mean of the
members' thresholds, which draws on every fold without tuning on probabilities that no held-out row checked.
Several tasks: the same per task.
"""
import json
import os
from dataclasses import dataclass

import numpy as np

from config import InputError

ENSEMBLE_FILE = "ensemble.json"
FORMAT_VERSION = 1


@dataclass
class Member:
    """One loaded member: its model and tokenizer, its own temperature and, several tasks, its calibrated tasks."""
    model: object
    tokenizer: object
    temperature: float = 1.0
    tasks: list = None


class Ensemble:
    """The loaded members of an ensemble folder; predict.py passes it where it passes a model."""

    def __init__(self, members: list, n_classes: int):
        self.members, self.n_classes = members, n_classes

    def length_limit(self, tokenizer) -> tuple:
        """The tightest (tokens, why) of the members."""
        return min((m.model.length_limit(m.tokenizer) for m in self.members), key=lambda limit: limit[0])


def is_ensemble(folder: str) -> bool:
    """Whether the manifest of `folder` lists ensemble.json (a file left behind by a later model's commit, which
    no longer lists it, does not count)."""
    from checkpoint import MANIFEST, listed_in_manifest
    return os.path.isfile(os.path.join(folder, MANIFEST)) and listed_in_manifest(folder, ENSEMBLE_FILE)


def member_entries(folder: str) -> list:
    """ensemble.json's members, each {"name", "path", "manifest_sha256"}, every path inside `folder`."""
    path = os.path.join(folder, ENSEMBLE_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            members = json.load(f)["members"]
        if not members or not all(isinstance(m["path"], str) and isinstance(m["manifest_sha256"], str)
                                  for m in members):
            raise ValueError("no members, or a member without a path and a hash")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: unreadable ensemble description ({str(e)[:200]})")
    for m in members:
        # paths come from disk: one that leaves the folder would load a model the ensemble never held
        if os.path.isabs(m["path"]) or os.path.normpath(m["path"]).split(os.sep)[0] in ("..", "."):
            raise InputError(f"{path}: member path {m['path']!r} points outside the ensemble folder")
    return members


def load_ensemble(folder: str, device) -> tuple:
    """(Ensemble, tokenizer, cfg, names, extra) of an ensemble folder, as checkpoint.load_model gives a model's:
    every member checked against its manifest and against the hash the ensemble recorded."""
    from checkpoint import MANIFEST, load_model, read_settings, sha256_file
    from tasks import is_multitask, tasks_from_folder
    cfg, names, extra = read_settings(folder)
    members = []
    for entry in member_entries(folder):
        path = os.path.join(folder, entry["path"])
        model, tokenizer, member_cfg, member_names, member_extra = load_model(path, device)
        if sha256_file(os.path.join(path, MANIFEST)) != entry["manifest_sha256"]:
            raise InputError(f"{path}: this member changed after the ensemble in {folder} was made (its "
                             f"{MANIFEST} is not the one {ENSEMBLE_FILE} recorded); train the ensemble again")
        if member_names != names:
            raise InputError(f"{path}: this member's classes differ from the ensemble's ({folder}/classes.json)")
        tasks = tasks_from_folder(member_cfg, member_names, member_extra) if is_multitask(member_cfg) else None
        members.append(Member(model, tokenizer, member_extra.get("temperature", 1.0), tasks))
    return Ensemble(members, len(names)), members[0].tokenizer, cfg, names, extra


def mean_thresholds(calibrations: list) -> dict:
    """The ensemble's calibration.json from its members': temperature 1 (each member applies its own), and where
    the members have thresholds (multi-label), their mean per class; several tasks: per task."""
    def mean(fitted: list):
        lists = [f["thresholds"] for f in fitted if f.get("thresholds") is not None]
        return [round(float(t), 6) for t in np.mean(lists, axis=0)] if lists else None
    out = {"temperature": 1.0}
    if any("tasks" in c for c in calibrations):
        out["tasks"] = {}
        for name in sorted({name for c in calibrations for name in c.get("tasks", {})}):
            thresholds = mean([c["tasks"][name] for c in calibrations if name in c.get("tasks", {})])
            out["tasks"][name] = {"temperature": 1.0, **({"thresholds": thresholds} if thresholds else {})}
    elif (thresholds := mean(calibrations)) is not None:
        out["thresholds"] = thresholds
    return out


def write_ensemble(save_path: str, cfg, members: list, calibration: dict = None) -> None:
    """Make save_path the ensemble of `members` [(name, folder)], in one commit (checkpoint.commit_copy): the
    members' settings are read back from their folders, each checked against its manifest. `calibration`: the
    ensemble's calibration.json (report.ensemble_calibration), by default the mean of the members' thresholds."""
    import dataclasses

    from checkpoint import MANIFEST, commit_copy, read_label_groups, read_settings, sha256_file
    from label_groups import FOLDER_FILE
    settings = [read_settings(folder) for _, folder in members]
    groups = read_label_groups(members[0][1])  # --label_groups: predict.py checks -d against the fine classes
    first_cfg, names, _ = settings[0]
    entries = [{"name": name, "path": os.path.relpath(folder, save_path),
                "manifest_sha256": sha256_file(os.path.join(folder, MANIFEST))} for name, folder in members]
    description = {"format": FORMAT_VERSION, "members": entries,
                   "probabilities": "mean of the members' calibrated probabilities, each at its own temperature",
                   "thresholds": "multi-label: per class, " + (
                       "the mean of the members' thresholds" if calibration is None else
                       "tuned for F1 on the ensemble's mean probabilities of the validation rows")}
    # the run's options, with what training resolved (--pooling auto) as its members saved it
    run_cfg = dataclasses.replace(first_cfg, seed=cfg.seed, save_path=cfg.save_path)
    commit_copy(save_path, {}, {ENSEMBLE_FILE: description, "train_config.json": dataclasses.asdict(run_cfg),
                                "classes.json": {n: i for i, n in enumerate(names)},
                                "calibration.json": calibration or mean_thresholds([extra for _, _, extra in settings]),
                                **({FOLDER_FILE: groups.spec()} if groups else {})})
