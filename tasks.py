"""Several classification tasks on one encoder: `--label_col emotion,sentiment -d classes.json,sentiment.json`.

Each task has its label column, its label map and its own linear head on the shared encoder and sentence vector.
The heads are stacked in the model's one Linear layer: task k's head is its block of output rows, logits
`start:stop`, which no other task's loss reaches, so it trains exactly as a separate head would; the graph, the
export and --boost stay those of one classifier. The model folder's classes.json names every output
`<task>:<class>` (the predictions' probability columns); train_config.json keeps the tasks' order, label columns
and multi-label flags, calibration.json one temperature (and thresholds) per task. A row may leave a task's cell
empty: that task's loss is masked for the row. With one task nothing here is used: single-task runs are as before.
"""
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from config import InputError

SEPARATOR = ":"  # between task and class in classes.json and in the predictions' column names


@dataclass
class Task:
    name: str  # its label column
    classes: list  # class names by id
    multi_label: bool
    start: int  # its first logit among the model's outputs
    weight: float = 1.0
    temperature: float = 1.0  # fitted after training (calibration.json)
    thresholds: list = None  # multi-label: tuned per class after training
    index: dict = field(default_factory=dict)  # class name -> id, for parsing labels

    @property
    def stop(self) -> int:
        return self.start + len(self.classes)

    def columns(self) -> list:
        return [f"{self.name}{SEPARATOR}{c}" for c in self.classes]


def split_option(value) -> list:
    """'a,b' -> ['a', 'b']; lists (a train_config.json) pass through."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return [part.strip() for part in str(value).split(",")]


def is_multitask(cfg) -> bool:
    """Several label columns or several label maps (a count mismatch is then reported by build_tasks)."""
    return len(split_option(cfg.label_col)) > 1 or len(split_option(cfg.dict_path)) > 1


def per_task(value, n: int, option: str, kind) -> list:
    """One value for every task, or one per task."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if len(values) == 1:
        values = values * n
    if len(values) != n:
        raise InputError(f"{option}: {len(values)} values for {n} tasks; give one, or one per task")
    try:
        return [kind(v) for v in values]
    except ValueError as e:
        raise InputError(f"{option} {','.join(map(str, values))}: {e}")


def build_tasks(cfg, label_maps: list) -> list:
    """The Tasks of --label_col / -d / --multi_label / --task_weights, given each task's class names."""
    names = split_option(cfg.label_col)
    if len(names) != len(label_maps):
        raise InputError(f"--label_col names {len(names)} task(s) ({', '.join(names)}) but -d gives "
                         f"{len(label_maps)} label map(s); give one label map per label column, in the same order")
    for i, name in enumerate(names):
        if not name:
            raise InputError(f"--label_col {cfg.label_col}: task {i + 1} has an empty column name")
        if name in names[:i]:
            raise InputError(f"--label_col {cfg.label_col}: the task '{name}' is named twice")
        if SEPARATOR in name:
            raise InputError(f"--label_col {cfg.label_col}: a task's column name cannot hold '{SEPARATOR}' "
                             f"('{name}'), which separates task and class in the predictions")
    multi = per_task(cfg.multi_label, len(names), "--multi_label", bool)
    weights = per_task(split_option(cfg.task_weights) if cfg.task_weights else [1.0], len(names), "--task_weights",
                       float)
    if any(not 0 < w < math.inf for w in weights):
        raise InputError(f"--task_weights {cfg.task_weights}: every weight must be positive and finite")
    tasks, start = [], 0
    for name, classes, multi_label, weight in zip(names, label_maps, multi, weights):
        tasks.append(Task(name, classes, multi_label, start, weight, index={c: i for i, c in enumerate(classes)}))
        start += len(classes)
    return tasks


def combined_names(tasks: list) -> list:
    """Every output's name, `<task>:<class>`, in logit order: the model folder's classes.json."""
    return [column for task in tasks for column in task.columns()]


def tasks_from_folder(cfg, names: list, extra: dict) -> list:
    """The Tasks of a trained multitask model, from its train_config.json, classes.json and calibration.json."""
    label_maps, start = [], 0
    for name in split_option(cfg.label_col):
        prefix = f"{name}{SEPARATOR}"
        stop = start
        while stop < len(names) and names[stop].startswith(prefix):
            stop += 1
        label_maps.append([n[len(prefix):] for n in names[start:stop]])
        start = stop
    if start != len(names) or not all(label_maps):
        raise InputError(f"classes.json does not hold the tasks {cfg.label_col} of train_config.json")
    tasks = build_tasks(cfg, label_maps)
    for task in tasks:
        fitted = extra.get("tasks", {}).get(task.name, {})
        task.temperature, task.thresholds = fitted.get("temperature", 1.0), fitted.get("thresholds")
    return tasks


def task_probabilities(logits, tasks: list):
    """Each task's softmax (or sigmoid) of its own logits over its temperature, side by side, like the logits."""
    from calibrate import probabilities
    parts = [probabilities(logits[:, t.start:t.stop], t.multi_label, t.temperature) for t in tasks]
    return torch.cat(parts, dim=1) if isinstance(logits, torch.Tensor) else np.concatenate(parts, axis=1)


def task_labels(labels: list, k: int) -> tuple:
    """(rows labelled for task k, their labels) of multitask label tuples (None: the cell was empty)."""
    rows = [i for i, label in enumerate(labels) if label[k] is not None]
    return rows, [labels[i][k] for i in rows]


def task_targets(labels: list, tasks: list) -> torch.Tensor:
    """(rows, outputs) targets of a batch: one-hot (single-label task) or 0/1 (multi-label) in each task's block,
    and -1 throughout a block whose cell was empty, which the loss masks."""
    target = torch.zeros((len(labels), tasks[-1].stop))
    for row, label in enumerate(labels):
        for task, value in zip(tasks, label):
            if value is None:
                target[row, task.start:task.stop] = -1.0
            else:
                target[row, [task.start + c for c in (value if task.multi_label else [value])]] = 1.0
    return target


class MultiTaskLoss(torch.nn.Module):
    """The weighted sum over tasks of each task's own loss (cross-entropy or BCE, with its class weights) on the rows
    labelled for it; a task with no labelled row in the batch adds nothing."""

    def __init__(self, tasks: list, losses: list):
        super().__init__()
        self.tasks, self.losses = tasks, torch.nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = logits.sum() * 0.0  # a zero that keeps the graph when no task is labelled in the batch
        for task, loss in zip(self.tasks, self.losses):
            block = target[:, task.start:task.stop]
            rows = torch.nonzero(block[:, 0] >= 0).squeeze(1)
            if rows.numel() == 0:
                continue
            z, y = logits[rows, task.start:task.stop], block[rows]
            total = total + task.weight * loss(z, y if task.multi_label else y.argmax(1))
        return total
