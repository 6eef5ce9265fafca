"""Scores of predictions: the validation metrics of each epoch, and the decisions and scores behind every report.

Single-label accuracy and macro-F1 over every class of the label map (a class absent from the data scores 0);
multi-label accuracy is exact match over rows, with the 0.5 threshold during training (thresholds are tuned
once, after it: calibrate.py) and the tuned ones in reports.
"""
import math

import numpy as np
import torch

import calibrate


def compute_metrics(logits: torch.Tensor, labels, loss_fn, multi_label: bool, n_classes: int,
                    thresholds=None) -> dict:
    """loss, accuracy (exact match for multi-label) and macro-F1 over all classes."""
    from sklearn.metrics import accuracy_score, f1_score  # sklearn takes seconds to import: only when scoring
    y = calibrate.target_matrix(labels, n_classes) if multi_label else np.asarray(labels)
    target = torch.as_tensor(y, dtype=torch.float32 if multi_label else torch.long)
    loss = float(loss_fn(logits.float(), target))
    probs = calibrate.probabilities(logits, multi_label).numpy()
    pred = calibrate.decide(probs, multi_label, thresholds)
    kwargs = {} if multi_label else {"labels": list(range(n_classes))}
    return {"loss": loss, "accuracy": float(accuracy_score(y, pred)),
            "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0, **kwargs))}


def is_better(metric: str, value: float, best) -> bool:
    """Whether `value` of `metric` beats the best so far (lower loss, higher accuracy or F1; None or NaN: yes)."""
    if best is None or math.isnan(best):
        return True
    return value < best if metric == "loss" else value > best


def evaluate_predictions(probs: np.ndarray, labels: list, names: list, multi_label: bool, thresholds=None,
                         allow_empty: bool = False) -> dict:
    """Decisions as predict.py makes them, and sklearn's metrics of them: the core of every report."""
    from sklearn.metrics import accuracy_score, classification_report, f1_score
    n = len(names)
    y = calibrate.target_matrix(labels, n) if multi_label else np.asarray(labels)
    pred = calibrate.decide(probs, multi_label, thresholds, allow_empty)
    common = {"labels": list(range(n)), "zero_division": 0}
    return {"y": y, "pred": pred,
            "text": classification_report(y, pred, target_names=names, digits=4, **common),
            "per_class": classification_report(y, pred, target_names=names, output_dict=True, **common),
            "accuracy": float(accuracy_score(y, pred)),
            "macro_f1": float(f1_score(y, pred, average="macro", **common)),
            "ece": calibrate.expected_calibration_error(probs, y, multi_label)[0]}


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int, multi_label: bool) -> np.ndarray:
    """(classes, classes) counts: [i, j] = rows of true class i given class j (multi-label: co-occurrence)."""
    if not multi_label:
        from sklearn.metrics import confusion_matrix
        return confusion_matrix(y, pred, labels=list(range(n_classes)))
    # sparse: numpy's integer matmul has no BLAS, and (classes x rows) @ (rows x classes) took minutes at 5,000
    from scipy import sparse
    return (sparse.csr_matrix(y.T, dtype=np.int64) @ sparse.csr_matrix(pred, dtype=np.int64)).toarray()
