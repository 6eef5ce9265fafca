"""Reports a person can look at: where the classifier fails and whether its probabilities can be trusted.

`write_report(folder, ...)` writes, for one labelled set of predictions:
    metrics.json                 every number (accuracy, macro-F1, per-class scores, ECE, the run's history)
    classification_report.txt    per-class precision, recall, F1 and support, as sklearn's classification_report
    confusion_matrix.png         true class (rows) vs predicted class (columns), counts and row-normalised colour;
                                 multi-label: how often a row with true class i was given class j; beyond
                                 CONFUSION_DRAW_LIMIT classes, the most confused ones
    confusion_matrix.tsv         the whole matrix, tab-separated, with class names
    reliability.png              confidence vs observed frequency per bin, before and after temperature scaling
    learning_curves.png          train and validation loss and the validation metric per epoch (training only)
    validation_probabilities.npy the calibrated probabilities themselves (members of --seeds and --cv only: an
                                 ensemble averages them into its own report)
train.py writes it into save_path/report/ for the best epoch; predict.py --report into out_dir/report_<stem>/.
Plots use matplotlib's Agg backend: no display is needed. No file here is a .csv, so an out_dir of
predictions holds predictions CSVs only. Nothing here grows with the square of the class count but the matrix.
"""
import contextlib
import json
import os
from dataclasses import dataclass

import numpy as np

import calibrate
from metrics import confusion, evaluate_predictions, macro_f1

CONFUSION_NAME_LIMIT = 40  # beyond this many classes the matrix is drawn without per-cell numbers
# Beyond this many classes the figure shows the most confused ones only: a drawing grows with the square of the
# class count (1,000 classes drawn whole needed more memory than a laptop has); the whole matrix goes to a file.
CONFUSION_DRAW_LIMIT = 40
PROBABILITIES_FILE = "validation_probabilities.npy"


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # never open a window, works on a server without a display
    import matplotlib.pyplot as plt
    return plt


def _save_png(fig, path: str) -> None:
    from checkpoint import atomic_path
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)


