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
    y = calibrate.target_matrix(labels, n_classes) if multi_label else np.asarray(labels)
    target = torch.as_tensor(y, dtype=torch.float32 if multi_label else torch.long)
    loss = float(loss_fn(logits.float(), target))
    probs = calibrate.probabilities(logits, multi_label).numpy()
    pred = calibrate.decide(probs, multi_label, thresholds)
    return {"loss": loss, "accuracy": accuracy(y, pred), "macro_f1": macro_f1(y, pred, n_classes)}


# The scores below are scikit-learn's (accuracy_score, f1_score, classification_report with zero_division=0 and
# every class of the label map), written out in numpy because importing sklearn.metrics took 0.4 s of every run
# on the 2-core CPU (bench/README.md); tests/test_accuracy_parts.py checks them against sklearn itself.
def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Share of rows predicted exactly (multi-label: every class of the row right)."""
    y, pred = np.asarray(y), np.asarray(pred)
    right = (y == pred) if y.ndim == 1 else (y == pred).all(axis=1)
    return float(right.mean()) if len(right) else 0.0


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (sklearn's zero_division=0)."""
    denominator = np.asarray(denominator, dtype=np.float64)
    return np.asarray(numerator, dtype=np.float64) / np.where(denominator == 0, 1.0, denominator) \
        * (denominator != 0)


def _prf(tp, predicted, true) -> tuple:
    """Precision, recall and F1 from true positives, predicted and true counts (F1 = 2 tp / (true + predicted))."""
    return _divide(tp, predicted), _divide(tp, true), _divide(2 * np.asarray(tp), np.add(true, predicted))


def decision_counts(y: np.ndarray, pred: np.ndarray, n_classes: int) -> tuple:
    """Per class: (true positives, rows predicted as the class, rows of the class)."""
    y, pred = np.asarray(y), np.asarray(pred)
    if y.ndim == 1:
        return (np.bincount(y[y == pred], minlength=n_classes), np.bincount(pred, minlength=n_classes),
                np.bincount(y, minlength=n_classes))
    y, pred = y.astype(bool), pred.astype(bool)
    return (y & pred).sum(axis=0), pred.sum(axis=0), y.sum(axis=0)


def macro_f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """The unweighted mean of every class's F1 (a class never true nor predicted scores 0)."""
    return float(np.mean(_prf(*decision_counts(y, pred, n_classes))[2]))


def classification_report(y: np.ndarray, pred: np.ndarray, names: list, digits: int = 4) -> tuple:
    """(text, dict) of sklearn's classification_report: per class precision, recall, F1 and support, then the
    accuracy (single-label) or the micro average (multi-label), the macro and weighted averages, and for
    multi-label the mean over rows ("samples avg"). As sklearn's, to the digit, but for one case: when no
    single-label row is right, sklearn prints its supports as floats (2.0); they stay counts here."""
    y, pred = np.asarray(y), np.asarray(pred)
    counts = decision_counts(y, pred, len(names))
    scores, support = _prf(*counts), counts[2]
    rows = [(name, [float(scores[0][i]), float(scores[1][i]), float(scores[2][i]), int(support[i])])
            for i, name in enumerate(names)]
    total = int(support.sum())
    micro = [float(v) for v in _prf(*(c.sum() for c in counts))]
    averages = {"accuracy" if y.ndim == 1 else "micro avg": micro + [total],
                "macro avg": [float(np.mean(v)) for v in scores] + [total],
                "weighted avg": [float(np.average(v, weights=support)) if total else float(np.mean(v))
                                 for v in scores] + [total]}
    if y.ndim == 2:
        y_rows, pred_rows = y.astype(bool), pred.astype(bool)
        per_row = _prf((y_rows & pred_rows).sum(axis=1), pred_rows.sum(axis=1), y_rows.sum(axis=1))
        averages["samples avg"] = [float(np.mean(v)) for v in per_row] + [total]
    width = max(max(len(name) for name in names), len("weighted avg"), digits)
    row_fmt = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    text = "{:>{width}s} ".format("", width=width) + "".join(
        f" {h:>9}" for h in ("precision", "recall", "f1-score", "support")) + "\n\n"
    text += "".join(row_fmt.format(name, *row, width=width, digits=digits) for name, row in rows) + "\n"
    for heading, row in averages.items():
        if heading == "accuracy":
            text += ("{:>{width}s} " + " {:>9.{digits}}" * 2 + " {:>9.{digits}f} {:>9}\n").format(
                heading, "", "", row[2], row[3], width=width, digits=digits)
        else:
            text += row_fmt.format(heading, *row, width=width, digits=digits)
    keys = ("precision", "recall", "f1-score", "support")  # every value a float in the dict, as sklearn's
    table = {name: dict(zip(keys, map(float, row))) for name, row in [*rows, *averages.items()]}
    if "accuracy" in table:
        table["accuracy"] = micro[0]
    return text, table


def is_better(metric: str, value: float, best) -> bool:
    """Whether `value` of `metric` beats the best so far (lower loss, higher accuracy or F1; None or NaN: yes)."""
    if best is None or math.isnan(best):
        return True
    return value < best if metric == "loss" else value > best


def evaluate_predictions(probs: np.ndarray, labels: list, names: list, multi_label: bool, thresholds=None,
                         allow_empty: bool = False) -> dict:
    """Decisions as predict.py makes them, and their scores: the core of every report."""
    n = len(names)
    y = calibrate.target_matrix(labels, n) if multi_label else np.asarray(labels)
    pred = calibrate.decide(probs, multi_label, thresholds, allow_empty)
    text, per_class = classification_report(y, pred, names)
    return {"y": y, "pred": pred, "text": text, "per_class": per_class, "accuracy": accuracy(y, pred),
            "macro_f1": macro_f1(y, pred, n), "ece": calibrate.expected_calibration_error(probs, y, multi_label)[0]}


def confusion(y: np.ndarray, pred: np.ndarray, n_classes: int, multi_label: bool) -> np.ndarray:
    """(classes, classes) counts: [i, j] = rows of true class i given class j (multi-label: co-occurrence)."""
    if not multi_label:
        return np.bincount(np.asarray(y) * n_classes + np.asarray(pred),
                           minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    # sparse: numpy's integer matmul has no BLAS, and (classes x rows) @ (rows x classes) took minutes at 5,000
    from scipy import sparse
    return (sparse.csr_matrix(y.T, dtype=np.int64) @ sparse.csr_matrix(pred, dtype=np.int64)).toarray()
