"""The training loss: cross-entropy (single-label) or BCE with logits (multi-label), optionally class-weighted.

The model returns logits; the loss lives here and in the loop (engine.train_one_epoch), never in the model.
"""
import torch


def make_loss(cfg, counts: list, n_rows: int, device: torch.device, multi_label: bool = None):
    """Cross-entropy (single-label) or BCE with logits (multi-label), optionally weighted by class frequency;
    `multi_label` (one task of several) overrides cfg.multi_label."""
    multi_label = cfg.multi_label if multi_label is None else multi_label
    weights = None
    if cfg.class_weights == "balanced":
        weights = balanced_class_weights(counts, n_rows, multi_label).to(device)
    if multi_label:
        return torch.nn.BCEWithLogitsLoss(pos_weight=weights)
    return torch.nn.CrossEntropyLoss(weight=weights)


def make_multitask_loss(cfg, tasks: list, labels: list, device: torch.device):
    """tasks.MultiTaskLoss over each task's make_loss, its class weights counted on the rows labelled for it."""
    from dataset import class_counts
    from tasks import MultiTaskLoss, task_labels
    losses = []
    for k, task in enumerate(tasks):
        mine = task_labels(labels, k)[1]
        losses.append(make_loss(cfg, class_counts(mine, len(task.classes), task.multi_label), len(mine), device,
                                task.multi_label))
    return MultiTaskLoss(tasks, losses)


def balanced_class_weights(counts: list, n_rows: int, multi_label: bool) -> torch.Tensor:
    """Single-label: n_rows / (n_classes * count), sklearn's 'balanced'. Multi-label: BCE pos_weight
    negatives / positives. A class without rows gets weight 1 (it contributes nothing either way)."""
    weights = []
    for c in counts:
        if c == 0:
            weights.append(1.0)
        elif multi_label:
            weights.append((n_rows - c) / c)
        else:
            weights.append(n_rows / (len(counts) * c))
    return torch.tensor(weights, dtype=torch.float32)

