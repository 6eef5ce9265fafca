"""The training loss: cross-entropy (single-label) or BCE with logits (multi-label), optionally class-weighted.

The model returns logits; the loss lives here and in the loop (engine.train_one_epoch), never in the model.
"""
import torch


def make_loss(cfg, counts: list, n_rows: int, device: torch.device):
    """Cross-entropy (single-label) or BCE with logits (multi-label), optionally weighted by class frequency."""
    weights = None
    if cfg.class_weights == "balanced":
        weights = balanced_class_weights(counts, n_rows, cfg.multi_label).to(device)
    if cfg.multi_label:
        return torch.nn.BCEWithLogitsLoss(pos_weight=weights)
    return torch.nn.CrossEntropyLoss(weight=weights)


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