# --------------------------------------------------------------------------------------------------- plots
def most_confused(matrix: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k classes with the most mistakes (as the true class or as the predicted one), in id order."""
    errors = matrix.sum(axis=0) + matrix.sum(axis=1) - 2 * np.diag(matrix)
    return np.sort(np.argsort(-errors, kind="stable")[:k])


def write_confusion_table(matrix: np.ndarray, names: list, path: str) -> None:
    """The whole matrix, tab-separated (a .tsv, so that an out_dir's .csv files stay predictions only)."""
    from checkpoint import atomic_path
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write("true \\ predicted\t" + "\t".join(names) + "\n")
            for name, row in zip(names, matrix):
                f.write(name + "\t" + "\t".join(map(str, row.tolist())) + "\n")


def plot_confusion(matrix: np.ndarray, names: list, path: str, title: str) -> None:
    plt = _pyplot()
    if len(names) > CONFUSION_DRAW_LIMIT:
        keep = most_confused(matrix, CONFUSION_DRAW_LIMIT)
        title = f"{title} ({len(keep)} most confused of {len(names)} classes; all in confusion_matrix.tsv)"
        matrix, names = matrix[np.ix_(keep, keep)], [names[i] for i in keep]
    n = len(names)
    size = max(4.5, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    # colour by row share, so a rare class's mistakes show as clearly as a frequent one's
    share = matrix / np.maximum(1, matrix.sum(axis=1, keepdims=True))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's rows")
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8 if n > 10 else 10)
    ax.set_yticks(range(n), names, fontsize=8 if n > 10 else 10)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    if n <= CONFUSION_NAME_LIMIT:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=6 if n > 10 else 8,
                        color="white" if share[i, j] > 0.5 else "black")
    _save_png(fig, path)


def plot_reliability(curves: dict, path: str, title: str) -> None:
    """curves: label -> (ece, mean confidence per bin, observed frequency per bin, count per bin)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    for (label, (ece, conf, acc, count)), marker in zip(curves.items(), "os^"):
        keep = count > 0
        ax.plot(conf[keep], acc[keep], marker=marker, label=f"{label} (ECE {ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted probability (bin mean)")
    ax.set_ylabel("observed frequency")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    _save_png(fig, path)


def plot_learning_curves(history: list, metric: str, best_epoch: int, path: str, note: str = "") -> None:
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train loss")
    left.plot(epochs, [h["valid_loss"] for h in history], marker="o", label="validation loss")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    left.legend()
    shown = metric if metric != "loss" else "macro_f1"
    right.plot(epochs, [h[f"valid_{shown}"] for h in history], marker="o", color="tab:green",
               label=f"validation {shown}{note}")
    right.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch ({best_epoch})")
    right.set_xlabel("epoch")
    right.set_ylabel(shown)
    right.legend()
    for ax in (left, right):
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
    fig.suptitle("learning curves")
    _save_png(fig, path)


# -------------------------------------------------------------------------------------------------- report
def write_report(folder: str, probs: np.ndarray, labels: list, names: list, multi_label: bool, thresholds=None,
                 allow_empty: bool = False, raw_probs: np.ndarray = None, extra: dict = None,
                 history: list = None, metric: str = "macro_f1", best_epoch: int = None,
                 title: str = "") -> dict:
    """Write the report files for `probs` (temperature applied) against `labels` into `folder`; return metrics.

    raw_probs (before temperature scaling) adds the 'before' curve to the reliability diagram; `extra` is
    merged into metrics.json; `history` (train.py's per-epoch records) adds the learning curves.
    """
    from checkpoint import write_atomic, write_json
    os.makedirs(folder, exist_ok=True)
    result = evaluate_predictions(probs, labels, names, multi_label, thresholds, allow_empty)
    y = result["y"]
    write_atomic(os.path.join(folder, "classification_report.txt"), result["text"].encode("utf-8"))
    kind = "co-occurrence of true and predicted classes" if multi_label else "confusion matrix"
    matrix = confusion(y, result["pred"], len(names), multi_label)
    write_confusion_table(matrix, names, os.path.join(folder, "confusion_matrix.tsv"))
    plot_confusion(matrix, names, os.path.join(folder, "confusion_matrix.png"), f"{title}: {kind}" if title else kind)
    curves = {}
    if raw_probs is not None:
        curves["before temperature scaling"] = calibrate.expected_calibration_error(raw_probs, y, multi_label)
    curves["after" if raw_probs is not None else "model"] = calibrate.expected_calibration_error(
        probs, y, multi_label)
    what = "every (row, class) probability" if multi_label else "top-class confidence"
    plot_reliability(curves, os.path.join(folder, "reliability.png"),
                     f"{title}: reliability of {what}" if title else f"reliability of {what}")
    metrics = {"rows": len(labels), "multi_label": multi_label, "accuracy": result["accuracy"],
               "macro_f1": result["macro_f1"], "ece": result["ece"], "per_class": result["per_class"]}
    if history:
        # per-epoch multi-label scores use the 0.5 threshold: thresholds are tuned once, after training
        plot_learning_curves(history, metric, best_epoch, os.path.join(folder, "learning_curves.png"),
                             " (thresholds 0.5)" if multi_label else "")
        metrics.update({"best_epoch": best_epoch, "metric": metric, "epochs": history})
    metrics.update(extra or {})
    write_json(os.path.join(folder, "metrics.json"), metrics)
    return {**metrics, "text": result["text"]}


def training_report(save_path: str, logits, labels: list, names: list, multi_label: bool, history: list,
                    metric: str, best_epoch: int, print_fn=print, keep_probabilities: bool = False) -> dict:
    """After training: fit the temperature (and thresholds) on the best epoch's validation logits, store them in
    the model folder's calibration.json, write save_path/report/ and print a summary."""
    with staged_report(save_path) as stage:
        saved, metrics = calibrated_report(stage, logits, labels, names, multi_label, history, metric, best_epoch,
                                           print_fn, keep_probabilities, shown=os.path.join(save_path, "report"))
    commit_calibration(save_path, saved)
    return metrics


@contextlib.contextmanager
def staged_report(save_path: str):
    """A folder to write the report into; once it is whole it replaces save_path/report in renames, so a run
    that fails while writing it (a full disk) leaves the earlier report as it was, never half of a new one."""
    from checkpoint import replace_folder, staging, writing
    with staging(save_path) as stage:
        folder = os.path.join(stage, "report")
        yield folder
        with writing(save_path):
            replace_folder(folder, os.path.join(save_path, "report"))


def multitask_report(save_path: str, logits, labels: list, tasks: list, history: list, metric: str,
                     best_epoch: int, print_fn=print, keep_probabilities: bool = False) -> dict:
    """training_report for several tasks: each task's temperature (and thresholds) fitted on its own logits and
    labelled rows, its report in save_path/report/<task>/; calibration.json holds them all under "tasks"."""
    from tasks import task_labels
    logits = np.asarray(logits, dtype=np.float64)
    fitted, results = {}, {}
    with staged_report(save_path) as stage:
        for k, task in enumerate(tasks):
            rows, mine = task_labels(labels, k)
            if not rows:
                print_fn(f"\ntask {task.name}: no labelled validation row, not calibrated")
                continue
            print_fn(f"\ntask {task.name}:")
            fitted[task.name], results[task.name] = calibrated_report(
                os.path.join(stage, task.name), logits[rows, task.start:task.stop], mine, task.classes,
                task.multi_label, history, metric, best_epoch, print_fn, keep_probabilities,
                shown=os.path.join(save_path, "report", task.name))
    commit_calibration(save_path, {"temperature": 1.0, "tasks": fitted})
    return results


def commit_calibration(save_path: str, saved: dict) -> None:
    """calibration.json into the model folder, through its manifest (which keeps its hashes true)."""
    from checkpoint import commit_files
    staged = os.path.join(save_path, f".calibration.{os.getpid()}.json")  # open(), not mkstemp: usual permissions
    with open(staged, "w", encoding="utf-8") as f:
        f.write(json.dumps(saved, indent=2) + "\n")
    commit_files(save_path, {"calibration.json": staged})


def calibrated_report(folder: str, logits, labels: list, names: list, multi_label: bool, history: list,
                      metric: str, best_epoch: int, print_fn=print, keep_probabilities: bool = False,
                      shown: str = None) -> tuple:
    """(calibration.json's content, metrics): the temperature (and thresholds) fitted on `logits`, and the report
    of the calibrated probabilities written into `folder` and printed; with `keep_probabilities`, those
    probabilities too (PROBABILITIES_FILE)."""
    logits = np.asarray(logits, dtype=np.float64)
    fit = calibrate.calibrate(logits, labels, len(names), multi_label)
    saved = fit["saved"]
    probs = calibrate.probabilities(logits, multi_label, saved["temperature"])
    extra = {"temperature": saved["temperature"], "nll_before": fit["nll_before"], "nll_after": fit["nll_after"],
             "ece_before": fit["ece_before"], "ece_after": fit["ece_after"]}
    if multi_label:
        extra.update(threshold_scores(probs, labels, names, saved["thresholds"]))
    if keep_probabilities:  # with which rows they are, so that an ensemble never averages other rows'
        save_probabilities(folder, probs)
        extra["validation_labels_sha256"] = labels_fingerprint(labels)
    metrics = write_report(folder, probs, labels, names, multi_label, saved.get("thresholds"),
                           raw_probs=calibrate.probabilities(logits, multi_label), extra=extra, history=history,
                           metric=metric, best_epoch=best_epoch, title=f"validation, epoch {best_epoch}")
    print_fn(f"\nvalidation report (best epoch {best_epoch}, temperature {saved['temperature']:.3f}"
             f"{', per-class thresholds tuned for F1' if multi_label else ''}):\n{metrics['text']}")
    print_fn(f"calibration: ECE {fit['ece_before']:.4f} -> {fit['ece_after']:.4f}, NLL {fit['nll_before']:.4f} -> "
             f"{fit['nll_after']:.4f} | " + score_summary(metrics, multi_label) + f"\nreport: {shown or folder}")
    return saved, metrics


def threshold_scores(probs: np.ndarray, labels: list, names: list, thresholds: list) -> dict:
    """Multi-label: the tuned thresholds by class name, the macro-F1 at 0.5, and the cross-fitted macro-F1
    (thresholds tuned on one half of the rows, scored on the other: the score to expect on new rows)."""
    y = calibrate.target_matrix(labels, len(names))
    return {"thresholds": dict(zip(names, thresholds)),
            "macro_f1_at_0.5": evaluate_predictions(probs, labels, names, True)["macro_f1"],
            "macro_f1_cross_fitted": macro_f1(y, calibrate.cross_fitted_predictions(probs, y), len(names))}


def score_summary(metrics: dict, multi_label: bool) -> str:
    """'accuracy ... macro-F1 ... (at 0.5: ..., cross-fitted: ...)' of a report's metrics."""
    return f"accuracy {metrics['accuracy']:.4f} macro-F1 {metrics['macro_f1']:.4f}" + (
        f" (at 0.5: {metrics['macro_f1_at_0.5']:.4f}, cross-fitted: {metrics['macro_f1_cross_fitted']:.4f})"
        if multi_label else "")


def labels_fingerprint(labels: list) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(labels, default=int).encode("utf-8")).hexdigest()


def save_probabilities(folder: str, probs: np.ndarray) -> None:
    import io

    from checkpoint import write_atomic
    os.makedirs(folder, exist_ok=True)
    buffer = io.BytesIO()
    np.save(buffer, probs.astype(np.float32))
    write_atomic(os.path.join(folder, PROBABILITIES_FILE), buffer.getvalue())


# ------------------------------------------------------------------------------------------ an ensemble's report
@dataclass
class EnsemblePart:
    """One report of an ensemble (the model's, or one task's): its validation rows' labels, its classes, the mean
    of the members' calibrated probabilities and, multi-label, the thresholds tuned on that mean."""
    task: str  # "" for a single-task model
    labels: list
    names: list
    multi_label: bool
    probs: np.ndarray
    thresholds: list = None


def ensemble_parts(member_folders: list, labels: list, names: list, multi_label: bool, tasks: list = None) -> tuple:
    """(parts, why not): the ensemble's validation from the probabilities each member kept (members of --seeds
    validate on the same rows), one EnsemblePart per report (per task with several); or (None, the reason) where a
    member kept none (trained before members kept them), or kept them for other rows (the data changed since)."""
    from tasks import task_labels
    wanted = [(task.name, *task_labels(labels, k)[1:], task.classes, task.multi_label)
              for k, task in enumerate(tasks)] if tasks else [("", labels, names, multi_label)]
    parts = []
    for task, mine, classes, several in wanted:
        if not mine:  # a task without labelled validation rows: no member reported on it either
            continue
        kept = []
        for folder in member_folders:
            report = os.path.join(folder, "report", task)
            try:
                with open(os.path.join(report, "metrics.json"), encoding="utf-8") as f:
                    rows = json.load(f)["validation_labels_sha256"]
                probs = np.load(os.path.join(report, PROBABILITIES_FILE))
            except (OSError, ValueError, EOFError, KeyError) as e:
                return None, f"{report}: no validation probabilities kept ({type(e).__name__})"
            if rows != labels_fingerprint(mine) or probs.shape != (len(mine), len(classes)):
                return None, f"{report}: its probabilities are of other validation rows than this run's"
            kept.append(probs)
        probs = np.mean(kept, axis=0)
        thresholds = None
        if several:
            y = calibrate.target_matrix(mine, len(classes))
            thresholds = [round(float(t), 6) for t in calibrate.tune_thresholds(probs, y)]
        parts.append(EnsemblePart(task, mine, classes, several, probs, thresholds))
    return parts, None


def ensemble_calibration(parts: list) -> dict:
    """The ensemble's calibration.json: temperature 1 (each member applies its own) and each part's thresholds."""
    def entry(part):
        return {"temperature": 1.0, **({"thresholds": part.thresholds} if part.thresholds else {})}
    if len(parts) == 1 and not parts[0].task:
        return entry(parts[0])
    return {"temperature": 1.0, "tasks": {part.task: entry(part) for part in parts}}


def ensemble_report(save_path: str, parts: list, members: int, print_fn=print) -> dict:
    """save_path/report/ (per task: report/<task>/) for the ensemble's mean probabilities on the validation rows,
    scored as one model's are; returns each part's metrics by task name ("" for one task)."""
    results = {}
    for part in parts:
        folder = os.path.join(save_path, "report", part.task)
        extra = {"members": members}
        if part.multi_label:
            extra.update(threshold_scores(part.probs, part.labels, part.names, part.thresholds))
        results[part.task] = write_report(folder, part.probs, part.labels, part.names, part.multi_label,
                                          part.thresholds, extra=extra, title=f"validation, ensemble of {members}")
        print_fn(f"ensemble of {members}{f', task {part.task}' if part.task else ''}: "
                 + score_summary(results[part.task], part.multi_label) + f" | report: {folder}")
    return results
