"""--teacher: knowledge distillation (Hinton et al. 2015) from a trained model or ensemble into the one training.

The teacher, a model folder of train.py or an ensemble (`--seeds N --ensemble True`) with the classes of -d,
predicts every training row once, before the first step, with its calibrated probabilities (predict.py's). Each
row's training target becomes (1 - w) x its own labels + w x the teacher's probabilities, w = --teacher_weight.
Cross-entropy and BCE are linear in the target, so this is the blend of the two losses; validation, the best
epoch, calibration and the report still score the row's own labels. An ensemble's probabilities carry what its
members agree on, and the student that learns them predicts at the cost of one model.
"""
import torch

from config import Config, InputError


def teacher_rules(cfg: Config) -> list:
    """check_options' rules for --teacher and --teacher_weight: (ok, message) pairs."""
    from tasks import is_multitask
    off = not cfg.teacher
    return [(0 <= cfg.teacher_weight <= 1, "--teacher_weight must be in [0, 1]"),
            (off or not is_multitask(cfg), "--teacher distils one task; several tasks (--label_col a,b) are not "
                                           "supported with it"),
            (off or cfg.long_text != "windows", "--teacher does not combine with --long_text windows"),
            (off or not cfg.label_groups, "--teacher does not combine with --label_groups"),
            (off or not cfg.boost, "--teacher does not combine with --boost (the cache holds vectors, not rows)"),
            (off or cfg.loss in ("auto", "ce", "bce"), f"--teacher blends targets for cross-entropy or BCE; it does "
                                                       f"not combine with --loss {cfg.loss}")]


def teacher_targets(cfg: Config, names: list, data, run) -> torch.Tensor:
    """(rows, classes) float32: the teacher's calibrated probabilities of every row of `data` (dataset.LabelledData),
    in its order, predicted on this run's device and precision."""
    from predict import load_classifier
    teacher = load_classifier(cfg.teacher, device=run.device.type, precision=run.precision)
    if list(teacher.classes) != list(names):
        raise InputError(f"--teacher {cfg.teacher}: its classes ({', '.join(teacher.classes[:5])}"
                         f"{', ...' if len(teacher.classes) > 5 else ''}) are not those of -d {cfg.dict_path} "
                         f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}), in the same order")
    if bool(teacher.cfg.multi_label) != bool(cfg.multi_label):
        raise InputError(f"--teacher {cfg.teacher}: a {'multi' if teacher.cfg.multi_label else 'single'}-label model; "
                         f"this run is {'multi' if cfg.multi_label else 'single'}-label")
    if bool(teacher.cfg.text_col2) != (data.texts2 is not None):
        kinds = ("single texts", "pairs of texts")
        raise InputError(f"--teacher {cfg.teacher}: it reads {kinds[bool(teacher.cfg.text_col2)]}; this run's rows "
                         f"are {kinds[data.texts2 is not None]}")
    probs = teacher.predict(data.texts, data.texts2).probabilities
    return torch.from_numpy(probs).float()

