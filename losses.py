"""The training loss: cross-entropy (single-label) or BCE with logits (multi-label), optionally class-weighted,
label-smoothed (`--label_smoothing`), or replaced by focal loss or the asymmetric loss (`--loss focal|asl`).

The model returns logits; the loss lives here and in the loop (engine.train_one_epoch), never in the model.
"""
import torch
import torch.nn.functional as F


def loss_kind(name: str, multi_label: bool) -> str:
    """What --loss `name` means for a single- or multi-label task: ce, bce, focal or asl. auto (and bce or ce, each
    on the other kind of task of a mixed multitask run) is that task's plain loss; asl is multi-label only, so a
    single-label task of a mixed run keeps cross-entropy."""
    if name == "focal" or (name == "asl" and multi_label):
        return name
    return "bce" if multi_label else "ce"


def make_loss(cfg, counts: list, n_rows: int, device: torch.device, multi_label: bool = None):
    """The loss of one task (`multi_label` overrides cfg.multi_label for a task of several), weighted by class
    frequency with --class_weights balanced."""
    multi_label = cfg.multi_label if multi_label is None else multi_label
    weights = None
    if cfg.class_weights == "balanced":
        weights = balanced_class_weights(counts, n_rows, multi_label).to(device)
    kind = loss_kind(cfg.loss, multi_label)
    if kind == "focal":
        return FocalLoss(cfg.focal_gamma, multi_label, weights)
    if kind == "asl":
        return AsymmetricLoss(cfg.asl_gamma_neg, 0.0, cfg.asl_clip, weights)
    if multi_label:
        return torch.nn.BCEWithLogitsLoss(pos_weight=weights)
    if cfg.label_smoothing > 0:
        return torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing)
    return torch.nn.CrossEntropyLoss(weight=weights)


class FocalLoss(torch.nn.Module):
    """Focal loss (Lin et al. 2017): cross-entropy (single-label) or BCE (multi-label, per row and class) scaled by
    (1 - p_t)^gamma, p_t the probability given to the true answer, so that what the model already gets right
    weighs less and rare, hard rows more. gamma 0 is the plain loss. Class weights act as in the plain loss: a
    weighted mean over rows (single-label), a weight on the positive term (multi-label)."""

    def __init__(self, gamma: float, multi_label: bool, weight: torch.Tensor = None):
        super().__init__()
        self.gamma, self.multi_label = gamma, multi_label
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.multi_label:  # target (batch, classes) of 0/1
            bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.weight, reduction="none")
            p = torch.sigmoid(logits)
            p_true = p * target + (1 - p) * (1 - target)
            return ((1 - p_true) ** self.gamma * bce).mean()
        log_p = F.log_softmax(logits, dim=-1).gather(1, target.unsqueeze(1)).squeeze(1)  # (batch,) log p_t
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        if self.weight is None:
            return loss.mean()
        w = self.weight[target]
        return (w * loss).sum() / w.sum()


class AsymmetricLoss(torch.nn.Module):
    """The asymmetric loss for multi-label classification (Ridnik et al. 2021): positives weighted by
    (1 - p)^gamma_pos, negatives by p_m^gamma_neg with p_m = max(p - clip, 0), so that the many easy negatives
    of a rare class stop dominating and negatives under `clip` are ignored outright. Averaged over rows and classes,
    as BCEWithLogitsLoss is, so that the usual learning rates keep their meaning; `weight` scales the positive term
    (--class_weights balanced, BCE's pos_weight)."""

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.05,
                 weight: torch.Tensor = None):
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits)
        positive = F.logsigmoid(logits) * (1 - p) ** self.gamma_pos
        if self.weight is not None:
            positive = positive * self.weight
        if self.clip > 0:
            p_m = (p - self.clip).clamp(min=0)
            log_not = torch.log((1 - p_m).clamp(min=1e-8))
        else:
            p_m, log_not = p, F.logsigmoid(-logits)  # log(1 - sigmoid(z)) without cancellation
        negative = log_not * p_m ** self.gamma_neg
        return -(target * positive + (1 - target) * negative).mean()


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
