"""--teacher: knowledge distillation (Hinton et al. 2015) from a trained model or ensemble into the one training.

The teacher, a model folder of train.py or an ensemble (`--seeds N --ensemble True`) with the classes of -d,
predicts every training row once, before the first step, with its calibrated probabilities (predict.py's). Each
row's training target becomes (1 - w) x its own labels + w x the teacher's probabilities, w = --teacher_weight.
Cross-entropy and BCE are linear in the target, so this is the blend of the two losses (with single-label class
weights up to the normalisation: docs/recipes.md); validation, the best epoch, calibration and the report still
score the row's own labels. An ensemble's probabilities carry what its members agree on, and the student that
learns them predicts at the cost of one model.
"""
import os

import torch

from config import Config, InputError


def teacher_rules(cfg: Config) -> list:
    """check_options' rules for --teacher and --teacher_weight: (ok, message) pairs."""
    from tasks import is_multitask
    off = not cfg.teacher
    teacher, save = (os.path.realpath(p) for p in (cfg.teacher or ".", cfg.save_path))
    return [(0 <= cfg.teacher_weight <= 1, "--teacher_weight must be in [0, 1]"),
            (not off or cfg.teacher_weight == 0.5, "--teacher_weight is the share of --teacher's probabilities: add "
                                                   "--teacher"),
            (off or (teacher != save and not teacher.startswith(save + os.sep)), f"--teacher {cfg.teacher}: lies in "
             f"--save_path {cfg.save_path}, which this run overwrites; give the student another --save_path"),
            (off or not is_multitask(cfg), "--teacher distils one task; several tasks (--label_col a,b) are not "
                                           "supported with it"),
            (off or cfg.long_text != "windows", "--teacher does not combine with --long_text windows"),
            (off or not cfg.label_groups, "--teacher does not combine with --label_groups"),
            (off or not cfg.boost, "--teacher does not combine with --boost"),
            (off or cfg.loss in ("auto", "ce", "bce"), f"--teacher blends targets for cross-entropy or BCE; it does "
                                                       f"not combine with --loss {cfg.loss}")]


def check_teacher(cfg: Config, names: list, pairs: bool) -> None:
    """The teacher's folder, read and compared with this run before anything heavy starts: its classes (names and
    order), single- or multi-label, single texts or pairs. A model or ensemble folder of train.py."""
    from checkpoint import read_settings
    try:
        teacher_cfg, teacher_names, _ = read_settings(cfg.teacher)
    except InputError as e:
        raise InputError(f"--teacher {cfg.teacher}: not a model or ensemble folder of train.py ({e})")
    if list(teacher_names) != list(names):
        raise InputError(f"--teacher {cfg.teacher}: its classes ({', '.join(teacher_names[:5])}"
                         f"{', ...' if len(teacher_names) > 5 else ''}) are not those of -d {cfg.dict_path} "
                         f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}), in the same order")
    if bool(teacher_cfg.multi_label) != bool(cfg.multi_label):
        raise InputError(f"--teacher {cfg.teacher}: a {'multi' if teacher_cfg.multi_label else 'single'}-label "
                         f"model; this run is {'multi' if cfg.multi_label else 'single'}-label")
    if bool(teacher_cfg.text_col2) != pairs:
        kinds = ("single texts", "pairs of texts")
        raise InputError(f"--teacher {cfg.teacher}: it reads {kinds[bool(teacher_cfg.text_col2)]}; this run's rows "
                         f"are {kinds[pairs]}")


def teacher_targets(cfg: Config, data, run) -> torch.Tensor:
    """(rows, classes) float32: the teacher's calibrated probabilities of every row of `data` (dataset.LabelledData),
    in its order, predicted on this run's device and precision (every rank predicts every row)."""
    from predict import load_classifier
    teacher = load_classifier(cfg.teacher, device=str(run.device), precision=run.precision)
    return torch.from_numpy(teacher.predict(data.texts, data.texts2).probabilities).float()
