"""Probabilities a user can trust, fitted on the validation logits after training.

A temperature T divides the logits before softmax (single-label) or sigmoid (multi-label, one T shared by all
classes): it is the T that minimises the validation negative log-likelihood, found by a bounded 1-D search
over log T. T changes confidence but never the ranking, so the predicted class of a single-label model
stays the same. Multi-label models then get one threshold per class, tuned on the temperature-scaled
validation probabilities to maximise that class's F1. The expected calibration error (ECE) is measured
before and after. Everything here works on plain numpy arrays and CPU tensors.
"""
import numpy as np
import torch

ECE_BINS = 15
DEFAULT_THRESHOLD = 0.5  # for a class with no positive validation row, whose F1 cannot be tuned


def target_matrix(labels: list, n_classes: int) -> np.ndarray:
    """Multi-label ids per row -> 0/1 matrix (rows, classes)."""
    y = np.zeros((len(labels), n_classes), dtype=int)
    for row, ids in enumerate(labels):
        y[row, ids] = 1
    return y


def probabilities(logits, multi_label: bool, temperature: float = 1.0):
    """Softmax (single-label) or sigmoid (multi-label) of logits / temperature: a numpy array in float64, or a
    tensor in float32 on its own device (training's metrics and predict.py's batches)."""
    if isinstance(logits, torch.Tensor):
        scaled = logits.float() / temperature
    else:
        scaled = torch.as_tensor(np.asarray(logits), dtype=torch.float64) / temperature
    out = torch.sigmoid(scaled) if multi_label else torch.softmax(scaled, dim=-1)
    return out if isinstance(logits, torch.Tensor) else out.numpy()


def nll(logits: np.ndarray, y: np.ndarray, multi_label: bool, temperature: float = 1.0) -> float:
    """Mean cross-entropy (single-label, y = class ids) or mean BCE over every (row, class) (y = 0/1 matrix)."""
    scaled = torch.as_tensor(np.asarray(logits), dtype=torch.float64) / temperature
    if multi_label:
        return float(torch.nn.functional.binary_cross_entropy_with_logits(
            scaled, torch.as_tensor(y, dtype=torch.float64)))
    return float(torch.nn.functional.cross_entropy(scaled, torch.as_tensor(y, dtype=torch.long)))


def fit_temperature(logits: np.ndarray, y: np.ndarray, multi_label: bool) -> float:
    """The temperature in [0.05, 20] that minimises the validation NLL."""
    from scipy.optimize import minimize_scalar
    if len(logits) == 0:
        return 1.0
    # log T keeps the search symmetric: T = 0.5 is as far from 1 as T = 2
    found = minimize_scalar(lambda log_t: nll(logits, y, multi_label, float(np.exp(log_t))),
                            bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    best = float(np.exp(found.x))
    # the search must make things better than leaving the logits alone, or T stays 1 (a flat NLL: any T ties)
    return best if nll(logits, y, multi_label, best) < nll(logits, y, multi_label, 1.0) else 1.0


def tune_thresholds(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per class, the threshold (predict p >= t) that maximises F1 on (probs, y), both (rows, classes).

    Each class's rows are ranked by probability; cutting after the k most probable gives F1 = 2 TP_k / (k + P).
    The best cut's threshold lies halfway between the last row taken and the next one, the widest margin on
    both sides. A class without positive rows keeps DEFAULT_THRESHOLD.
    """
    n_rows, n_classes = probs.shape
    thresholds = np.full(n_classes, DEFAULT_THRESHOLD)
    for c in range(n_classes):
        positives = int(y[:, c].sum())
        if positives == 0 or n_rows == 0:
            continue
        order = np.argsort(-probs[:, c], kind="stable")
        ranked, hits = probs[order, c], y[order, c]
        f1 = 2 * np.cumsum(hits) / (np.arange(1, n_rows + 1) + positives)
        # a cut between two equal probabilities cannot be expressed by a threshold
        f1[:-1][ranked[:-1] == ranked[1:]] = -1.0
        k = int(np.argmax(f1))
        below = ranked[k + 1] if k + 1 < n_rows else 0.0
        thresholds[c] = (ranked[k] + below) / 2
    return thresholds


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, multi_label: bool, n_bins: int = ECE_BINS):
    """ECE and its bins: single-label uses the top class's confidence vs being right; multi-label pools every
    (row, class) probability vs that class being present. Returns (ece, confidence, accuracy, count) per bin."""
    confidence, correct = reliability_pairs(probs, y, multi_label)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(float)
    conf_sum = np.bincount(which, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(which, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf, mean_acc = conf_sum / count, acc_sum / count
    total = max(1.0, count.sum())
    ece = float(np.nansum(count / total * np.abs(mean_conf - mean_acc)))
    return ece, mean_conf, mean_acc, count


def reliability_pairs(probs: np.ndarray, y: np.ndarray, multi_label: bool):
    """(confidence, 1 if that confidence was borne out else 0), flat arrays."""
    if multi_label:
        return probs.ravel().astype(float), np.asarray(y).ravel().astype(float)
    return probs.max(axis=1).astype(float), (probs.argmax(axis=1) == np.asarray(y)).astype(float)


def decide(probs: np.ndarray, multi_label: bool, thresholds=None, allow_empty: bool = False) -> np.ndarray:
    """Single-label: class ids (n,). Multi-label: 0/1 (n, classes), every class over its threshold; a row with
    none gets its most probable class unless `allow_empty`."""
    if not multi_label:
        return probs.argmax(axis=1)
    chosen = probs >= (np.asarray(thresholds) if thresholds is not None else 0.5)
    if not allow_empty:
        empty = ~chosen.any(axis=1)
        chosen[empty, probs[empty].argmax(axis=1)] = True
    return chosen.astype(int)


def calibrate(logits: np.ndarray, labels: list, n_classes: int, multi_label: bool) -> dict:
    """Fit the temperature (and multi-label thresholds) on validation logits; returns calibration.json's content
    and the numbers that show what it changed."""
    y = target_matrix(labels, n_classes) if multi_label else np.asarray(labels)
    temperature = fit_temperature(logits, y, multi_label)
    before, after = probabilities(logits, multi_label), probabilities(logits, multi_label, temperature)
    saved = {"temperature": temperature}
    if multi_label:
        saved["thresholds"] = [round(float(t), 6) for t in tune_thresholds(after, y)]
    return {"saved": saved,
            "nll_before": nll(logits, y, multi_label), "nll_after": nll(logits, y, multi_label, temperature),
            "ece_before": expected_calibration_error(before, y, multi_label)[0],
            "ece_after": expected_calibration_error(after, y, multi_label)[0]}


def cross_fitted_predictions(probs: np.ndarray, y: np.ndarray, seed: int = 0) -> np.ndarray:
    """Multi-label decisions where each half of the rows uses thresholds tuned on the other half: an honest
    estimate of tuned thresholds on unseen data when the validation set is also the one reported."""
    rng = np.random.default_rng(seed)
    half = rng.permutation(len(probs)) < len(probs) // 2
    pred = np.zeros_like(y)
    for part in (half, ~half):
        pred[part] = decide(probs[part], True, tune_thresholds(probs[~part], y[~part]))
    return pred
