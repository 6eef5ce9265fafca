"""--label_groups: learn fine classes, predict their groups.

    python train.py -d classes.json --label_groups groups.json ...   # groups.json: {"group": ["class", ...], ...}

The head learns every class of -d from the fine labels of the training file; in evaluation the model outputs one
logit per group instead, so validation, the best epoch, calibration, thresholds, reports, predict.py, the Python
API and the ONNX export all see the groups. GoEmotions' Ekman and sentiment taxonomies are such groupings of its
28 emotions (bench/accuracy.py --write_fine_map writes the maps); read out as the sentiment groups, a 28-emotion
model scores as the groups' own model does (three seeds each, bench/README.md), and gives both from one model.

Multi-label: a group is present when any of its classes is, p(group) = 1 - prod(1 - p(class)) (the sigmoid head's
classes taken as independent), whose logit is log(expm1(S)) with S = sum of softplus(logit) over the group.
Single-label: p(group) is the sum of its classes' softmax probabilities, whose logit is their logsumexp; the groups
must then split the classes, each in exactly one.
"""
from dataclasses import dataclass

import torch
from torch import nn

from config import InputError
from dataset import check_map_key, read_json_pairs

FOLDER_FILE = "label_groups.json"  # in model folders, ensembles and exports: {"classes": [...], "groups": {...}}


@dataclass
class LabelGroups:
    classes: list  # the fine classes the head learns, in -d's id order
    groups: dict  # group name -> its fine class names, in the map's order

    @property
    def names(self) -> list:
        """The groups, in order: the model's outputs, classes.json of its folder and the predictions' columns."""
        return list(self.groups)

    def membership(self) -> torch.Tensor:
        """(classes, groups) 0/1 matrix: [i, g] = 1 when class i is in group g."""
        index = {name: i for i, name in enumerate(self.classes)}
        matrix = torch.zeros(len(self.classes), len(self.groups))
        for g, members in enumerate(self.groups.values()):
            matrix[[index[name] for name in members], g] = 1.0
        return matrix

    def group_labels(self, labels: list, multi_label: bool) -> list:
        """Fine class ids per row -> group ids per row (multi-label: every group holding one of the row's classes)."""
        of_class = [[g for g, members in enumerate(self.groups.values()) if name in members] for name in self.classes]
        if not multi_label:
            return [of_class[label][0] for label in labels]
        return [sorted({g for label in row for g in of_class[label]}) for row in labels]

    def spec(self) -> dict:
        return {"classes": self.classes, "groups": self.groups}


def load_label_groups(path: str, classes: list, multi_label: bool) -> LabelGroups:
    """The --label_groups map at `path`, checked against the fine classes of -d; every problem is one line."""
    pairs = read_json_pairs(path, f"--label_groups {path}", "groups map", '{"group": ["class of -d", ...], ...}')
    groups = {}
    for name, members in pairs:
        # the groups become the model's classes, their ids the order of the map
        check_map_key(f"--label_groups {path}", name, groups, len(groups), "group", "place (from 0) in the map")
        where = f"--label_groups {path}, group '{name}'"
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            raise InputError(f"{where}: expected a non-empty list of class names of -d")
        unknown = [m for m in members if m not in classes]
        if unknown:
            raise InputError(f"{where}: '{unknown[0]}' is not a class of the label map -d")
        if len(set(members)) != len(members):
            raise InputError(f"{where}: a class is listed twice")
        groups[name] = list(members)
    if len(groups) < 2:
        raise InputError(f"--label_groups {path}: needs at least two groups, found {len(groups)}")
    check_coverage(path, classes, groups, multi_label)
    return LabelGroups(list(classes), groups)


def check_coverage(path: str, classes: list, groups: dict, multi_label: bool) -> None:
    """Every class in a group (a class in none would be learnt and never predicted); single-label: in one only."""
    for name in classes:
        holding = [g for g, members in groups.items() if name in members]
        if not holding:
            raise InputError(f"--label_groups {path}: class '{name}' of the label map -d is in no group")
        if len(holding) > 1 and not multi_label:
            raise InputError(f"--label_groups {path}: class '{name}' is in groups '{holding[0]}' and '{holding[1]}'; "
                             "single-label groups must split the classes (each in one group), or train with "
                             "--multi_label True")


class GroupReadOut(nn.Module):
    """Fine logits (rows, classes) -> group logits (rows, groups), as the module docstring derives them."""

    def __init__(self, label_groups: LabelGroups, multi_label: bool):
        super().__init__()
        self.label_groups, self.multi_label = label_groups, multi_label
        # not persistent: the weights file stays that of the plain classifier, the groups live in FOLDER_FILE
        self.register_buffer("membership", label_groups.membership(), persistent=False)

    @property
    def n_groups(self) -> int:
        return self.membership.shape[1]

    def group_sums(self, values: torch.Tensor) -> torch.Tensor:
        """(rows, classes) -> (rows, groups) sums over each group's classes, in float32 always: elementwise, not a
        matrix product, which autocast would run in bf16 or fp16 (a small sum rounded to 0 makes a logit -inf) and
        onnxruntime's int8 quantisation would quantise with one scale per batch."""
        return (values.unsqueeze(2) * self.membership).sum(dim=1)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        tiny = torch.finfo(torch.float32).tiny
        if self.multi_label:
            # s = -log(1 - p(group)) = the sum of softplus; the group's logit is log(exp(s) - 1). ONNX has no expm1:
            # below 0.01 its Taylor series, above it s + log(1 - exp(-s)), both within a few float32 ulps
            s = self.group_sums(nn.functional.softplus(logits)).clamp_min(tiny)
            small = torch.log(s * (1 + s / 2 + s * s / 6))
            return torch.where(s < 0.01, small, s + torch.log(1 - torch.exp(-s.clamp_min(0.01))))
        top = logits.max(dim=1, keepdim=True).values
        return torch.log(self.group_sums(torch.exp(logits - top)).clamp_min(tiny)) + top
